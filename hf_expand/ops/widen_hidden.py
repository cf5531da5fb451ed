"""widen_hidden: a wider residual stream with outputs unchanged (HyperCloning-style replication).

The grown model carries ``k`` copies of the old hidden state: ``x' = [x, x, …, x]``. Every space that
scales with the hidden size is replicated the same way, and attention gets ``k`` times the heads
(query and kv), each a copy of an old head, with ``head_dim`` kept (so the softmax scale is unchanged;
copies are appended after the old heads, which keeps the GQA grouping ``q head h -> kv head h // group``).

* Rows (outputs) of every map into a replicated space are copied; so are embeddings, biases and norm
  weights. LayerNorm and RMSNorm of a replicated vector equal the replicated norm: mean and variance
  (or mean square) of ``[x, x]`` are those of ``x``.
* Columns (inputs) that read a replicated space are divided by ``k``: ``sum_j (W/k) x = W x``. Noise that
  sums to zero over the ``k`` copies of each column is added (on by default) so the copies can diverge
  in training while the function stays exact.
* Maps out of unreplicated spaces (FFN units, vocabulary) keep their size; the FFN width is written
  into the config explicitly so a default like GPT-2's ``n_inner = 4 * n_embd`` does not follow the
  hidden size.
* A tied output embedding reads the replicated final hidden state, so as a head it would need its
  columns divided by ``k`` while as an embedding it must not be. The factor is folded into the norm
  just before the head instead (the family data names it): the tie is kept. Without such a norm the
  head is untied and says so in the report.
* Gemma multiplies embeddings by ``sqrt(hidden_size)``: embeddings are divided by ``sqrt(k)`` to cancel the
  larger factor (and the head-norm fold becomes ``1 / sqrt(k)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..architectures import ModelLayout, check_refusals, describe, ffn_size
from ..errors import HfExpandError
from ..execute import SPLIT_NOISE
from ..plan import WHOLE, Plan, Scale, SpaceMap
from . import register
from .common import updated_config
from .spaces import attention_dims, remap_steps, validated

MAX_FACTOR = 64


@register
@dataclass(frozen=True)
class WidenHidden:
    """Multiply the hidden size by the integer ``factor`` (>= 2); ``noise`` breaks the replicas' symmetry."""

    name: ClassVar[str] = "widen_hidden"
    factor: int
    noise: bool = True

    def __post_init__(self):
        f = self.factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f):
            raise HfExpandError(f"--widen-hidden needs a whole number factor like 2, got {f!r}")
        if f <= 1:
            raise HfExpandError(f"--widen-hidden factor must be 2 or more, got {f:g}")
        if not float(f).is_integer():
            raise HfExpandError(
                f"--widen-hidden factor must be a whole number (2, 3, …): exact growth replicates the hidden state; got {f:g}"
            )
        if f > MAX_FACTOR:
            raise HfExpandError(f"--widen-hidden factor {f:g} is above {MAX_FACTOR}; is that a typo?")
        object.__setattr__(self, "factor", int(f))

    def plan(self, config, layout: ModelLayout) -> Plan:
        check_refusals(config, self.name)
        k, family = self.factor, layout.family
        hidden = int(config.hidden_size)
        n, kv, hd = attention_dims(config)
        updates = {"hidden_size": hidden * k, "num_attention_heads": n * k}
        if getattr(config, "num_key_value_heads", None) is not None:
            updates["num_key_value_heads"] = kv * k
        if getattr(config, "head_dim", None) is not None:
            updates["head_dim"] = hd
        for group in family.ffn:
            if getattr(config, group.field, None) is None:
                updates[group.field] = ffn_size(config, group)  # pin defaults derived from the hidden size
        for f in family.hidden_sized_fields:
            if getattr(config, f, None) == hidden:
                updates[f] = hidden * k

        q_heads = SpaceMap.tile("q_heads", n, k)
        spaces = {
            "hidden": (SpaceMap.tile("hidden", hidden, k), 1),
            "q": (q_heads, hd),
            "kv": (SpaceMap.tile("kv_heads", kv, k), hd),
            "heads": (q_heads, 1),  # one entry per query head (gpt-oss's attention sinks)
        }
        notes = []
        embed_mul = k ** -0.5 if family.embed_scale == "sqrt_hidden" else 1.0
        new_config = validated(updated_config(config, updates), f"--widen-hidden {k}")
        new_layout = describe(new_config, layout.model_cls)  # untying below changes no shape

        head = layout.output_embedding
        # Only a head that reads the replicated hidden state needs the fold (OPT with a narrower
        # word_embed_proj_dim projects first: its head keeps its size and the tie simply stays).
        tied = (head is not None and head in layout.tied
                and new_layout.params[head].shape != layout.params[head].shape)
        head_norm = next((h for h in family.head_norms if f"{h}.weight" in layout.params), None) if tied else None
        if tied and head_norm is None:
            updates["tie_word_embeddings"] = False
            new_config.tie_word_embeddings = False
            notes.append(f"{head} untied from {layout.input_embedding}: no norm before the head to fold 1/{k} into")
        steps, new_slices, modified = remap_steps(layout, new_layout, spaces, SPLIT_NOISE if self.noise else 0.0)

        def scale(name: str, mul: float, add: float = 0.0):
            s = steps[name]
            steps[name] = type(s)(s.target, s.source, s.shape_before, s.shape_after, s.actions + (Scale(mul, add),))
            modified[name] = [dict(WHOLE)]

        if embed_mul != 1.0 and layout.input_embedding:
            scale(layout.input_embedding, embed_mul)
        if head_norm is not None:
            # logits = sum over k copies of (s * h) . (c E) = k * s * c * (h . E): s = 1 / (k c) keeps them.
            s = 1.0 / (k * embed_mul)
            emb = steps[layout.input_embedding]
            steps[head] = type(emb)(head, head, emb.shape_before, emb.shape_after, emb.actions)
            new_slices[head] = [dict(x) for x in new_slices.get(layout.input_embedding, [])]
            modified.pop(head, None)
            if layout.input_embedding in modified:
                modified[head] = [dict(WHOLE)]
            offset = family.norm_offset  # Gemma: (offset + w') = s (offset + w)
            scale(f"{head_norm}.weight", s, offset * (s - 1))
            if f"{head_norm}.bias" in layout.params:
                scale(f"{head_norm}.bias", s)
            notes.append(f"tied output embedding kept tied: {head_norm} scaled by {s:g} (hidden states after it "
                         f"are scaled by {s:g}; logits unchanged)")
        summary = f"hidden {hidden} -> {hidden * k}, heads {n} -> {n * k} (kv {kv} -> {kv * k}, head_dim {hd})" + (
            ", symmetry-breaking noise" if self.noise else "")
        return Plan(
            op=self.name,
            params={"factor": k, "noise": self.noise},
            summary=summary,
            config_updates=updates,
            new_config=new_config,
            steps=list(steps.values()),
            new_slices=new_slices,
            modified=modified,
            notes=notes,
        )
