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
