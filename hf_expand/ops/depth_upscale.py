"""depth_upscale: SOLAR-style depth up-scaling (Kim et al. 2023, "SOLAR 10.7B", arXiv:2312.15166).

The stack is rebuilt from ranges of the base's blocks, laid end to end. SOLAR takes two copies of an
``n``-layer model, drops the last ``m`` layers of the first copy and the first ``m`` of the second, and
joins them: ``ranges [[0, n-m], [m, n]]``, ``2n - 2m`` layers (32 -> 48 with ``trim: 8``).

This is **not function-preserving**: the seam feeds layer ``n-m-1``'s output into a copy of layer ``m``,
which never saw such inputs, so the outputs change and continued pre-training is expected to repair
them. Growth therefore *records* the measured difference instead of enforcing a tolerance (the growth
record and the model card mark the operation as non-preserving), and verification after saving compares
the reloaded model with the grown model in memory, so the file is still proven to be what was built.

Every copy is exact (weights, biases, norms). The second and later occurrences of a base block are
recorded as new (``new_slices``), so ``--trainable new`` trains the duplicated blocks; SOLAR itself
trains everything (``--trainable all``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..architectures import ModelLayout, check_refusals
from ..errors import HfExpandError
from ..plan import Plan
from . import register
from .common import updated_config
from .stacking import MAX_NEW_LAYERS, check_stack_name, plan_stacks, stack_config_updates, stack_steps


@register
@dataclass(frozen=True)
class DepthUpscale:
    """Rebuild the stack from ``ranges`` of base blocks (``((start, stop), ...)``, stop exclusive), or
    from two copies with ``trim`` layers dropped at the seam (SOLAR: ``trim=8`` on 32 layers -> 48)."""

    name: ClassVar[str] = "depth_upscale"
    preserving: ClassVar[bool] = False
    trim: int | None = None
    ranges: tuple[tuple[int, int], ...] | None = None
    stack: str | None = None  # an encoder-decoder's stack to rebuild (default: each, from the same ranges)

    def __post_init__(self):
        if (self.trim is None) == (self.ranges is None):
            raise HfExpandError("depth_upscale needs exactly one of trim (layers dropped at the seam, e.g. 8) "
                                "or ranges (e.g. 0:24,8:32)")
        if self.trim is not None and (isinstance(self.trim, bool) or not isinstance(self.trim, int) or self.trim < 0):
            raise HfExpandError(f"depth_upscale trim must be a whole number >= 0, got {self.trim!r}")
        if self.ranges is not None:
            raw = parse_ranges(self.ranges) if isinstance(self.ranges, str) else self.ranges
            ranges = tuple(_pair(r) for r in raw) if isinstance(raw, (list, tuple)) else ()
            if not ranges or None in ranges:
                raise HfExpandError(f"depth_upscale ranges must be [start, stop] pairs of layer indices like "
                                    f"[[0, 24], [8, 32]] (or 0:24,8:32 on the command line), got {self.ranges!r}")
            for a, b in ranges:
                if not 0 <= a < b:
                    raise HfExpandError(f"depth_upscale range {a}:{b} is empty or negative; ranges are start:stop "
                                        f"with 0 <= start < stop (stop exclusive)")
            object.__setattr__(self, "ranges", ranges)
        check_stack_name(self.stack)

    def resolved_ranges(self, num_layers: int) -> tuple[tuple[int, int], ...]:
        if self.ranges is None:
            if 2 * self.trim >= num_layers:
                raise HfExpandError(f"depth_upscale trim {self.trim} would not grow a {num_layers}-layer model "
                                    f"(2 x {num_layers} - 2 x {self.trim} layers); trim must be below {num_layers / 2:g}")
            return ((0, num_layers - self.trim), (self.trim, num_layers))
        bad = [f"{a}:{b}" for a, b in self.ranges if b > num_layers]
        if bad:
            raise HfExpandError(f"depth_upscale range(s) {', '.join(bad)} out of range: the model has "
                                f"{num_layers} layers (stop can be at most {num_layers})")
        total = sum(b - a for a, b in self.ranges)
        if total <= num_layers:
            raise HfExpandError(f"depth_upscale ranges give {total} layers, not more than the model's {num_layers}; "
                                f"this operation grows depth (ranges that repeat layers, e.g. 0:{num_layers},0:{num_layers})")
        if total - num_layers > MAX_NEW_LAYERS:
            raise HfExpandError(f"depth_upscale ranges add {total - num_layers} layers, more than {MAX_NEW_LAYERS}; is that a typo?")
        return self.ranges

    def layer_order(self, num_layers: int) -> list[tuple[bool, int]]:
        """(is_new, source) per position: a block's first occurrence is the original, later ones are new."""
        seen: set[int] = set()
        order = []
        for a, b in self.resolved_ranges(num_layers):
            for src in range(a, b):
                order.append((src in seen, src))
                seen.add(src)
        return order

    def plan(self, config, layout: ModelLayout) -> Plan:
        check_refusals(config, self.name)
        return plan_stacks(self, config, layout, self._plan_stack)

    def _plan_stack(self, config, layout: ModelLayout) -> Plan:
        L = layout.num_layers
        ranges = self.resolved_ranges(L)
        order = self.layer_order(L)
        steps, new_slices = stack_steps(layout, order, zero_new_branches=False)
        updates = stack_config_updates(config, layout, order, self.name)
        spec = ",".join(f"{a}:{b}" for a, b in ranges)
        dropped = sorted(set(range(L)) - {src for _, src in order})
        notes = ["not function-preserving (SOLAR depth up-scaling): the outputs change at the seam; the difference "
                 "is recorded, not enforced; continue pre-training (SOLAR trains all weights: --trainable all)"]
        if dropped:
            notes.append(f"base layers {dropped} are not used")
        return Plan(
            op=self.name,
            params={"ranges": [list(r) for r in ranges], **({"trim": self.trim} if self.trim is not None else {})},
            summary=f"{L} -> {len(order)} layers from base layers {spec} (not function-preserving)",
            config_updates=updates,
            new_config=updated_config(config, updates),
            steps=list(steps.values()),
            new_slices=new_slices,
            notes=notes,
            preserving=False,
            layer_order=tuple(order),
        )


def parse_ranges(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple(tuple(int(x) for x in part.split(":", 1)) for part in text.split(","))
    except ValueError:
        raise HfExpandError(f"depth_upscale ranges must look like 0:24,8:32 (start:stop, stop exclusive); got {text!r}") from None


def _pair(r):
    """``(start, stop)`` from a two-item list of whole numbers, else None."""
    if isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in r):
        return (r[0], r[1])
    return None
