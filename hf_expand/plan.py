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

    init: ``normal`` (random at the std of the existing chunk), ``zero`` (plus, with ``noise`` > 0, normal noise
    of std ``noise`` x the existing chunk's std: not function-preserving), ``split_in`` (copy the rows
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
    noise: float = 0.0

    def describe(self) -> str:
        chunk = f" in each of {self.parts} packed chunks" if self.parts > 1 else ""
        return f"append {self.new} on axis {self.axis}{chunk} ({self.init}{f', noise {self.noise:g}' if self.noise else ''})"


@dataclass(frozen=True)
class Fill:
    """Set the whole tensor to a constant (zeroed output projections, identity norms); with ``noise`` > 0, plus
    normal noise of std ``noise`` x the source tensor's std (then the source is read; not function-preserving)."""

    value: float
    noise: float = 0.0

    def describe(self) -> str:
        return f"fill {self.value:g}" + (f" + noise {self.noise:g}" if self.noise else "")


@dataclass(frozen=True)
class SpaceMap:
    """How a space (hidden units, query heads, kv heads…) grows: new entry ``j`` copies old entry
    ``index[j]``, or is a new entry where ``index[j] == -1``. Old entries may move (heads regrouped
    under fixed kv heads) or appear several times (replicas when the hidden size is multiplied)."""

    name: str
    old: int
    index: tuple[int, ...]

    @property
    def new(self) -> int:
        return len(self.index)

    @classmethod
    def tile(cls, name: str, old: int, k: int) -> "SpaceMap":
        """``k`` replicas of the whole space, one after another."""
        return cls(name, old, tuple(range(old)) * k)

    @classmethod
    def append(cls, name: str, old: int, n: int) -> "SpaceMap":
        """The old entries in place, then ``n`` new ones."""
        return cls(name, old, tuple(range(old)) + (-1,) * n)


@dataclass(frozen=True)
class Remap:
    """Rebuild ``axis`` from ``segments``: consecutive (space, unit) pairs, each spanning
    ``space.old * unit`` entries before and ``space.new * unit`` after (a fused qkv axis has three).

    ``reads``: the axis is the input side of a linear map (it reads the space's activations). Copies of a
    replicated activation then share its weight (each is divided by its number of copies, plus noise
    that cancels across the copies, of relative size ``noise``) and new entries start at zero, so the
    output is unchanged. Otherwise (rows, biases, norms, embeddings) copies copy and new entries are
    drawn at the scale of the tensor (``new_init`` normal), set to zero, or set one below the smallest old entry
    (``below_min``: a selection bias that keeps new experts out of every top-k).
    """

    axis: int
    segments: tuple[tuple[SpaceMap, int], ...]
    reads: bool
    noise: float = 0.0
    new_init: str = "normal"

    def element_index(self) -> list[int]:
        """Source position on the old axis (or -1) of every entry of the new axis."""
        return element_index(self.segments)

    def describe(self) -> str:
        spaces = " + ".join(f"{s.name}[{s.old}->{s.new}]" + (f"x{u}" if u > 1 else "") for s, u in self.segments)
        how = "read side: copies split" if self.reads else "copy"
        return f"remap axis {self.axis} by {spaces} ({how}{f', noise {self.noise:g}' if self.noise else ''})"


def element_index(segments) -> list[int]:
    """Element-level index of consecutive (space, unit) segments laid end to end along one axis."""
    out, offset = [], 0
    for space, unit in segments:
        for i in space.index:
            out.extend([-1] * unit if i < 0 else range(offset + i * unit, offset + (i + 1) * unit))
        offset += space.old * unit
    return out


@dataclass(frozen=True)
class Scale:
    """Multiply the tensor by ``mul`` and add ``add`` (embedding scale, folded norms)."""

    mul: float
    add: float = 0.0

    def describe(self) -> str:
        return f"scale x{self.mul:g}" + (f" {self.add:+g}" if self.add else "")


@dataclass(frozen=True)
class SetRows:
    """Resize ``axis`` to ``size`` (old entries keep their index) and set entry ``i`` to the mean of the
    old entries ``sources`` for each ``(i, sources)`` in ``rows`` (no sources: the mean of all old entries),
    plus ``offset``."""

    axis: int
    size: int
    rows: tuple[tuple[int, tuple[int, ...]], ...]
    offset: float = 0.0

    def describe(self) -> str:
        return f"set {len(self.rows)} entries on axis {self.axis} to means of existing ones" + (
            f" {self.offset:+g}" if self.offset else "")


@dataclass(frozen=True)
class Fresh:
    """New values not read from any source: normal(0, ``std``), seeded by the tensor's name (a new router)."""

    std: float

    def describe(self) -> str:
        return f"new, normal(0, {self.std:g})"


EXPERT_INITS = ("copy", "drop", "noise")


@dataclass(frozen=True)
class Experts:
    """Stack ``count`` copies of the tensor along a new leading experts axis (a dense MLP becomes ``count``
    experts). ``init``: ``copy`` (identical experts: with top-k weights that sum to one the layer computes the
    dense MLP exactly); ``drop`` (Drop-Upcycling: in each expert, re-draw a share ``rate`` of the FFN units on
    ``unit_axis`` (of the tensor before stacking; in each of ``parts`` packed chunks) at the tensor's std, a
    different seeded subset per expert but the same one for every tensor of that expert's FFN, named by
    ``scope``); ``noise`` (add normal noise of std ``rate`` x the tensor's std to every expert)."""

    count: int
    unit_axis: int = 0
    parts: int = 1
    init: str = "copy"
    rate: float = 0.0
    scope: str = ""

    def describe(self) -> str:
        how = "identical copies" if self.init == "copy" else f"{self.init} {self.rate:g}"
        return f"{self.count} experts on a new axis 0 ({how})"


Action = Union[Grow, Fill, Remap, Scale, SetRows, Fresh, Experts]


@dataclass(frozen=True)
class TensorStep:
    target: str
    source: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...]
    actions: tuple[Action, ...] = ()
    # read too, and concatenated after ``source`` on axis 0 before the actions (a packed gate_up from gate and
    # up); ``shape_before`` is the concatenation's shape
    extra_sources: tuple[str, ...] = ()

    @property
    def is_noop(self) -> bool:
        return not self.actions and self.source == self.target

    @property
    def reads_source(self) -> bool:
        """False when the first action makes the values from nothing (``Fill``, ``Fresh``): nothing is read."""
        first = self.actions[0] if self.actions else None
        return not (isinstance(first, Fresh) or (isinstance(first, Fill) and not first.noise))


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
    notes: list[str] = field(default_factory=list)  # what a user should know (ties kept or broken, duplicates)
    # (start, stop) of new entries on the last axis of the model's main output (new labels, new tokens)
    new_outputs: tuple[int, int] | None = None
    extra_files: dict[str, Any] = field(default_factory=dict)  # e.g. {"tokenizer": grown tokenizer}
    # False for operations that change the outputs by design (depth_upscale): the difference is recorded
    preserving: bool = True
    # Depth operations: the grown block stack as (is_new, source block) per position (None: blocks unchanged)
    layer_order: tuple[tuple[bool, int], ...] | None = None

    def render(self, verbose: bool = True) -> str:
        lines = [f"{self.op}: {self.summary}"]
        for key, value in self.config_updates.items():
            lines.append(f"  config.{key} = {value!r}")
        changed = [s for s in self.steps if not s.is_noop]
        if verbose:
            for s in changed:
                src = "" if s.source == s.target or not s.reads_source else \
                    f" <- {' + '.join((s.source, *s.extra_sources))}"
                acts = "; ".join(a.describe() for a in s.actions) or "copy"
                shape = f"{list(s.shape_before)} -> {list(s.shape_after)}"
                lines.append(f"  {s.target}{src}  {shape}  {acts}")
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append(f"  ({len(changed)} tensors changed, {len(self.steps) - len(changed)} unchanged)")
        return "\n".join(lines)


