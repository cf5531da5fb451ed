"""Keep ``transformers.Trainer`` and get hf_expand's policies.

The growth-aware path, which also works where Trainer refuses a ready-made optimizer (FSDP): prepare the
model, then let Trainer build its own optimizer::

    from hf_expand.train.trainer import prepare_for_trainer
    prepare_for_trainer(model, "grown-folder", policy="new")
    Trainer(model=model, args=args, train_dataset=ds).train()
    trainer.save_model("out")  # a plain checkpoint: split tensors are saved whole, under their own names

``prepare_for_trainer`` freezes entirely-old tensors and splits partly-new ones into a frozen old and a
trained new parameter (:mod:`.split`), so only new values reach Trainer's optimizer: its weight decay and
momentum cannot touch an old value, and its state is sized by the new values.

The older path passes an optimizer (not under FSDP)::

    optimizer = policy_optimizer(model, "grown-folder", policy="new", lr=1e-3, weight_decay=0.1)
    Trainer(model=model, args=args, train_dataset=ds, optimizers=(optimizer, None)).train()

It masks gradients on partly-new tensors and returns a :class:`~hf_expand.train.policy.MaskedAdamW`.
"""

from __future__ import annotations

from pathlib import Path

from ..record import read_record
from .policies import get_policy
from .policy import TrainablePlan, apply_masks


def _record(grown):
    return read_record(grown) if isinstance(grown, (str, Path)) else grown


def prepare_for_trainer(model, grown: str | Path | dict | None, policy: str = "new",
                        head_names: tuple[str, ...] = ()) -> TrainablePlan:
    """Make ``model`` train only what ``policy`` allows, for an optimizer Trainer builds itself (see module
    doc). ``grown``: the grown model's folder (its growth record), the record itself, or None for ``"all"``.
    ``model.state_dict()`` keeps its plain names, so ``save_model`` and checkpoints are ordinary; call
    :func:`.split.join` to turn the model back into plain parameters in memory. ``lora`` is refused (use peft
    directly)."""
    return get_policy(policy).prepare_for_trainer(model, _record(grown), head_names)


def policy_optimizer(model, grown: str | Path | dict | None, policy: str = "new", lr: float = 1e-4,
                     weight_decay: float = 0.0, new_lr: float | None = None, head_names: tuple[str, ...] = ()):
    """``grown``: the grown model's folder (its growth record, ``record.RECORD_FILE``), the record itself, or
    None for ``policy="all"``."""
    chosen = get_policy(policy)
    plan = chosen.plan(model, _record(grown), head_names)
    apply_masks(model, plan)
    return chosen.build_optimizer(model, plan, lr, weight_decay, new_lr)
