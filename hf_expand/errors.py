"""Exceptions that reach the user as one-line messages (the CLI exits 2 on these)."""


class HfExpandError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""


class UnsupportedArchitecture(HfExpandError):
    """hf_expand has no (or incomplete) knowledge of where this family keeps its tensors."""


class PreservationError(HfExpandError):
    """The grown model's outputs differ from the base model's by more than the tolerance."""
