"""``GrowthCallback``: hf-expand's promises inside a stock ``transformers.Trainer``.

    from hf_expand.train.callback import GrowthCallback
    from hf_expand.train.trainer import prepare_for_trainer
    prepare_for_trainer(model, "grown-folder", policy="new")
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[GrowthCallback("grown-folder")])
    trainer.train()          # ends with a check: every old value bit-identical (policy "new")
    trainer.push_to_hub()    # the card keeps the growth sections; the growth record goes up too

* At the start of training it takes a checksum of every pre-existing value (the growth record's ``new_slices``
  say which are new); at the end it checks them again and raises :class:`HfExpandError` naming the tensors
  whose old values changed, when the policy promised they would not (``new``; ``all`` promises nothing).
* ``save_model`` (and so ``push_to_hub``) and every checkpoint write the growth record beside the weights, and
  the model card is hf-expand's (lineage, growth, the preservation evidence) followed by the card Trainer writes.
  Callbacks never see the trainer itself, so the callback finds it once, when ``Trainer.__init__`` calls
  ``on_init_end``, and wraps that trainer's ``save_model`` and ``create_model_card``.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from ..errors import HfExpandError
from ..record import RECORD_FILE, read_record, write_record

PROMISES = {"new": True, "all": False}  # policy -> old values stay bit-identical


def _old_checksums(model, record: dict) -> dict[str, str]:
    """sha256 of the pre-existing values of every tensor the record knows (wholly new tensors left out)."""
    from .policy import slice_mask

    slices = record.get("new_slices") or {}
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if name in slices:
            mask = slice_mask(t.shape, slices[name])
            if mask is None:  # wholly new
                continue
            t = t[~mask.to(t.device)]
        data = t.contiguous().reshape(-1).cpu().view(torch.uint8)  # the bytes: any dtype, bf16 included
        out[name] = hashlib.sha256(data.numpy().tobytes()).hexdigest()
    return out


class GrowthCallback(TrainerCallback):
    """See the module doc. ``grown``: the grown model's folder (its growth record) or the record itself."""

    def __init__(self, grown: str | Path | dict, policy: str = "new"):
        if policy not in PROMISES:
            raise HfExpandError(f"GrowthCallback policy must be one of {', '.join(PROMISES)}, got {policy!r} "
                                f"(lora: merge with peft, then check the merged weights)")
        self.record = read_record(grown) if isinstance(grown, (str, Path)) else dict(grown)
        if not self.record:
            raise HfExpandError(f"{grown} has no growth record ({RECORD_FILE}); GrowthCallback needs a grown model")
        self.policy = policy
        self.trainer: Trainer | None = None
        self._before: dict[str, str] | None = None
        self.checked: bool | None = None  # the end-of-training check's result (None: not run)

    # -------------------------------------------------------------- finding the trainer
    def on_init_end(self, args, state, control, **kwargs):
        frame = inspect.currentframe()
        while frame is not None and self.trainer is None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer):
                self.attach(candidate)
            frame = frame.f_back
        del frame

    def attach(self, trainer: Trainer) -> None:
        """Wrap ``trainer.save_model`` and ``trainer.create_model_card`` (done by ``on_init_end``)."""
        self.trainer = trainer
        save_model, create_model_card = trainer.save_model, trainer.create_model_card

        def save_model_with_record(output_dir=None, _internal_call=False):
            save_model(output_dir, _internal_call)
            if trainer.args.should_save:
                self.write(Path(output_dir or trainer.args.output_dir))

        def create_model_card_with_growth(*args, **kwargs):
            create_model_card(*args, **kwargs)
            if trainer.args.should_save:
                self.write_card(Path(trainer.args.output_dir))

        trainer.save_model = save_model_with_record
        trainer.create_model_card = create_model_card_with_growth

    # -------------------------------------------------------------- the check
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._before = _old_checksums(model, self.record) if PROMISES[self.policy] else None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._before is None:
            return
        after = _old_checksums(model, self.record)
        changed = sorted(n for n in self._before if after.get(n) != self._before[n])
        self.checked = not changed
        if changed:
            raise HfExpandError(f"policy {self.policy}: old values changed in {len(changed)} tensor(s) "
                                f"({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}); is the model "
                                f"prepared with prepare_for_trainer(model, grown, {self.policy!r})?")

    def on_save(self, args, state, control, **kwargs):  # a checkpoint: the record beside its weights
        if args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                self.write(folder)

    # -------------------------------------------------------------- record and card
    def write(self, folder: Path) -> None:
        record = {**self.record, "trainer": {"policy": self.policy, "old_values_identical": self.checked}}
        write_record(folder, record)

    def write_card(self, folder: Path) -> None:
        """hf-expand's card (growth, lineage, evidence), then the body of the card Trainer just wrote."""
        from huggingface_hub import ModelCard

        from ..card import build_card

        path = folder / "README.md"
        if not (folder / "config.json").is_file():  # no model saved there (yet): Trainer's card stays
            return
        theirs = ModelCard.load(path) if path.is_file() else None
        if not (folder / RECORD_FILE).is_file():
            self.write(folder)
        ours = build_card(folder)
        if theirs is not None:
            tags = list(dict.fromkeys([*(ours.data.tags or []), *(theirs.data.tags or [])]))
            ours.data.tags = tags
            ours.text = ours.text.rstrip() + "\n\n## Training with transformers.Trainer\n\n" + theirs.text.strip() + "\n"
        path.write_text(str(ours))
