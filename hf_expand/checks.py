"""Value rules shared by command-line flags and recipe keys, so both refuse the same values in the same words.

Each rule returns ``None`` when the value is fine, else the problem as a phrase (``"must be >= 1, got 0"``) that
the caller prefixes with what it checked: ``--seed must be ...`` on the command line, ``recipe: grow.seed: must
be ...`` in a recipe (:func:`flag_error` / :func:`key_error`).
"""

from __future__ import annotations

import math

from .errors import HfExpandError

SEED_LIMIT = 2**63


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def seed(value) -> str | None:
    if not _is_whole(value) or not 0 <= value < SEED_LIMIT:
        return f"must be between 0 and 2**63 - 1, got {value}"
    return None


def tolerance(value) -> str | None:
    if not _is_number(value) or not (math.isfinite(value) and value >= 0):
        return f"must be a finite number >= 0, got {value}"
    return None


def whole(minimum: int, maximum: int | None = None):
    """A whole number in [minimum, maximum]."""
    def check(value) -> str | None:
        if not _is_whole(value) or value < minimum or (maximum is not None and value > maximum):
            if maximum is None:
                return f"must be >= {minimum}, got {value}"
            return f"must be between {minimum} and {maximum:,}, got {value}"
        return None

    return check


def repo_id(value) -> str | None:
    """A Hub repo to push to: ``namespace/name`` (the rule ``hub.push_folder`` applies)."""
    from .lineage import is_repo_id

    if not is_repo_id(value):
        return f"{value!r} is not a repo id; use namespace/name"
    return None


def probe_texts(values) -> str | None:
    if any(not isinstance(v, str) or not v.strip() for v in values or ()):
        return "must not be empty or blank (it would be a probe without tokens); give some text or drop the flag"
    return None


def flag_error(flag: str, problem: str) -> HfExpandError:
    return HfExpandError(f"{flag} {problem}")


def key_error(key: str, problem: str) -> HfExpandError:
    return HfExpandError(f"recipe: {key}: {problem}")
