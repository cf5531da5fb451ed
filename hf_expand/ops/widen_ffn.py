"""widen_ffn: more FFN units in every layer (and every expert), outputs unchanged.

An FFN computes ``out(act(in(x)))``. New units are appended after the old ones (old units keep their
indices) in every "in" projection (rows; both chunks of a packed gate_up) and every "out" projection
(columns). Two initialisations keep the function exact:

* ``zero`` (default): new "in" rows are random at the scale of the existing rows, new "out" columns
  are zero. The new units compute something, but nothing of it reaches the output yet; the zero
  columns get gradient (activation x upstream gradient) on the first backward pass, and once they
  have moved, the new rows get gradient too.
* ``zero:noise=S``: as ``zero``, but the new output columns are normal noise of std S x the existing columns'
  std: the new units write a little from the start (symmetry breaking traded for exactness; the drift is
  measured and recorded, as ``depth_upscale``'s is).
* ``split`` (Net2Net): each new unit copies an existing unit's rows; the outgoing columns of a unit
  and its copies are divided among them (plus a small noise that cancels between them), so their
  sum is the original column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..architectures import check_refusals, ModelLayout, ffn_size
from ..errors import HfExpandError, UnsupportedArchitecture
from ..plan import Grow, Plan, TensorStep
from . import register
from .common import check_multiple, parse_noise_init, updated_config

INITS = ("zero", "split")
MAX_FACTOR = 1024


@register
@dataclass(frozen=True)
class WidenFFN:
    """Widen every FFN by ``factor`` (> 1) or to ``size`` units, initialised by ``init`` (zero|split);
    ``multiple_of``: round every new width up to a multiple of it (tensor parallelism and quantised kernels want
    64 or 128)."""

    name: ClassVar[str] = "widen_ffn"
    factor: float | None = None
    size: int | None = None
    init: str = "zero"
    multiple_of: int | None = None

    def __post_init__(self):
        if (self.factor is None) == (self.size is None):
            raise HfExpandError("widen_ffn needs exactly one of a factor (--widen-ffn F) or a size (--ffn-size N)")
        if self.factor is not None and not (isinstance(self.factor, (int, float)) and self.factor > 1):
            raise HfExpandError(f"--widen-ffn factor must be greater than 1, got {self.factor}; e.g. --widen-ffn 1.5")
        if self.factor is not None and not self.factor <= MAX_FACTOR:
            raise HfExpandError(f"--widen-ffn factor {self.factor} is above {MAX_FACTOR}; is that a typo?")
        if self.size is not None:
            if isinstance(self.size, bool) or not float(self.size).is_integer() or self.size <= 0:
                raise HfExpandError(f"--ffn-size must be a positive whole number, got {self.size}")
            if self.size >= 2**31:
                raise HfExpandError(f"--ffn-size {self.size:g} is beyond any trainable width (2**31); is that a typo?")
            object.__setattr__(self, "size", int(self.size))
        parse_noise_init(self.init, "--init", INITS)
        check_multiple(self, "multiple_of", "--multiple-of", "64 or 128")

    def targets(self, config, layout: ModelLayout) -> dict[str, tuple[int, int]]:
        """config field -> (old width, new width) for every FFN space of the family."""
        used = {p.ffn_field for p in layout.params.values() if p.ffn_field}
        groups = [g for g in layout.family.ffn if g.field in used]  # a config field no layer uses stays as it is
        if not groups:
            raise UnsupportedArchitecture(f"widen_ffn is not supported for {config.model_type}: it has no FFN")
        primary_old = ffn_size(config, groups[0])
        if self.size is not None:
            if self.size <= primary_old:
                raise HfExpandError(
                    f"--ffn-size {self.size} must be larger than the current {groups[0].field}={primary_old}"
                )
            ratio = self.size / primary_old
        else:
            ratio = float(self.factor)
        out = {}
        for g in groups:
            old = ffn_size(config, g)
            new = old * ratio
            if self.multiple_of:  # up to the next multiple (a multiple already: kept)
                m = self.multiple_of
                out[g.field] = (old, m * math.ceil(round(new, 9) / m))
                continue
            if not math.isclose(new, round(new), abs_tol=1e-9):
                raise HfExpandError(
                    f"widening {g.field}={old} by {ratio:g} gives {new:g} units, not a whole number; "
                    f"use --ffn-size with a whole number (e.g. {math.ceil(new) if g is groups[0] else 'one that scales every FFN space evenly'})"
                )
            out[g.field] = (old, int(round(new)))
        return out

    def plan(self, config, layout: ModelLayout) -> Plan:
        check_refusals(config, self.name)
        targets = self.targets(config, layout)
        kind, noise = parse_noise_init(self.init, "--init", INITS)
        steps, new_slices, modified = [], {}, {}
        for p in layout.params.values():
            if p.ffn_field is None or p.ffn_axis is None:
                steps.append(TensorStep(p.name, p.name, p.shape, p.shape))
                continue
            old, new = targets[p.ffn_field]
            axis = p.ffn_axis % len(p.shape)
            if p.shape[axis] != p.parts * old:
                raise UnsupportedArchitecture(
                    f"{p.name}: expected {p.parts} x {old} = {p.parts * old} on axis {axis} for {p.ffn_field}, "
                    f"found shape {list(p.shape)}"
                )
            if kind == "zero":
                init = "zero" if p.role == "out" or p.is_bias else "normal"
            else:
                init = "split_out" if p.role == "out" else "split_in"
            scope = f"{p.block}.{p.ffn_field}"
            grow = Grow(axis=axis, parts=p.parts, old=old, new=new - old, init=init, scope=scope,
                        noise=noise if init == "zero" and p.role == "out" and not p.is_bias else 0.0)
            shape_after = tuple(p.parts * new if i == axis else d for i, d in enumerate(p.shape))
            steps.append(TensorStep(p.name, p.name, p.shape, shape_after, (grow,)))
            new_slices[p.name] = [
                {"axis": axis, "start": k * new + old, "stop": (k + 1) * new} for k in range(p.parts)
            ]
            if init == "split_out":
                modified[p.name] = [{"axis": axis, "start": 0, "stop": old}]
        updates = {field: new for field, (_, new) in targets.items()}
        summary = ", ".join(f"{f} {o} -> {n}" for f, (o, n) in targets.items()) + f" (init={self.init})"
        return Plan(
            op=self.name,
            params={"factor": self.factor, "size": self.size, "init": self.init,
                    **({"multiple_of": self.multiple_of} if self.multiple_of else {})},
            summary=summary,
            config_updates=updates,
            new_config=updated_config(config, updates),
            steps=steps,
            new_slices=new_slices,
            modified=modified,
            preserving=not noise,
            notes=[f"init {self.init}: the new units' output columns start as noise, not zero: the outputs change "
                   f"a little, on purpose (recorded)"] if noise else [],
        )
