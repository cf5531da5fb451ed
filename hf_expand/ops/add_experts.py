"""add_experts: more experts in every MoE layer, with the honest cost of each way to add them.

An MoE layer computes ``sum_{i in top-k(x)} w_i(x) * expert_i(x)``. A new expert changes the output only if it is
selected or changes the weights of the selected ones. Per routing rule:

* **Selection bias** (DeepSeek-V3, GLM-4.5, dots.llm1: sigmoid scores plus ``e_score_correction_bias`` choose the
  top-k, the scores without the bias weight them): a new expert whose bias is one below the smallest old bias can
  never be chosen (its score plus bias is below every old expert's, since scores lie in (0, 1)), and the weights
  of the chosen ones do not involve it. ``mode=bias`` is exact. The new experts sit at the end of each expert
  group (``n_group``: groups are consecutive blocks of experts), so the count must be a multiple of ``n_group``.
  They start as copies of the experts of their group and train once the aux-loss-free balancing rule
  (``hf-expand train --bias-update-rate``) raises their bias.
* **Softmax routers** (Mixtral, Qwen-MoE, OLMoE): any new router row takes probability mass, so no append at a
  fixed top-k is exact. The exact options, each with its cost:
    - ``duplicate``: every expert gets an identical twin and top-k doubles: the twins of the chosen experts are
      chosen together and share their weight (renormalised or not), exact; active compute doubles.
    - ``split`` (top-1 with renormalised weights): new experts are twins of existing ones; the argmax picks one of
      a pair of equal logits, whose output is the same: exact, same compute.
    - ``append``: new experts copy existing ones behind fresh router rows: NOT function-preserving, the difference
      is recorded (as ``depth_upscale``'s is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..architectures import ModelLayout, meta_model
from ..errors import HfExpandError, UnsupportedArchitecture
from ..plan import Plan, Remap, SpaceMap, TensorStep, mask_ranges
from . import register
from .common import updated_config

MODES = ("bias", "duplicate", "split", "append")
EXPERT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")
TOPK_FIELDS = ("num_experts_per_tok",)
BIAS = "e_score_correction_bias"
ROUTERS = ("mlp.gate.weight", "mlp.gate.bias", "mlp.router.weight", "mlp.router.bias")  # one row per expert
MAX_EXPERTS = 4096


def _field(config, names) -> str | None:
    """The config field (through ``attribute_map``) among ``names`` that the config sets."""
    for name in names:
        real = getattr(config, "attribute_map", {}).get(name, name)
        if isinstance(getattr(config, real, None), int) and not isinstance(getattr(config, real), bool):
            return real
    return None


@register
@dataclass(frozen=True)
class AddExperts:
    """Add ``count`` experts to every MoE layer; ``mode``: bias (selection-bias families, exact), duplicate
    (softmax: every expert twinned, top-k doubled, exact), split (softmax top-1: twins, exact) or append (not
    function-preserving: the difference is recorded). Default: bias where the family has a selection bias."""

    name: ClassVar[str] = "add_experts"
    count: int | None = None
    mode: str | None = None

    def __post_init__(self):
        n = self.count
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise HfExpandError(f"--add-experts must be a whole number >= 1, got {n!r}")
        if n > MAX_EXPERTS:
            raise HfExpandError(f"--add-experts {n} is above {MAX_EXPERTS}; is that a typo?")
        if self.mode is not None and self.mode not in MODES:
            raise HfExpandError(f"--expert-mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def plan(self, config, layout: ModelLayout) -> Plan:
        field, topk_field = _field(config, EXPERT_FIELDS), _field(config, TOPK_FIELDS)
        if field is None or topk_field is None:
            raise HfExpandError(f"add_experts needs a mixture of experts; {config.model_type} is dense (turn it into "
                                f"one first: --upcycle-experts E)")
        E, k, N = getattr(config, field), getattr(config, topk_field), self.count
        meta = meta_model(config, layout.model_cls)
        biased = any(name.endswith(BIAS) for name, _ in meta.named_buffers())
        mode = self.mode or ("bias" if biased else None)
        if mode is None:
            raise HfExpandError(
                f"{config.model_type} routes with a softmax over its experts: adding experts at top-{k} cannot keep "
                f"the outputs. Exact options: --expert-mode duplicate (--add-experts {E}: every expert twinned, "
                f"top-k {k} -> {2 * k}, active compute x2)"
                + (", split (top-1: twins of existing experts, same compute)" if k == 1 else "")
                + "; or --expert-mode append (not function-preserving: the difference is recorded)")
        if mode == "bias" and not biased:
            raise HfExpandError(f"--expert-mode bias needs a selection-bias router (DeepSeek-V3, GLM-4.5, dots.llm1); "
                                f"{config.model_type} has none: use duplicate, split or append")
        groups = int(getattr(config, "n_group", 1) or 1) if mode == "bias" else 1
        if N % groups:
            raise HfExpandError(f"{config.model_type} has n_group={groups} expert groups: add a multiple of {groups} "
                                f"experts (the config needs the count divisible by n_group), not {N}")
        if mode == "duplicate" and N != E:
            raise HfExpandError(f"--expert-mode duplicate twins every expert: --add-experts must be {E}, not {N}")
        if mode == "split" and k != 1:
            raise HfExpandError(f"--expert-mode split is exact only at top-1 ({config.model_type} uses top-{k}); use "
                                f"duplicate (top-k {k} -> {2 * k}) or append")
        if mode == "split" and not self._renormalised(config):
            raise HfExpandError(f"--expert-mode split needs renormalised top-1 weights; {config.model_type} has "
                                f"norm_topk_prob=false: use duplicate or append")
        per_old, per_new = E // groups, N // groups
        copies, new_marks = [], []  # index of the old expert each position copies; whether it is new
        for g in range(groups):
            copies += [g * per_old + i for i in range(per_old)] + [g * per_old + i % per_old for i in range(per_new)]
            new_marks += [False] * per_old + [True] * per_new
        space = SpaceMap("experts", E, tuple(copies))
        fresh = SpaceMap("experts", E, tuple(-1 if new else i for i, new in zip(copies, new_marks)))
        new_ranges = [{"axis": 0, "start": a, "stop": b} for a, b in mask_ranges(new_marks)]

        steps, new_slices = [], {}
        routers = set()
        for p in layout.params.values():
            expert_tensor = ".experts." in f".{p.name}" and len(p.shape) >= 2 and p.shape[0] == E
            router = not expert_tensor and p.name.endswith(ROUTERS) and bool(p.shape) and p.shape[0] == E
            if not (expert_tensor or router):
                steps.append(TensorStep(p.name, p.name, p.shape, p.shape))
                continue
            shape = (E + N, *p.shape[1:])
            if router and mode == "append":  # fresh router rows: the new experts take some probability mass
                action = Remap(0, ((fresh, 1),), reads=False, new_init="normal")
            else:
                action = Remap(0, ((space, 1),), reads=False)
            steps.append(TensorStep(p.name, p.name, p.shape, shape, (action,)))
            new_slices[p.name] = [dict(r) for r in new_ranges]
            if router:
                routers.add(p.name)
        for name, buffer in meta.named_buffers():  # the selection bias: new experts below every old one
            if name.endswith(BIAS):
                shape = (E + N, *buffer.shape[1:])
                init = "below_min" if mode == "bias" else "zero"
                steps.append(TensorStep(name, name, tuple(buffer.shape), shape,
                                        (Remap(0, ((fresh, 1),), reads=False, new_init=init),)))
        if not routers:
            raise UnsupportedArchitecture(f"add_experts found no router rows in {config.model_type}; please report this")
        updates = {field: E + N}
        if mode == "duplicate":
            updates[topk_field] = 2 * k
        cost = {"bias": "exact: selection bias keeps them out until training raises it",
                "duplicate": f"exact: top-k {k} -> {2 * k}, active compute x2",
                "split": "exact at top-1: twins of existing experts",
                "append": "NOT function-preserving: fresh router rows take probability mass (difference recorded)"}[mode]
        return Plan(op=self.name, params={"count": N, "mode": mode},
                    summary=f"{field} {E} -> {E + N} (mode {mode}: {cost})", config_updates=updates,
                    new_config=updated_config(config, updates), steps=steps, new_slices=new_slices,
                    notes=[f"new experts copy existing ones{' of their group' if groups > 1 else ''}"],
                    preserving=mode != "append")

    @staticmethod
    def _renormalised(config) -> bool:
        if config.model_type == "mixtral":
            return True
        return bool(getattr(config, "norm_topk_prob", False))
