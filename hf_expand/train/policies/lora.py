"""``--trainable lora``: peft LoRA on the pre-existing linear layers, the grown slices trained fully, the
adapter merged at save (:mod:`..lora`). A model without a growth record gets plain LoRA.

The plan marks pre-existing tensors :data:`LORA_BASE` (a mode of this policy only, never a ``--trainable``
name): frozen, and their linear layers get adapters."""

from __future__ import annotations

from ...errors import HfExpandError
from .base import Policy
from .registry import register_policy

LORA_BASE = "lora-base"  # the plan's mode of a pre-existing tensor under lora


@register_policy
class Lora(Policy):
    name = "lora"
    help = "LoRA on the old weights + the grown slices"
    old_mode = LORA_BASE
    merge_probe = True

    def plan(self, model, record, head_names=()):
        """A model hf-expand did not grow (no growth record) gets plain LoRA: adapters on every linear layer,
        nothing else trains but a head created for training."""
        if record is None or "new_slices" not in record:
            from ..policy import TrainablePlan

            return TrainablePlan(self.name, {n: "full" if n in head_names else LORA_BASE
                                             for n, _ in model.named_parameters()}, {})
        return super().plan(model, record, head_names)

    def prepare(self, model, plan, args):
        from ..lora import wrap_lora
        from ..policy import apply_masks, split_partly_new

        split_partly_new(model, plan)  # before peft wraps the layers: a split layer becomes its base_layer
        model, plan = wrap_lora(model, plan, args.lora_r, args.lora_alpha)
        apply_masks(model, plan)
        return model, plan

    def prepare_for_trainer(self, model, record, head_names=()):
        raise HfExpandError("prepare_for_trainer takes policies new and all; for LoRA with Trainer use peft "
                            "directly, or policy_optimizer(model, grown, 'lora')")

    def is_new_capacity(self, name: str) -> bool:
        return "lora_" not in name  # adapters train at --lr, grown slices at --new-lr

    def shape_like_trained(self, model, plan, args):
        from ..lora import wrap_lora

        return wrap_lora(model, plan, args.lora_r, args.lora_alpha)[0]  # the same adapters around the same layers

    def finalize_for_save(self, model, folder, probe, args):
        from ..lora import finish_lora

        model, extra = super().finalize_for_save(model, folder, probe, args)
        merged, diff = finish_lora(model, folder if args.save_adapter else None, probe)
        return merged, {**extra, "lora_merge_max_abs_diff": diff}
