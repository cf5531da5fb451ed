"""add_layers: insert new blocks that start as exact identities (LLaMA Pro block expansion).

A new block copies its neighbour (the nearest existing block before it, or the first block when it
is placed at the bottom), then is made an identity:

* pre-norm blocks compute ``x + f(norm(x))`` for each residual branch; zeroing the projections that
  write into the residual stream (attention output, FFN down/out, MoE experts' down) makes every
  branch output 0, so the block returns ``x`` exactly.
* post-norm blocks (BERT family) compute ``LN2(h + ffn(h))`` with ``h = LN1(x + attn(x))``. Zeroed
  branches leave ``LN2(LN1(x))``, which is not ``x`` because of the LayerNorm affines. So the affine
  of the norm that precedes the new block (the previous block's final LayerNorm, or the embeddings'
  LayerNorm at the bottom) moves into the new block's final LayerNorm, and every other norm in
  between gets the identity affine (weight 1, bias 0): the preceding block then emits a normalised
  vector ``z``, and re-normalising ``z`` gives ``z`` back up to eps, so the new block ends with exactly
  the affine the next block used to receive.

Config lists that count layers (``layer_types``, sliding-window lists) follow the blocks; index lists
named in the family data (``mlp_only_layers``) are renumbered; ``layer_idx`` of attention modules
(used by the KV cache) is right by construction, since the grown model is built from the new config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from ..architectures import ModelLayout, check_refusals
from ..errors import HfExpandError, UnsupportedArchitecture
from ..plan import WHOLE, Fill, Plan, TensorStep
from . import register
from .common import parse_noise_init, updated_config
from .stacking import MAX_NEW_LAYERS, check_stack_name, plan_stacks, stack_config_updates, stack_steps

PLACEMENTS = ("interleave", "top", "bottom")


@register
@dataclass(frozen=True)
class AddLayers:
    """Add ``count`` identity blocks at ``placement``: interleave (default), top, bottom, or explicit
    positions (indices in the grown model, e.g. ``(2, 5)``). An encoder-decoder gets them in each stack, or
    only in ``stack`` (``"encoder"`` / ``"decoder"``); two operations give the stacks their own placements."""

    name: ClassVar[str] = "add_layers"
    count: int | None = None
    placement: Union[str, tuple[int, ...]] = "interleave"
    stack: str | None = None
    init: str = "zero"  # or zero:noise=S: the new blocks' output projections start as noise (recorded drift)

    def __post_init__(self):
        placement = self.placement
        if isinstance(placement, str) and placement not in PLACEMENTS:
            placement = parse_positions(placement)
        if isinstance(placement, (list, tuple)):
            placement = tuple(placement)
            if not placement:
                raise HfExpandError("--placement positions are empty; give indices like 2,5")
            if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in placement):
                raise HfExpandError(f"--placement positions must be non-negative whole numbers, got {list(placement)}")
            if len(set(placement)) != len(placement):
                raise HfExpandError(f"--placement positions must be distinct, got {list(placement)}")
            if self.count is not None and self.count != len(placement):
                raise HfExpandError(
                    f"--add-layers {self.count} does not match the {len(placement)} positions in --placement"
                )
            object.__setattr__(self, "count", len(placement))
        object.__setattr__(self, "placement", placement)
        if self.count is None or isinstance(self.count, bool) or not isinstance(self.count, int):
            raise HfExpandError(f"--add-layers needs a whole number of layers, got {self.count!r}")
        if self.count < 1:
            raise HfExpandError(f"--add-layers must be at least 1, got {self.count}")
        if self.count > MAX_NEW_LAYERS:
            raise HfExpandError(f"--add-layers {self.count} is more than {MAX_NEW_LAYERS} new layers; is that a typo?")
        check_stack_name(self.stack)
        parse_noise_init(self.init, "--init", ("zero",))

    def layer_order(self, num_layers: int) -> list[tuple[bool, int]]:
        """The grown stack as (is_new, source layer index) for each position."""
        n, total = self.count, num_layers + self.count
        if self.placement == "top":
            return [(False, i) for i in range(num_layers)] + [(True, num_layers - 1)] * n
        if self.placement == "bottom":
            return [(True, 0)] * n + [(False, i) for i in range(num_layers)]
        if self.placement == "interleave":
            # LLaMA Pro: split the stack into n even groups and add one block after each group.
            after = [((k + 1) * num_layers) // n - 1 for k in range(n)]
            order = [(True, 0)] * after.count(-1)
            for i in range(num_layers):
                order.append((False, i))
                order += [(True, i)] * after.count(i)
            return order
        bad = [p for p in self.placement if p >= total]
        if bad:
            raise HfExpandError(
                f"--placement position(s) {bad} out of range: the grown model has {total} layers (0..{total - 1})"
            )
        order, old = [], iter(range(num_layers))
        last = None
        for j in range(total):
            if j in self.placement:
                order.append((True, 0 if last is None else last))
            else:
                last = next(old)
                order.append((False, last))
        return order

    def plan(self, config, layout: ModelLayout) -> Plan:
        check_refusals(config, self.name)
        return plan_stacks(self, config, layout, self._plan_stack)

    def _plan_stack(self, config, layout: ModelLayout) -> Plan:
        L = layout.num_layers
        order = self.layer_order(L)
        post = layout.family.post_norm
        noise = parse_noise_init(self.init, "--init", ("zero",))[1]
        steps, new_slices = stack_steps(layout, order, zero_new_branches=True, noise=noise)
        modified: dict = {}

        if post is not None:
            self._plan_post_norm(layout, order, steps, modified)

        updates = stack_config_updates(config, layout, order, self.name)
        positions = [j for j, (is_new, _) in enumerate(order) if is_new]
        summary = f"{L} -> {L + self.count} layers, new at {positions} (placement={self.placement_str})"
        return Plan(
            op=self.name,
            params={"count": self.count, "placement": self.placement_str, "positions": positions,
                    **({"init": self.init} if noise else {})},
            summary=summary,
            config_updates=updates,
            new_config=updated_config(config, updates),
            steps=list(steps.values()),
            new_slices=new_slices,
            modified=modified,
            layer_order=tuple(order),
            preserving=not noise,
            notes=[f"init {self.init}: the new blocks' output projections start as noise, not zero: the outputs "
                   f"change a little, on purpose (recorded)"] if noise else [],
        )

    @property
    def placement_str(self) -> str:
        return self.placement if isinstance(self.placement, str) else ",".join(map(str, self.placement))

    def _plan_post_norm(self, layout, order, steps, modified) -> None:
        """Move the preceding LayerNorm's affine to the end of each run of new blocks (see module doc)."""
        post = layout.family.post_norm
        prefix = layout.layers_prefix
        embed = {s: _find_suffix(layout, f"{post.embed_norm}.{s}") for s in ("weight", "bias")}

        def identity(target: str, source: str, is_bias: bool):
            shape = layout.params[source].shape
            steps[target] = TensorStep(target, source, shape, shape, (Fill(0.0 if is_bias else 1.0),))

        j = 0
        while j < len(order):
            if not order[j][0]:
                j += 1
                continue
            start = j
            while j < len(order) and order[j][0]:
                j += 1
            end = j - 1  # positions start..end are a run of new blocks
            for s in ("weight", "bias"):
                if start == 0:
                    carrier = embed[s]
                else:
                    carrier = f"{prefix}.{order[start - 1][1]}.{post.final_norm}.{s}"
                carrier_target = carrier if start == 0 else f"{prefix}.{start - 1}.{post.final_norm}.{s}"
                identity(carrier_target, carrier, s == "bias")
                modified[carrier_target] = [dict(WHOLE)]
                for k in range(start, end + 1):
                    src = order[k][1]
                    for norm in post.branch_norms:
                        identity(f"{prefix}.{k}.{norm}.{s}", f"{prefix}.{src}.{norm}.{s}", s == "bias")
                    final = f"{prefix}.{k}.{post.final_norm}.{s}"
                    if k == end:
                        shape = layout.params[carrier].shape
                        steps[final] = TensorStep(final, carrier, shape, shape)
                    else:
                        identity(final, f"{prefix}.{src}.{post.final_norm}.{s}", s == "bias")


def parse_positions(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise HfExpandError(
            f"--placement must be interleave, top, bottom or comma-separated layer indices like 2,5; got {text!r}"
        ) from None


def _find_suffix(layout: ModelLayout, suffix: str) -> str:
    hits = [n for n in layout.params if n == suffix or n.endswith("." + suffix)]
    if len(hits) != 1:
        raise UnsupportedArchitecture(f"expected one parameter named *{suffix} for post-norm growth, found {hits}")
    return hits[0]
