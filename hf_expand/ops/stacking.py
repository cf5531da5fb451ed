"""Shared by the depth operations: rebuild the block stack from an ``order`` of source blocks.

``order`` lists the grown stack as ``(is_new, source block index)`` per position. Every block copies its
source; blocks outside the stack are unchanged; config lists that count or index layers follow.
"""

from __future__ import annotations

from .. import architectures
from ..architectures import ModelLayout
from ..errors import HfExpandError, UnsupportedArchitecture
from ..plan import WHOLE, Fill, TensorStep

MAX_NEW_LAYERS = 10_000  # more is surely a typo


def stack_steps(layout: ModelLayout, order: list[tuple[bool, int]], zero_new_branches: bool):
    """(steps by target, new_slices) for the stack described by ``order``.

    ``zero_new_branches``: new blocks get zeroed residual-branch outputs (identity blocks, LLaMA Pro);
    otherwise they are plain copies (SOLAR depth up-scaling). A stack deeper than ``architectures.MAX_LAYERS``
    is refused before any step is listed (grow would otherwise build it for real)."""
    if len(order) > architectures.MAX_LAYERS:
        raise HfExpandError(f"the grown model would have {len(order)} layers, above hf-expand's limit of "
                            f"{architectures.MAX_LAYERS:,} layers; add fewer")
    steps: dict[str, TensorStep] = {}
    new_slices: dict[str, list[dict]] = {}
    per_layer = {i: layout.layer_params(i) for i in range(layout.num_layers)}
    for p in layout.params.values():
        if p.layer is None:
            steps[p.name] = TensorStep(p.name, p.name, p.shape, p.shape)
    for j, (is_new, src) in enumerate(order):
        for p in per_layer[src]:
            target = f"{layout.layers_prefix}.{j}.{p.rel}"
            actions = ()
            if is_new and zero_new_branches and in_modules(p.rel, layout.residual_out):
                actions = (Fill(0.0),)  # the branch writes nothing into the residual stream
            steps[target] = TensorStep(target, p.name, p.shape, p.shape, actions)
            if is_new:
                new_slices[target] = [dict(WHOLE)]
    return steps, new_slices


def stack_config_updates(config, layout: ModelLayout, order: list[tuple[bool, int]], op: str) -> dict:
    """Config fields that follow the blocks: the layer count, per-layer lists, layer index lists and
    "first k layers" thresholds."""
    L = layout.num_layers
    updates = {"num_hidden_layers": len(order)}
    for key, value in vars(config).items():
        if isinstance(value, list) and len(value) == L and ("layer" in key or "window" in key):
            updates[key] = [value[src] for _, src in order]
    for key in layout.family.layer_index_fields:
        old = set(getattr(config, key, None) or [])
        updates[key] = [j for j, (_, src) in enumerate(order) if src in old]
    for key in layout.family.layer_threshold_fields:
        # "layers below index t" stays the same set of blocks: count the positions copied from them,
        # which must still be the first positions of the stack.
        old = getattr(config, key, None)
        if isinstance(old, int):
            below = [j for j, (_, src) in enumerate(order) if src < old]
            # transformers derives per-layer behaviour from the field only when the config has no
            # `layer_types` list (which follows the blocks above); otherwise the count is informational
            if below != list(range(len(below))) and not isinstance(getattr(config, "layer_types", None), list):
                raise UnsupportedArchitecture(
                    f"{op} is not supported for this model: config.{key}={old} treats the first {old} layers "
                    f"differently, and this layer order puts copies of them at positions {below}; choose ranges "
                    f"that keep those layers first"
                )
            updates[key] = len(below)
    return updates


def in_modules(rel: str, modules) -> bool:
    return any(rel == m or rel.startswith(m + ".") for m in modules)
