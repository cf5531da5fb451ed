"""add_heads: more attention heads of the same size, outputs unchanged.

Query heads grow by ``count``. With ``kv="proportional"`` (default) kv heads grow so the group size
(query heads per kv head) stays: new query heads are appended after the old ones and use new kv
heads, also appended, so every old head keeps its index and its kv head (``h // group``). With
``kv="fixed"`` the kv heads stay and each group gets more query heads: old query heads move to keep
their kv head (``g * new_group + r``), new ones fill the end of each group.

New heads' rows of q/k/v (and biases) are random at the scale of the existing rows; their columns of
the output projection are zero, so the attention output, hence the model, is unchanged, while those
columns get gradient at once (the new heads do compute something). ``head_dim`` is written explicitly
into the config (families whose head size is implied by hidden / heads are refused by their data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..architectures import ModelLayout, check_refusals, describe
from ..errors import HfExpandError
from ..plan import Plan, SpaceMap
from . import register
from .common import updated_config
from .spaces import attention_dims, remap_steps, validated

KV_MODES = ("proportional", "fixed")
MAX_HEADS = 4096


@register
@dataclass(frozen=True)
class AddHeads:
    """Add ``count`` query heads; kv heads grow in proportion (``kv="proportional"``) or stay (``"fixed"``)."""

    name: ClassVar[str] = "add_heads"
    count: int
    kv: str = "proportional"

    def __post_init__(self):
        c = self.count
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not float(c).is_integer() or c < 1:
            raise HfExpandError(f"--add-heads needs a whole number of heads >= 1, got {c!r}")
        if c > MAX_HEADS:
            raise HfExpandError(f"--add-heads {c:g} is more than {MAX_HEADS} heads; is that a typo?")
        object.__setattr__(self, "count", int(c))
        if self.kv not in KV_MODES:
            raise HfExpandError(f"--kv-heads must be one of {', '.join(KV_MODES)}, got {self.kv!r}")

    def _shape_problem(self, config, count: int) -> str | None:
        """Why ``count`` new heads cannot be added to ``config`` (None if they can)."""
        n, kv, hd = attention_dims(config)
        if self.kv == "proportional" and count % (n // kv):
            return f"{count} is not a multiple of the group size {n // kv} ({n} query heads share {kv} kv heads)"
        if self.kv == "fixed" and (n + count) % kv:
            return f"{n + count} query heads cannot be split evenly over the {kv} fixed kv heads"
        prop = getattr(type(config), "head_dim", None)
        if isinstance(prop, property) and prop.fset is None:  # computed from hidden_size / heads, not stored
            return (f"the head size is computed as hidden_size / num_attention_heads in {config.model_type}'s config "
                    f"(head_dim cannot be set), so more heads would shrink every head; use --widen-hidden")
        try:
            validated(self._new_config(config, count), "")
        except HfExpandError as exc:
            raw = str(exc).split("(", 1)[-1].rstrip(")")
            rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
            if isinstance(rope, dict) and rope.get("rope_type") == "longrope":
                factors = len(rope.get("short_factor") or ())
                return (f"longrope's short_factor/long_factor lists are per head dimension ({factors} entries for "
                        f"head_dim {hd}), and transformers re-checks them against the grown attention ({n + count} "
                        f"heads), which fails ({raw}); no kv mode can change that")
            return raw
        return None

    def valid_counts(self, config, limit: int = 6) -> list[int]:
        n = attention_dims(config)[0]
        return [c for c in range(1, 8 * n + 1) if self._shape_problem(config, c) is None][:limit]

    def _new_config(self, config, count: int):
        n, kv, hd = attention_dims(config)
        updates = {"num_attention_heads": n + count, "head_dim": hd}
        if self.kv == "proportional":
            updates["num_key_value_heads"] = kv + count // (n // kv)
        else:
            updates["num_key_value_heads"] = kv
        return updated_config(config, updates)

    def plan(self, config, layout: ModelLayout) -> Plan:
        check_refusals(config, self.name)
        n, kv, hd = attention_dims(config)
        problem = self._shape_problem(config, self.count)
        if problem:
            valid = self.valid_counts(config)
            hint = f"valid counts here: {', '.join(map(str, valid))}" if valid else "no count is valid with this kv mode"
            raise HfExpandError(f"--add-heads {self.count} ({self.kv} kv heads): {problem}; {hint}")
        new_config = self._new_config(config, self.count)
        new_n, new_kv = n + self.count, int(new_config.num_key_value_heads)
        if self.kv == "proportional":
            q = SpaceMap.append("q_heads", n, self.count)
        else:
            group, new_group = n // kv, new_n // kv
            q = SpaceMap("q_heads", n, tuple(
                (j // new_group) * group + j % new_group if j % new_group < group else -1 for j in range(new_n)
            ))
        # "heads": one entry per query head (gpt-oss's attention sinks), mapped like the heads themselves
        spaces = {"q": (q, hd), "kv": (SpaceMap.append("kv_heads", kv, new_kv - kv), hd), "heads": (q, 1)}
        steps, new_slices, modified = remap_steps(layout, describe(new_config, layout.model_cls), spaces)
        updates = {"num_attention_heads": new_n, "num_key_value_heads": new_kv, "head_dim": hd}
        return Plan(
            op=self.name,
            params={"count": self.count, "kv": self.kv},
            summary=f"query heads {n} -> {new_n}, kv heads {kv} -> {new_kv} ({self.kv}), head_dim {hd}",
            config_updates=updates,
            new_config=new_config,
            steps=list(steps.values()),
            new_slices=new_slices,
            modified=modified,
        )
