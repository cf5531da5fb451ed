"""Compose the operations' plans into one chain per output tensor, executed tensor by tensor.

Each plan's step reads one tensor of the model before it, so an output tensor is a chain of steps back to
one stored tensor of the base. :class:`Chain` runs that chain on demand: memory is a few copies of one
tensor, and the result is the same, bit for bit, as running each plan on the whole state dict in turn
(randomness is seeded by tensor name, never by order). Maths runs in fp32.
"""

from __future__ import annotations

from typing import Callable

import torch

from .execute import read_sources, run_step
from .plan import Plan, TensorStep


class Chain:
    """The model after ``plans[:level]`` as a function of tensor name (level 0 = the base's ``get``)."""

    def __init__(self, get: Callable[..., torch.Tensor], plans: list[Plan], seed: int):
        """``get(name)``: a base tensor in fp32 (``CheckpointReader.get_float``)."""
        self.base_get = get
        self.plans = plans
        self.seed = seed
        self.levels = [{s.target: s for s in p.steps} for p in plans]

    def has_step(self, name: str) -> bool:
        """Whether the last plan lists ``name`` (every parameter; persistent buffers are not listed)."""
        return not self.plans or name in self.levels[-1]

    def step(self, name: str, level: int) -> TensorStep:
        return self.levels[level - 1][name]

    def get(self, name: str, level: int | None = None) -> torch.Tensor:
        """``name`` after ``plans[:level]`` (all plans by default), in fp32."""
        level = len(self.plans) if level is None else level
        if level == 0:
            return self.base_get(name).float()
        step = self.levels[level - 1].get(name)
        if step is None:  # a persistent buffer no plan lists (plans list every parameter): the level below's
            return self.get(name, level - 1)
        return run_step(step, read_sources(step, lambda n: self.get(n, level - 1)), self.seed)

    def base_name(self, name: str, level: int | None = None) -> str | None:
        """The base tensor ``name`` is an unchanged copy of (no action anywhere along its chain), else None.
        Such a tensor passes through without an fp32 copy."""
        level = len(self.plans) if level is None else level
        for k in range(level, 0, -1):
            step = self.step(name, k)
            if step.actions:
                return None
            name = step.source
        return name

    def getter(self, level: int | None = None) -> Callable[..., torch.Tensor]:
        """``get(name, out=None)`` of the model after ``plans[:level]`` (what ``StreamedModel`` takes)."""
        def get(name: str, out: torch.Tensor | None = None) -> torch.Tensor:
            value = self.get(name, level)
            return value if out is None else out.copy_(value)
        return get


def layer_counterparts(plans: list[Plan], num_layers: int) -> list[int | None]:
    """For every block of the model after ``plans``, the block of the model before them whose output it must
    reproduce (an identity block reproduces the block before it), or None (a new block at the bottom)."""
    current: list[int | None] = list(range(num_layers))
    for plan in plans:
        if plan.layer_order is None:
            continue
        new: list[int | None] = []
        for is_new, src in plan.layer_order:
            if is_new and plan.preserving:
                new.append(new[-1] if new else None)  # identity: the output of the block below it
            else:
                new.append(current[src])
        current = new
    return current
