"""Keep ``transformers.Trainer`` and get hf_expand's policies: pass the optimizer this builds.

    from hf_expand.train.trainer import policy_optimizer
    optimizer = policy_optimizer(model, "grown-folder", policy="new", lr=1e-3, weight_decay=0.1)
    Trainer(model=model, args=args, train_dataset=ds, optimizers=(optimizer, None)).train()

It freezes entirely-old tensors, installs the gradient masks on partly-new ones and returns a
:class:`~hf_expand.train.policy.MaskedAdamW`, so under ``new`` every pre-existing value stays bit-identical
(Trainer builds its LR scheduler around the optimizer as usual; its own weight-decay settings are unused).
"""

from __future__ import annotations

from pathlib import Path

from ..record import read_record
from .policy import apply_masks, build_optimizer, plan_trainable


def policy_optimizer(model, grown: str | Path | dict | None, policy: str = "new", lr: float = 1e-4,
                     weight_decay: float = 0.0, new_lr: float | None = None, head_names: tuple[str, ...] = ()):
    """``grown``: the grown model's folder (its growth record, ``record.RECORD_FILE``), the record itself, or
    None for ``policy="all"``."""
    record = read_record(grown) if isinstance(grown, (str, Path)) else grown
    plan = plan_trainable(model, record, policy, head_names)
    apply_masks(model, plan)
    return build_optimizer(model, plan, lr, weight_decay, new_lr)
