"""Growth operations, one module each, registered here by the ``@register`` decorator in that module.

An operation is a frozen dataclass holding its (validated) parameters, with ``plan(config, layout)``
returning a :class:`~hf_expand.plan.Plan`. ``ORDER`` says in which order several operations of one
call are applied: widths first (hidden size, heads, FFN), then depth up-scaling (its ranges name
the base's layers), then new layers (which copy already-grown neighbours), then the output side (labels, tokens).
"""

from __future__ import annotations

from typing import Protocol

from ..architectures import ModelLayout
from ..plan import Plan


class Operation(Protocol):
    name: str

    def plan(self, config, layout: ModelLayout) -> Plan: ...


REGISTRY: dict[str, type] = {}
ORDER: list[str] = []


def register(cls):
    """Class decorator: make an operation known under ``cls.name`` (its place in ORDER is import order)."""
    REGISTRY[cls.name] = cls
    ORDER.append(cls.name)
    return cls


def sort_operations(ops) -> list:
    return sorted(ops, key=lambda op: ORDER.index(op.name))


# Import order is application order.
from . import widen_hidden as _widen_hidden  # noqa: E402,F401
from . import add_heads as _add_heads  # noqa: E402,F401
from . import widen_ffn as _widen_ffn  # noqa: E402,F401
from . import depth_upscale as _depth_upscale  # noqa: E402,F401
from . import add_layers as _add_layers  # noqa: E402,F401
from . import add_labels as _add_labels  # noqa: E402,F401
from . import add_tokens as _add_tokens  # noqa: E402,F401
