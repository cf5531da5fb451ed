"""Helpers shared by operations: config copies, parameter counts, slice records."""

from __future__ import annotations

import copy
import math
from typing import Any

from ..architectures import ModelLayout


def updated_config(config, updates: dict[str, Any]):
    new = copy.deepcopy(config)
    for key, value in updates.items():
        setattr(new, key, value)
    return new


def param_count(layout: ModelLayout) -> int:
    """Parameters of the model, counting tied tensors once."""
    tied_targets = set(layout.tied)
    return sum(math.prod(p.shape) for name, p in layout.params.items() if name not in tied_targets)


def check_multiple(op, field: str, flag: str, example: str) -> None:
    """``op.<field>``: None, or a whole number from 1 to 65536 (stored as an int on the frozen dataclass);
    anything else raises one line naming ``flag``."""
    from ..errors import HfExpandError

    m = getattr(op, field)
    if m is None:
        return
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not float(m).is_integer() or not 1 <= m <= 2**16:
        raise HfExpandError(f"{flag} must be a whole number from 1 to 65536, got {m!r}; e.g. {example}")
    object.__setattr__(op, field, int(m))
