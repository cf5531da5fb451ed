"""Exceptions that reach the user as one-line messages (the CLI exits 2 on these)."""


class HfExpandError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""


class UnsupportedArchitecture(HfExpandError):
    """hf_expand has no (or incomplete) knowledge of where this family keeps its tensors."""


class PreservationError(HfExpandError):
    """The grown model's outputs differ from the base model's by more than the tolerance."""


class NonFiniteOutputs(PreservationError):
    """A model computes NaN or inf on the probe inputs: never "preserved", whatever the tolerance or
    ``accept_difference``. ``where`` names the side: ``"base"``, ``"grown"`` or ``"both"``."""

    def __init__(self, message: str, where: str):
        super().__init__(message)
        self.where = where

    def __reduce__(self):  # picklable (multiprocessing, accelerate) despite the extra argument
        return type(self), (str(self), self.where)
