"""The peft side of ``--trainable lora`` (the policy itself: :mod:`.policies.lora`): LoRA on the
pre-existing linear weights, full training of the grown slices.

After training the adapter is merged (``merge_and_unload``) so the saved model is a plain checkpoint;
``save_adapter`` also writes the adapter (``<out>/adapter``). The adapter alone does not reproduce the
model: the grown slices were trained outside it, in the base weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import HfExpandError
from .policies.lora import LORA_BASE
from .policy import TrainablePlan, mode_of


def _linear_like(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def wrap_lora(model, plan: TrainablePlan, r: int, alpha: int):
    """(peft model, plan renamed to peft's parameter names): adapters on the linear layers whose weight ``plan``
    marks :data:`LORA_BASE` or partly new; those weights themselves stay frozen."""
    from peft import LoraConfig, get_peft_model

    targets = sorted(name for name, module in model.named_modules()
                     if _linear_like(module) and plan.modes.get(f"{name}.weight") in (LORA_BASE, "partial"))
    if not targets:
        raise HfExpandError("no pre-existing linear layer to put LoRA on; use --trainable new or all")
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for m in model.modules())
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                        fan_in_fan_out=fan_in_fan_out)
    wrapped = get_peft_model(model, config)
    targets = set(targets)
    modes, masks = {}, {}
    for peft_name, _ in wrapped.named_parameters():
        if "lora_" in peft_name:
            modes[peft_name] = "full"
            continue
        name = peft_name.removeprefix("base_model.model.")
        if ".parametrizations." in name:  # a split partly-new tensor (split.py): old part frozen, new part trained
            modes[peft_name] = mode_of(plan, name)
            continue
        module_name, _, leaf = name.rpartition(".")
        if module_name.endswith(".base_layer") and module_name.removesuffix(".base_layer") in targets:
            name = f"{module_name.removesuffix('.base_layer')}.{leaf}"
        mode = plan.modes.get(name, "frozen")
        modes[peft_name] = "frozen" if mode == LORA_BASE else mode
        if mode == "partial":
            masks[peft_name] = plan.masks[name]
    return wrapped, TrainablePlan(plan.policy, modes, masks)


def finish_lora(model, out: Path | None, probe: dict):
    """Optionally save the adapter under ``out/adapter``, merge it into a plain model, and measure the
    merge: (merged model, max |unmerged - merged| of the logits on ``probe``)."""
    if out is not None:
        model.save_pretrained(Path(out) / "adapter")
    model.eval()
    if probe is None:  # nothing was trained in this process (resumed at the last step)
        return model.merge_and_unload(), None
    inputs = {k: v for k, v in probe.items() if k != "labels"}
    with torch.no_grad():
        before = model(**inputs).logits.float()
        merged = model.merge_and_unload()
        after = merged(**inputs).logits.float()
    bad = [name for name, logits in (("unmerged", before), ("merged", after)) if not torch.isfinite(logits).all()]
    diff = float((before - after).abs().max()) if not bad else float("nan")
    if bad or not math.isfinite(diff):
        from ..errors import NonFiniteOutputs

        # where: "base" = the trained model with its adapter, "grown" = the merged model that would be saved
        where = "both" if len(bad) == 2 else {"unmerged": "base", "merged": "grown"}.get(bad[0] if bad else "", "both")
        raise NonFiniteOutputs(f"LoRA merge check: the {' and the '.join(bad) or 'merge'} model computes non-finite "
                               f"logits on the probe batch; the final model was not written", where)
    return merged, diff
