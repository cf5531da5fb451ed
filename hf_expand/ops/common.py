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


def parse_noise_init(init: str, flag: str, plain: tuple[str, ...]) -> tuple[str, float]:
    """``init`` as (kind, noise): one of ``plain`` (noise 0), or ``zero:noise=S`` with 0 < S <= 1 (the new output
    weights start as normal noise of std S x the tensor's std instead of zero: not function-preserving, recorded)."""
    from ..errors import HfExpandError

    kind, colon, arg = str(init).partition(":")
    if not colon and kind in plain:
        return kind, 0.0
    name, eq, value = arg.partition("=")
    if kind != "zero" or name != "noise" or not eq:
        raise HfExpandError(f"{flag} must be {', '.join(plain)} or zero:noise=S (e.g. zero:noise=0.01), got {init!r}")
    try:
        noise = float(value)
    except ValueError:
        noise = float("nan")
    if not 0 < noise <= 1:
        raise HfExpandError(f"{flag} zero:noise must be a number in (0, 1] (a share of each tensor's std), got {value!r}")
    return kind, noise