WHOLE = {"axis": None}


def mask_ranges(mask: list[bool]) -> list[tuple[int, int]]:
    """The (start, stop) runs of True in ``mask``."""
    out, start = [], None
    for j, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = j
        elif not m and start is not None:
            out.append((start, j))
            start = None
    return out


def _follow_remap(slices: list[dict], remap: "Remap") -> list[dict]:
    """Where the entries of ``slices`` sit after ``remap`` (every copy of them included)."""
    index = remap.element_index()
    out = []
    for s in slices:
        if s["axis"] is None or s["axis"] != remap.axis:
            out.append(s)
            continue
        old = set(range(s["start"], s["stop"]))
        out.extend({"axis": s["axis"], "start": a, "stop": b} for a, b in mask_ranges([i in old for i in index]))
    return out


def compose_slices(previous: dict[str, list[dict]], plan: Plan, which: str) -> dict[str, list[dict]]:
    """Carry the slice record of earlier operations through ``plan`` (renames) and add its own."""
    own = getattr(plan, which)
    out: dict[str, list[dict]] = {}
    for step in plan.steps:
        carried = [dict(s) for s in previous.get(step.source, [])]
        for action in step.actions:
            if isinstance(action, Remap):  # entries move: follow them (a fixed-kv head regroup, replicas)
                carried = _follow_remap(carried, action)
        slices = carried + [dict(s) for s in own.get(step.target, [])]
        if any(s["axis"] is None for s in slices):
            slices = [dict(WHOLE)]
        if slices:
            out[step.target] = slices
    return out
