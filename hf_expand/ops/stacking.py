"""Shared by the depth operations: rebuild the block stack from an ``order`` of source blocks.

``order`` lists the grown stack as ``(is_new, source block index)`` per position. Every block copies its
source; blocks outside the stack are unchanged; config lists that count or index layers follow.

An encoder-decoder's stacks are grown one after the other (:func:`plan_stacks`), each from its own view
(``describe(config, stack=...)``), and the per-stack plans are joined into one: each changes only its own
stack's tensors.
"""

from __future__ import annotations

from .. import architectures
from ..architectures import ModelLayout
from ..errors import HfExpandError, UnsupportedArchitecture
from ..plan import WHOLE, Fill, Plan, TensorStep

MAX_NEW_LAYERS = 10_000  # more is surely a typo


def stack_steps(layout: ModelLayout, order: list[tuple[bool, int]], zero_new_branches: bool, noise: float = 0.0):
    """(steps by target, new_slices) for the stack described by ``order``.

    ``noise``: with ``zero_new_branches``, the zeroed projections get normal noise of std ``noise`` x their
    source's std instead (``add_layers --init zero:noise=S``: not function-preserving).

    ``zero_new_branches``: new blocks get zeroed residual-branch outputs (identity blocks, LLaMA Pro);
    otherwise they are plain copies (SOLAR depth up-scaling). A stack deeper than ``architectures.MAX_LAYERS``
    is refused before any step is listed (grow would otherwise build it for real)."""
    if len(order) > architectures.MAX_LAYERS:
        raise HfExpandError(f"the grown model would have {len(order)} layers, above hf-expand's limit of "
                            f"{architectures.MAX_LAYERS:,} layers; add fewer")
    steps: dict[str, TensorStep] = {}
    new_slices: dict[str, list[dict]] = {}
    per_layer = {i: layout.layer_params(i) for i in range(layout.num_layers)}
    first_only = _first_block_only(layout)
    for p in layout.params.values():
        if p.layer is None:
            steps[p.name] = TensorStep(p.name, p.name, p.shape, p.shape)
    for p in per_layer.get(0, []):
        if in_modules(p.rel, first_only):
            # only block 0 has it (T5's position bias table, computed there and passed up the stack): the base
            # block 0's, whichever block now comes first
            steps[p.name] = TensorStep(p.name, p.name, p.shape, p.shape)
    for j, (is_new, src) in enumerate(order):
        for p in per_layer[src]:
            target = f"{layout.layers_prefix}.{j}.{p.rel}"
            if in_modules(p.rel, first_only):
                continue
            actions = ()
            if is_new and zero_new_branches and in_modules(p.rel, layout.residual_out):
                actions = (Fill(0.0, noise),)  # the branch writes nothing (or, with noise, a little) into the stream
            steps[target] = TensorStep(target, p.name, p.shape, p.shape, actions)
            if is_new:
                new_slices[target] = [dict(WHOLE)]
    return steps, new_slices


def stack_config_updates(config, layout: ModelLayout, order: list[tuple[bool, int]], op: str) -> dict:
    """Config fields that follow the blocks: the layer count, per-layer lists, layer index lists and
    "first k layers" thresholds."""
    L = layout.num_layers
    updates = {layout.count_field: len(order)}
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


def check_stack_name(stack) -> None:
    if stack is not None and (not isinstance(stack, str) or not stack):
        raise HfExpandError(f"stack must name an encoder-decoder's block stack (encoder or decoder), got {stack!r}")


def _first_block_only(layout: ModelLayout) -> tuple[str, ...]:
    own = next((st for st in layout.family.stacks if st.name == layout.stack), None)
    return own.first_block_only if own else ()


def plan_stacks(op, config, layout: ModelLayout, plan_one) -> Plan:
    """``plan_one(config, view)`` for the one block stack of ``layout``, or for each stack of an encoder-decoder
    (only ``op.stack`` when it names one), joined into one plan."""
    names = architectures.stack_names(config)
    wanted = getattr(op, "stack", None)
    if not names:
        if wanted:
            raise HfExpandError(f"{op.name}: stack={wanted!r} names a stack of an encoder-decoder; "
                                f"{config.model_type} has one block stack (leave the stack out)")
        return plan_one(config, layout)
    if wanted and wanted not in names:
        raise HfExpandError(f"{op.name}: {config.model_type} has no block stack {wanted!r}; its stacks are "
                            f"{', '.join(names)}")
    plans = []
    for name in [wanted] if wanted else names:
        try:
            plans.append((name, plan_one(config, architectures.describe(config, layout.model_cls, stack=name))))
        except HfExpandError as exc:  # the same settings apply to each stack: say which one they do not fit
            raise type(exc)(f"{name} stack: {exc}") from None
        config = plans[-1][1].new_config
    return join_stack_plans(plans, main=names[-1])


def join_stack_plans(plans: list[tuple[str, Plan]], main: str) -> Plan:
    """One plan from per-stack plans applied in turn. Each changes only its own stack's tensors (and passes the
    rest through by name), so every tensor's step is the one plan's step that changes it."""
    tables = [{s.target: s for s in p.steps} for _, p in plans]
    steps = []
    for step in plans[-1][1].steps:
        changed = [own for table in tables if (own := table.get(step.target)) is not None and not own.is_noop]
        if len(changed) > 1:
            raise AssertionError(f"{step.target} is changed by more than one stack's plan")
        steps.append(changed[0] if changed else step)
    first, last = plans[0][1], plans[-1][1]
    main_plan = dict(plans).get(main)
    return Plan(
        op=first.op,
        params={**{k: v for k, v in first.params.items() if k != "positions"},
                "stacks": {name: p.params.get("positions", p.params) for name, p in plans}},
        summary="; ".join(f"{name}: {p.summary}" for name, p in plans),
        config_updates={k: v for _, p in plans for k, v in p.config_updates.items()},
        new_config=last.new_config,
        steps=steps,
        new_slices={k: v for _, p in plans for k, v in p.new_slices.items()},
        modified={k: v for _, p in plans for k, v in p.modified.items()},
        notes=list(dict.fromkeys(n for _, p in plans for n in p.notes)),
        preserving=all(p.preserving for _, p in plans),
        layer_order=main_plan.layer_order if main_plan is not None else None,
    )
