"""``--trainable new``: only what growth added trains; every pre-existing value stays bit-identical.

Entirely-old tensors are frozen; partly-new ones are split into a frozen old and a trained new parameter
(:mod:`..split`), so gradients, AdamW's moments and weight decay exist for the new entries only. All of
:class:`.base.Policy`'s defaults are this policy's behaviour."""

from __future__ import annotations

from .base import Policy
from .registry import register_policy


@register_policy
class NewCapacity(Policy):
    name = "new"
    help = "only the grown slices (old values stay bit-identical)"
