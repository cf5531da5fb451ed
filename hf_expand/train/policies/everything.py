"""``--trainable all``: every parameter trains, at ``--lr`` (no growth record needed)."""

from __future__ import annotations

from .base import Policy
from .registry import register_policy


@register_policy
class Everything(Policy):
    name = "all"
    help = "every value"

    def plan(self, model, record, head_names=()):
        from ..policy import TrainablePlan

        return TrainablePlan(self.name, {n: "full" for n, _ in model.named_parameters()}, {})

    def is_new_capacity(self, name: str) -> bool:
        return False  # one learning rate for everything: --new-lr does not apply
