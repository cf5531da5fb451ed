"""Growth plans: what an operation will do, tensor by tensor, decided from the config alone.

A :class:`Plan` lists one :class:`TensorStep` per parameter of the grown model: where its values come
from (``source``, a parameter name of the model before the operation) and which actions turn them
into the new tensor. Plans never hold weights, so they can be printed (``--dry-run``), asserted on in
tests, and executed either on a loaded state dict or, later, shard by shard from safetensors files:
each step reads only its own source tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True)
class Grow:
    """Append ``new`` entries along ``axis`` to each of ``parts`` equal chunks of that axis.

    init: ``normal`` (random at the std of the existing chunk), ``zero``, ``split_in`` (copy the rows
    of the units named by the split mapping), ``split_out`` (divide the columns of duplicated units
    among their copies). ``scope`` names the unit space (one FFN of one layer) so that the split
    mapping is the same for every tensor of that FFN.
    """

    axis: int
    parts: int
    old: int
    new: int
    init: str
    scope: str = ""

    def describe(self) -> str:
        chunk = f" in each of {self.parts} packed chunks" if self.parts > 1 else ""
        return f"append {self.new} on axis {self.axis}{chunk} ({self.init})"


@dataclass(frozen=True)
class Fill:
    """Set the whole tensor to a constant (zeroed output projections, identity norms)."""

    value: float

    def describe(self) -> str:
        return f"fill {self.value:g}"


Action = Union[Grow, Fill]


@dataclass(frozen=True)
class TensorStep:
    target: str
    source: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...]
    actions: tuple[Action, ...] = ()

    @property
    def is_noop(self) -> bool:
        return not self.actions and self.source == self.target


@dataclass
class Plan:
    """One operation's plan: config changes, tensor steps, and the slices it creates or modifies."""

    op: str
    params: dict[str, Any]
    summary: str
    config_updates: dict[str, Any]
    new_config: Any
    steps: list[TensorStep]
    # target name -> list of slices; a slice is {"axis": a, "start": s, "stop": e} or {"axis": None} (whole)
    new_slices: dict[str, list[dict]] = field(default_factory=dict)
    modified: dict[str, list[dict]] = field(default_factory=dict)

    def render(self, verbose: bool = True) -> str:
        lines = [f"{self.op}: {self.summary}"]
        for key, value in self.config_updates.items():
            lines.append(f"  config.{key} = {value!r}")
        changed = [s for s in self.steps if not s.is_noop]
        if verbose:
            for s in changed:
                src = "" if s.source == s.target else f" <- {s.source}"
                acts = "; ".join(a.describe() for a in s.actions) or "copy"
                shape = f"{list(s.shape_before)} -> {list(s.shape_after)}"
                lines.append(f"  {s.target}{src}  {shape}  {acts}")
        lines.append(f"  ({len(changed)} tensors changed, {len(self.steps) - len(changed)} unchanged)")
        return "\n".join(lines)


WHOLE = {"axis": None}


def compose_slices(previous: dict[str, list[dict]], plan: Plan, which: str) -> dict[str, list[dict]]:
    """Carry the slice record of earlier operations through ``plan`` (renames) and add its own."""
    own = getattr(plan, which)
    out: dict[str, list[dict]] = {}
    for step in plan.steps:
        slices = [dict(s) for s in previous.get(step.source, [])] + [dict(s) for s in own.get(step.target, [])]
        if any(s["axis"] is None for s in slices):
            slices = [dict(WHOLE)]
        if slices:
            out[step.target] = slices
    return out
