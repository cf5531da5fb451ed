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
    """Class decorator: make an operation known under ``cls.name`` (its place in ORDER is import order), and
    give it ``to_dict()`` / ``from_dict(params)`` (the form recipes use, as peft configs round-trip)."""
    REGISTRY[cls.name] = cls
    ORDER.append(cls.name)
    cls.to_dict = to_dict
    cls.from_dict = classmethod(lambda c, params, where=None: from_dict({c.name: params}, where))
    return cls


# fields that are not parameters: set by growth itself (the tokenizer an AddTokens is resolved with)
_INTERNAL_FIELDS = frozenset({"tokenizer"})


def to_dict(op) -> dict:
    """``{name: {parameter: value}}``: the parameters that differ from their defaults (lists for tuples), the
    form of a recipe's ``grow.operations`` entry; :func:`from_dict` turns it back into an equal operation."""
    import dataclasses

    params = {}
    for f in dataclasses.fields(op):
        if f.name in _INTERNAL_FIELDS:
            continue
        value = getattr(op, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        params[f.name] = _lists(value)
    return {op.name: params}


def _lists(value):
    return [_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (tuple, list)) else value


def from_dict(entry: dict, where: str | None = None):
    """An operation from ``{name: {parameters}}`` or ``{op: name, **parameters}``. A bad entry raises
    :class:`HfExpandError` in one line that starts with ``where`` (a recipe passes ``recipe: grow.operations[i]``)."""
    import dataclasses

    from ..errors import HfExpandError

    where = where or "operation"
    if isinstance(entry, dict) and "op" in entry:
        name, params = entry["op"], {k: v for k, v in entry.items() if k != "op"}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, params = next(iter(entry.items()))
        params = params or {}
        if not isinstance(params, dict):
            raise HfExpandError(f"{where}.{name}: expected a mapping of parameters (e.g. {{{name}: {{...}}}}), "
                                f"found {type(params).__name__} {params!r}")
    else:
        raise HfExpandError(f"{where}: expected {{operation: {{parameters}}}}, found {entry!r}")
    if name not in REGISTRY:
        raise HfExpandError(f"{where}: unknown operation {name!r}; valid: {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)} - _INTERNAL_FIELDS
    unknown = sorted(set(params) - fields)
    if unknown:
        raise HfExpandError(f"{where}.{unknown[0]}: unknown parameter of {name}; expected one of "
                            f"{', '.join(sorted(fields))}")
    params = {k: _tuples(v) for k, v in params.items()}
    try:
        return cls(**params)
    except (TypeError, HfExpandError) as exc:
        raise HfExpandError(f"{where}: {exc}") from None


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
from . import add_experts as _add_experts  # noqa: E402,F401
from . import upcycle as _upcycle  # noqa: E402,F401  (last: the model's class changes)
