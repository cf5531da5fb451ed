"""The training loop, on Accelerate: one process, or many under ``accelerate launch``.

Output folder layout: ``<out>/checkpoints/step-<N>/`` (``accelerator.save_state``), ``<out>/train_args.json``
(what ``--resume`` must match), and at the end the model itself (``save_pretrained``, written once by the
main process) with its growth record extended by a ``training`` section.

Safety (issue 14):

* settings out of range are refused before anything is read or written (``_check_args``);
* a non-finite loss or gradient norm stops the run *before* the optimizer step, on every process at once
  (:class:`TrainingDiverged`): no NaN reaches the weights, the last good checkpoint stays, no final model;
* the final save goes into ``<out>/.final.partial`` and is moved into place file by file, the growth record
  (the commit marker, ``runfolder.finished``) last; ``--resume`` finishes a folder whose save was cut;
* ``--overwrite`` trains in a hidden sibling (``runfolder.staging_dir``) that replaces ``<out>`` only once
  its model is committed; an interrupted overwrite leaves ``<out>`` as it was (``--resume`` continues it);
* one train per run folder (``runfolder.RunLock``);
* a resume restores the RNG state of the checkpoint right before its first forward pass (dropout), and
  masked-LM masks are seeded by batch position (``data.PositionSeededCollator``): resumes are exact.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

from ..errors import HfExpandError, NonFiniteOutputs
from ..record import EVALUATION, RECORD_FILE, TRAINING, inherit_lineage, record_path, write_record
from ..record import read_record as _read_record
from . import runfolder as RF
from .args import TrainArgs  # noqa: F401  (re-exported: declared once there, with its flags and recipe keys)
from .runfolder import ARGS_FILE, CHECKPOINTS, FINAL_PARTIAL, LOCK_FILE  # noqa: F401  (re-exported)

log = logging.getLogger("hf_expand")
MAX_LR = 10.0  # above this no optimizer here trains anything: a typo (1e3 for 1e-3), not a setting
MAX_TOTAL_STEPS = 10_000_000  # --epochs 1e300 must not mean "train forever"
MAX_SEED = 2**32 - 1  # numpy's limit (accelerate's set_seed seeds numpy too)


class TrainingDiverged(HfExpandError):
    """The loss or the gradient norm became NaN or inf: the run stopped before the optimizer step that
    would have written it into the weights."""


def _finite(name: str, value, low: float, high: float | None = None, low_open: bool = False) -> None:
    """Refuse ``value`` unless it is a finite number in [low, high] ((low, high] with ``low_open``)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low) and (high is None or value <= high))
    if not ok:
        lower = f"> {low:g}" if low_open else f">= {low:g}"
        upper = f" and <= {high:g}" if high is not None else ""
        raise HfExpandError(f"{name} must be a finite number {lower}{upper}, got {value}")


def _check_args(a: TrainArgs) -> None:
    """Every setting in range, before anything is read or written."""
    if (a.max_steps is None) == (a.epochs is None):
        raise HfExpandError("give exactly one of --max-steps N or --epochs E")
    for name in ("batch_size", "grad_accum", "max_length"):
        if getattr(a, name) < 1:
            raise HfExpandError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.max_steps is not None and not 1 <= a.max_steps <= MAX_TOTAL_STEPS:
        raise HfExpandError(f"--max-steps must be between 1 and {MAX_TOTAL_STEPS:,}, got {a.max_steps}")
    if a.epochs is not None:
        _finite("--epochs", a.epochs, 0, low_open=True)  # the bound is on steps (_total_steps), once they are known
    for flag, value in (("--lr", a.lr), ("--new-lr", a.new_lr)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= MAX_LR):
            raise HfExpandError(f"{flag} must be a finite number > 0 and <= {MAX_LR:g}, got {value} (typical: 1e-5 to 1e-2)")
    _finite("--weight-decay", a.weight_decay, 0)
    for lr in {a.lr, a.new_lr or a.lr}:
        if lr * a.weight_decay >= 1:
            raise HfExpandError(f"--weight-decay {a.weight_decay:g} x learning rate {lr:g} >= 1: every step would zero "
                                f"or flip the sign of every weight (typical weight decay: 0 to 0.1)")
    _finite("--max-grad-norm", a.max_grad_norm, 0)  # 0 = no clipping
    _finite("--bias-update-rate", a.bias_update_rate, 0, 1)
    for name in ("warmup_steps", "eval_every", "save_every", "log_every"):
        if getattr(a, name) < 0:
            raise HfExpandError(f"--{name.replace('_', '-')} must be >= 0 (0 = never), got {getattr(a, name)}")
    if a.eval_ratio is not None:
        from .data import check_eval_ratio

        check_eval_ratio(a.eval_ratio)
    if isinstance(a.seed, bool) or not isinstance(a.seed, int) or not 0 <= a.seed <= MAX_SEED:
        raise HfExpandError(f"--seed must be a whole number between 0 and {MAX_SEED}, got {a.seed}")
    if a.lora_r < 1:
        raise HfExpandError(f"--lora-r must be >= 1, got {a.lora_r}")
    if not a.lora_alpha > 0:
        raise HfExpandError(f"--lora-alpha must be > 0, got {a.lora_alpha}")
    from ..lineage import is_repo_id

    if a.base_model is not None and not is_repo_id(a.base_model):
        raise HfExpandError(f"--base-model {a.base_model!r} is not a Hub model id; use org/name")
    if a.mixed_precision not in ("no", "bf16", "fp16"):
        raise HfExpandError(f"--mixed-precision must be no, bf16 or fp16, got {a.mixed_precision}")
    from .policies import policy_names

    if a.trainable not in policy_names():
        raise HfExpandError(f"--trainable must be one of {', '.join(policy_names())}, got {a.trainable!r}")


def _total_steps(a: TrainArgs, per_epoch: int) -> int:
    if a.max_steps is not None:
        return a.max_steps
    steps = a.epochs * per_epoch
    if not steps <= MAX_TOTAL_STEPS:
        raise HfExpandError(f"--epochs {a.epochs:g} x {per_epoch:,} steps per epoch = {steps:.3g} steps, more than "
                            f"{MAX_TOTAL_STEPS:,}; lower --epochs or use --max-steps")
    return max(1, math.ceil(steps))


def _is_main() -> bool:
    """Whether this is the main process (before the Accelerator exists: ``accelerate launch`` sets RANK)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@dataclasses.dataclass
class RunTarget:
    """Where a run goes: ``out`` gets the trained model; the run trains in ``run_dir`` (``out``, or its
    hidden staging sibling under ``--overwrite``, which replaces ``out`` at the end when ``replace``)."""

    out: Path
    run_dir: Path
    resume_from: Path | None = None
    replace: bool = False
    create: bool = True
    locks: list = dataclasses.field(default_factory=list)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks.clear()


def _read_args(folder: Path) -> dict:
    from ..jsonfile import read_object

    return read_object(folder / ARGS_FILE, "start the run again with --overwrite")


def _unfinished_line(folder: Path) -> str:
    ckpts = RF.checkpoints(folder)
    return f"last checkpoint {ckpts[-1].name}" if ckpts else "no checkpoint"


def _prepare_out(a: TrainArgs, resume: bool, overwrite: bool) -> RunTarget:
    """Validate the output folder (nothing is created here); with ``resume``, lock it and pick the
    checkpoint to resume from."""
    raw = Path(os.path.abspath(a.out))
    out = raw.parent.resolve() / raw.name  # a link at out itself is refused (check_output_dir), not followed
    for what, src in (("MODEL", a.model), ("--data", a.data), ("--eval-data", a.eval_data)):
        if src and Path(src).exists():
            source = Path(src).resolve()
            if out == source or out in source.parents:
                raise HfExpandError(f"--out {out} is {what} or contains it; choose another --out")
    from ..output import check_output_dir, recover

    main = _is_main()
    if main:
        recover(out)  # what a killed --overwrite swap left beside out: restored or removed
    if out.exists() and not out.is_dir():
        raise HfExpandError(f"output path {out} exists and is not a folder; remove it or choose another --out")
    staging = RF.staging_dir(out)
    if resume:
        candidates = [d for d in (staging, out) if (d / ARGS_FILE).is_file()]  # an interrupted --overwrite first
        started = out.is_dir() and set(os.listdir(out)) <= {LOCK_FILE}  # killed before it wrote its arguments
        if not candidates and not started:
            raise HfExpandError(f"--resume: {out} holds no training run ({ARGS_FILE} missing); start without --resume")
        target = RunTarget(out, out, create=False)
        try:
            if main and out.is_dir():
                target.locks.append(RF.RunLock(out))
            refusal = None
            for folder in candidates or [out]:
                if folder == out and started:  # nothing to match: this run starts there from step 0
                    break
                if main and folder == staging:
                    target.locks.append(RF.RunLock(staging, shown=out))
                saved = _read_args(folder)
                diff = sorted(k for k in set(saved) | set(a.identity()) if saved.get(k) != a.identity().get(k))
                if not diff:
                    target.run_dir, target.replace = folder, folder == staging
                    break
                where = out if folder == out else f"{folder} (the interrupted --overwrite run of {out})"
                refusal = refusal or (f"--resume: this run differs from the one in {where} in {', '.join(diff)}; "
                                      f"resume with the same settings or start a new --out")
            else:
                raise HfExpandError(refusal)
            if main:
                RF.clean_leftovers(target.run_dir)
        except BaseException:
            target.release()
            raise
        ckpts = RF.checkpoints(target.run_dir)
        target.resume_from = ckpts[-1] if ckpts else None
        return target
    if out.exists():
        if main:
            RF.check_not_in_use(out)
        if not overwrite:
            if (out / ARGS_FILE).is_file() and not RF.finished(out, RECORD_FILE):
                raise HfExpandError(f"output folder {out} holds an unfinished training run ({_unfinished_line(out)}, no "
                                    f"final model); pass --resume to finish it, --overwrite to replace it, or choose "
                                    f"another --out")
            raise HfExpandError(f"output folder {out} already exists; pass --resume to continue its run, --overwrite to "
                                f"replace it, or choose another --out")
        check_output_dir(out, True)  # --overwrite replaces only hf-expand's own (or empty) folders
        return RunTarget(out, staging, replace=True)  # the old out stays until the new model is committed
    check_output_dir(out, False)  # a link at out, a parent that is a file or not writable
    return RunTarget(out, out)


def _create_run_dir(t: RunTarget, identity: dict) -> None:
    """Main process, after every check passed: create the run folder, write its arguments, lock it (in that
    order: a kill in between leaves an empty folder or a resumable one, never one without arguments that
    holds anything; ``mkdir`` itself is what two runs racing for one new folder cannot both win)."""
    if t.replace:
        if t.out.is_dir():
            t.locks.append(RF.RunLock(t.out))  # no other train may use out until it is replaced
        if t.run_dir.exists():  # a stale staging folder of an interrupted --overwrite run: this run starts over
            RF.RunLock(t.run_dir, shown=t.out).release()
            shutil.rmtree(t.run_dir)
        t.run_dir.mkdir()
    else:
        t.out.parent.mkdir(parents=True, exist_ok=True)
        try:
            t.out.mkdir()
        except FileExistsError:
            RF.check_not_in_use(t.out)
            raise HfExpandError(f"output folder {t.out} was created by something else while this run was starting; "
                                f"choose another --out") from None
    RF.write_json_atomic(t.run_dir / ARGS_FILE, identity)
    t.locks.append(RF.RunLock(t.run_dir, shown=t.out))


def _on_main(accelerator, fn):
    """Run ``fn`` on the main process; an error there is raised on every process (the others would wait
    forever at the next barrier otherwise)."""
    error = None
    if accelerator.is_main_process:
        try:
            fn()
        except HfExpandError as exc:
            error = exc
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([str(error) if error is not None else None])[0]
        if message is not None and error is None:
            raise HfExpandError(message)
    if error is not None:
        raise error


def read_record(model: str) -> dict | None:
    """The growth record beside ``model`` (None when there is none); a damaged one is one line naming it."""
    return _read_record(model, fix_hint="restore it, or grow the model again")

def load_for_training(a: TrainArgs, num_labels=None):
    """(model, tokenizer, growth record or None, task, names of freshly created head parameters)."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    from ..architectures import is_encoder_decoder
    from ..model_io import auto_class_for, load_config
    from .data import seq2seq_refusal, task_of

    config = load_config(a.model)
    task = a.task or task_of(config, a.label_column)
    if is_encoder_decoder(config) and task != "classification":  # a causal-LM class would drop
        raise HfExpandError(seq2seq_refusal(config))  # the encoder (BartForCausalLM) without a word
    try:
        tokenizer = AutoTokenizer.from_pretrained(a.model, trust_remote_code=False)
    except Exception:  # noqa: BLE001
        raise HfExpandError(f"{a.model} has no tokenizer; save one beside the model (tokenizer.save_pretrained)") from None
    cls = {"causal-lm": transformers.AutoModelForCausalLM, "masked-lm": transformers.AutoModelForMaskedLM,
           "classification": transformers.AutoModelForSequenceClassification}[task]
    kwargs = {}
    if task == "classification" and auto_class_for(config) is not transformers.AutoModelForSequenceClassification:
        if isinstance(num_labels, list):  # string labels: the fresh head is named after them
            kwargs.update(num_labels=len(num_labels), id2label=dict(enumerate(num_labels)),
                          label2id={n: i for i, n in enumerate(num_labels)})
        else:
            kwargs["num_labels"] = num_labels or config.num_labels  # a fresh head on a bare encoder, sized by the data
    record = read_record(a.model)
    from ..logs import quiet_load_report

    try:
        # A fresh head on a bare encoder is created on purpose: transformers' "MISSING ... Consider training"
        # report is replaced by our own line (``new_head_line``), said once by the caller.
        with quiet_load_report(enabled="num_labels" in kwargs):
            loaded = cls.from_pretrained(a.model, dtype=torch.float32, output_loading_info=True,
                                         trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as exc:
        raise HfExpandError(f"could not load {a.model} for {task}: {str(exc).strip().splitlines()[0]}") from None
    model, info = loaded
    head = tuple(info.get("missing_keys", ()))  # created now: trains fully under every policy
    return model, tokenizer, record, task, head


def new_head_line(model, head) -> str:
    """One line saying that a classification head was created (instead of transformers' load report)."""
    labels = list((getattr(model.config, "id2label", None) or {}).values())
    shown = ", ".join(map(str, labels[:6])) + (", ..." if len(labels) > 6 else "")
    return (f"new {len(labels)}-label classification head ({shown}) created on {model.config.model_type}: "
            f"{len(head)} tensors start untrained")


def train(a: TrainArgs, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Run training; returns the ``training`` section written into the growth record."""
    _check_args(a)
    target = _prepare_out(a, resume, overwrite)
    try:
        return _train(a, target, progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_line(target)) from None
    finally:
        target.release()


def interrupted_line(t: RunTarget) -> str:
    """What an interrupted run left, in one line (the CLI prints it after ``hf-expand: ``)."""
    run = t.run_dir
    if not (run / ARGS_FILE).is_file():
        return "interrupted before anything was written"
    if RF.finished(run, RECORD_FILE) and not t.replace:
        return f"interrupted; the trained model in {t.out} is complete"
    state = _unfinished_line(run)
    if t.replace:
        return (f"interrupted; {t.out} is unchanged and the new run waits in {run} ({state}): rerun the same command "
                f"with --resume to finish it (it then replaces {t.out}), or with --overwrite to start over")
    return (f"interrupted; {t.out} holds an unfinished run ({state}, no final model): rerun the same command with "
            f"--resume to finish it")


def _rng_state() -> dict:
    import random

    import numpy as np
    import torch

    state = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _say(accelerator, text: str) -> None:
    """A line from the main process above the progress bar (``tqdm.write`` clears the bar, prints, redraws it),
    not glued to the end of the bar's line."""
    from tqdm.auto import tqdm

    if accelerator.is_main_process:
        tqdm.write(text)


def _grad_norm(model):
    """The 2-norm of all gradients (what clipping computes), NaN/inf when any entry is."""
    import torch

    from .sharding import local

    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    # a sharded gradient's norm is a DTensor: its full value (collective: every rank computes it here)
    return torch.linalg.vector_norm(torch.stack([local(torch.linalg.vector_norm(g.float())) for g in grads]))


def _clip(model, norm: float, max_norm: float) -> None:
    """Scale every gradient by ``max_norm / (norm + 1e-6)`` when that is below 1, as
    ``torch.nn.utils.clip_grad_norm_`` does, with the norm :func:`_grad_norm` already measured (every rank holds
    the same one), so one pass over the gradients per step is saved."""
    coef = max_norm / (norm + 1e-6)
    if coef >= 1.0:
        return
    for p in model.parameters():
        if p.grad is not None:
            p.grad.detach().mul_(coef)


def _diverged(a: TrainArgs, t: RunTarget, step: int, loss: float, norm: float) -> TrainingDiverged:
    what = f"loss {loss:.4g}" if not math.isfinite(loss) else f"loss {loss:.4g}, gradient norm {norm:.4g}"
    ckpts = RF.checkpoints(t.run_dir)
    kept = (f"the last good checkpoint is {ckpts[-1]}" if ckpts else
            "no checkpoint was saved (--save-every N keeps some)")
    where = f"{t.out} is unchanged; " if t.replace else ""
    lr = f"--lr {a.lr:g}" + (f" / --new-lr {a.new_lr:g}" if a.new_lr else "")
    clip = "" if a.max_grad_norm else ", clip gradients (--max-grad-norm 1)"
    return TrainingDiverged(f"training diverged at step {step} ({what}); nothing of that step was applied, {kept}; "
                            f"{where}no final model was written. Lower {lr}{clip} and run again with --overwrite")


def _train(a: TrainArgs, t: RunTarget, progress: bool) -> dict:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from . import data as D
    from .metrics import evaluate_model
    from .policies import get_policy

    augmentation = _augmentation_summary(a.data)  # read now: a damaged file is refused before training
    from .tracking import resolve as resolve_trackers

    trackers = resolve_trackers(a.report_to)  # a missing package: refused before anything is written
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != a.mixed_precision:
        AcceleratorState._reset_state()  # an earlier train() in this process used another precision (API use)
    accelerator = Accelerator(mixed_precision=a.mixed_precision, gradient_accumulation_steps=a.grad_accum,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
                              log_with=trackers or None, project_dir=str(t.run_dir / "logs"))
    set_seed(a.seed)
    train_raw, eval_raw, eval_info = D.load_train_eval(a.data, a.eval_data, a.eval_ratio, a.seed, a.eval_split,
                                                       a.data_config, a.data_revision, a.split)
    labels = D.count_labels(train_raw, a.label_column)
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP and not a.fsdp:
        a = dataclasses.replace(a, fsdp=True)  # accelerate launch --use_fsdp: the same sharding code as --fsdp
    if a.fsdp:
        from .sharding import check_supported

        check_supported(accelerator.num_processes)
    model, tokenizer, record, task, head = load_for_training(a, labels)
    if head:
        accelerator.print(new_head_line(model, head) + " (trained fully under every policy)")

    D.check_columns(train_raw, a.text_column, a.label_column if task == "classification" else None, a.data)
    if eval_raw is not None:
        D.check_columns(eval_raw, a.text_column, a.label_column if task == "classification" else None, "the eval data")
        if len(eval_raw) == 0:
            raise HfExpandError("the evaluation data has no rows")
    if task == "classification" and not a.label_column:
        raise HfExpandError("classification needs --label-column")
    with accelerator.main_process_first():
        train_ds = D.tokenize(train_raw, tokenizer, task, a.text_column, a.label_column, model.config, a.max_length, a.packing)
        eval_ds = (D.tokenize(eval_raw, tokenizer, task, a.text_column, a.label_column, model.config, a.max_length)
                   if eval_raw is not None else None)
    if len(train_ds) == 0:
        raise HfExpandError("no training examples after tokenization (with --packing, texts shorter than --max-length?)")

    metrics = {"grown": None, "base": None, "trained": None, "held_out": eval_ds is not None, "dataset": eval_info}
    check_ds = eval_ds if eval_ds is not None else train_ds.select(range(min(64, len(train_ds))))
    if eval_ds is None:
        metrics["on"] = f"the first {len(check_ds)} training rows"

    if not a.packing or task != "causal-lm":
        metrics.update(_growth_metrics(a, model, tokenizer, record, task, head, check_ds, accelerator))

    policy = get_policy(a.trainable)
    plan = base_plan = policy.plan(model, record, head)
    if a.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    # e.g. partly-new tensors split into frozen old and trained new parameters (state for new entries only),
    # LoRA adapters wrapped around the old layers
    model, plan = policy.prepare(model, plan, a)
    trainable_values = plan.trainable_values(model)
    if a.fsdp:  # after prepare: FSDP2 shards split old and new parts like any other parameters
        from .sharding import shard

        shard(model.to(accelerator.device))
    optimizer = policy.build_optimizer(model, plan, a.lr, a.weight_decay, a.new_lr)
    collate = D.collator(task, tokenizer, a.seed)
    eval_collate = D.collator(task, tokenizer, a.seed)  # its own: evaluations must not move the training masks
    if task == "masked-lm":
        collate = D.PositionSeededCollator(collate, a.seed, accelerator.process_index)
        eval_collate = D.PositionSeededCollator(eval_collate, a.seed, accelerator.process_index)
    # a merge check's inputs (lora): the first training rows, collated apart from the loader (under DDP a
    # prepared loader must never be iterated on one rank only)
    probe_batch = (D.collator(task, tokenizer, a.seed)([train_ds[i] for i in range(min(4, len(train_ds)))])
                   if policy.merge_probe else None)
    train_dl = DataLoader(train_ds, batch_size=a.batch_size, shuffle=True, collate_fn=collate)
    eval_dl = DataLoader(eval_ds, batch_size=a.batch_size, collate_fn=eval_collate) if eval_ds is not None else None
    per_epoch = math.ceil(len(train_dl) / accelerator.num_processes / a.grad_accum)
    total = _total_steps(a, per_epoch)
    if a.fsdp:  # sharded already: prepare would wrap it in DDP; the loop steps optimizer and scheduler itself
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=a.warmup_steps, num_training_steps=total)
        train_dl = accelerator.prepare(train_dl)
    else:
        # a prepared scheduler steps once per process at every optimizer step (accelerate's convention for a
        # schedule counted in single-process steps): counted in those units, the LR reaches 0 at the last step
        n = accelerator.num_processes
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=a.warmup_steps * n,
                                  num_training_steps=total * n)
        model, optimizer, train_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, scheduler)
    if eval_dl is not None:
        eval_dl = accelerator.prepare(eval_dl)

    def evaluate():
        D.restart(eval_collate, -1)  # the same masks at every evaluation: comparable along the run
        return evaluate_model(model, eval_dl, task, accelerator)

    def create():
        try:
            if t.create:
                _create_run_dir(t, a.identity())
            else:
                RF.write_json_atomic(t.run_dir / ARGS_FILE, a.identity())
        except OSError as exc:
            raise HfExpandError(f"cannot write the run folder {t.run_dir}: {exc.strerror or exc}") from None

    _on_main(accelerator, create)  # every check passed: the first write
    accelerator.wait_for_everyone()
    if trackers:
        accelerator.init_trackers("hf_expand", config={k: v for k, v in a.identity().items() if v is not None})
    step = 0
    resume_rng = None
    sharded_state = None
    if a.fsdp:
        from .sharding import ShardedState

        sharded_state = ShardedState(model, optimizer, scheduler)
    if t.resume_from is not None:
        accelerator.load_state(str(t.resume_from))
        if sharded_state is not None:
            sharded_state.load(t.resume_from)
        step = int(t.resume_from.name.split("-")[1])
        resume_rng = _rng_state()  # = the checkpoint's (load_state restored it)
    accelerator.print(f"hf-expand train: {accelerator.num_processes} process(es) on {accelerator.device}; "
                      f"task {task}; {base_plan.summary()}; {len(train_ds):,} examples; {total} steps"
                      + (f"; resuming at step {step}" if step else ""))

    bar = tqdm(total=total, initial=step, disable=not (progress and accelerator.is_local_main_process), desc="training")
    tokens, t0 = 0, time.perf_counter()
    model.train()
    epoch = step // per_epoch
    history = []
    loss_history: list = []
    logs: dict = {}
    if t.resume_from is not None and (t.resume_from / "hf_expand_logs.json").is_file():
        try:
            logs = json.loads((t.resume_from / "hf_expand_logs.json").read_text())
        except (OSError, ValueError):
            raise HfExpandError(f"{t.resume_from / 'hf_expand_logs.json'} is damaged; resume from an earlier checkpoint "
                                f"(delete {t.resume_from.name}) or start again with --overwrite") from None
        loss_history, history = logs.get("loss_history", []), logs.get("eval_history", [])
    loop_start, start_step = time.perf_counter(), step
    bad_loss = torch.zeros((), dtype=torch.bool, device=accelerator.device)
    router = router_loss_kwargs(getattr(accelerator.unwrap_model(model), "config", None))
    from .balance import SelectionBias

    balance = SelectionBias(accelerator.unwrap_model(model), a.bias_update_rate)
    balance.history = list(logs.get("expert_load") or [])  # a resumed run keeps the load recorded before
    while step < total:
        train_dl.set_epoch(epoch)
        skip = (step - epoch * per_epoch) * a.grad_accum
        D.restart(collate, epoch, skip)
        batches = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        if not skip:
            resume_rng = None  # an epoch starts here in the uninterrupted run too: its loader draws the same
        for batch in batches:
            if resume_rng is not None:  # mid-epoch resume: undo the draw of the loader created just now
                _set_rng_state(resume_rng)
                resume_rng = None
            with accelerator.accumulate(model):
                with accelerator.autocast():  # a sharded model is not prepared (prepare adds autocast)
                    loss = model(**batch, **router).loss
                accelerator.backward(loss)
                bad_loss |= ~torch.isfinite(loss.detach())
                if accelerator.sync_gradients:
                    # checked before clipping and before the optimizer step, on every process together
                    reported = torch.where(bad_loss, torch.full_like(loss.detach().float(), float("nan")),
                                           loss.detach().float())
                    norm = _grad_norm(model) if a.mixed_precision != "fp16" else torch.zeros(())  # fp16: the scaler skips inf steps
                    stats = accelerator.gather(torch.stack([reported.reshape(()), norm.to(reported.device).reshape(())])
                                               .reshape(1, 2)).reshape(-1, 2)
                    value, grad_norm = stats[:, 0].mean().item(), stats[:, 1].max().item()
                    bad_loss.zero_()
                    if not (math.isfinite(value) and math.isfinite(grad_norm)):
                        optimizer.zero_grad()
                        raise _diverged(a, t, step + 1, value, grad_norm)
                    if a.max_grad_norm and a.mixed_precision != "fp16":
                        _clip(model, grad_norm, a.max_grad_norm)  # the norm just measured: not computed twice
                    elif a.max_grad_norm:  # fp16: accelerate unscales the gradients first
                        accelerator.clip_grad_norm_(model.parameters(), a.max_grad_norm)
                if accelerator.sync_gradients or not a.fsdp:  # prepared ones skip accumulation steps themselves
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
            tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
            if not accelerator.sync_gradients:
                continue
            step += 1
            loss_history.append([step, value])
            if balance:  # the selection biases move toward balance; the load is recorded at log steps
                logged = step == 1 or step >= total or bool(a.log_every and step % a.log_every == 0)
                balance.step(accelerator, step, record=logged)
            bar.update(1)
            if a.log_every and step % a.log_every == 0:
                rate = tokens * accelerator.num_processes / (time.perf_counter() - t0)
                if progress:  # -q: no per-step lines (the trackers still get them)
                    _say(accelerator, f"step {step}: loss {value:.4f}, lr {scheduler.get_last_lr()[0]:.2e}, "
                                      f"tokens/s {rate:,.0f}")
                accelerator.log({"loss": value, "lr": scheduler.get_last_lr()[0], "tokens_per_s": rate}, step=step)
            if a.eval_every and eval_dl is not None and step % a.eval_every == 0:
                step_metrics = evaluate()
                if progress:
                    _say(accelerator, f"step {step}: eval " + format_metrics(step_metrics))
                accelerator.log({f"eval/{k}": v for k, v in step_metrics.items()}, step=step)
                history.append({"step": step, **step_metrics})
                model.train()
            if a.save_every and step % a.save_every == 0:
                _checkpoint(accelerator, t.run_dir, step, {"loss_history": loss_history, "eval_history": history,
                                                           "expert_load": balance.history},
                            sharded_state)
            if step >= total:
                break
        epoch += 1
    bar.close()
    balance.close()
    loop_seconds = time.perf_counter() - loop_start
    # the whole run's curve, resumed parts included (a run resumed at its last checkpoint trains no step)
    first_loss = loss_history[0][1] if loss_history else None
    last_loss = loss_history[-1][1] if loss_history else None
    state_bytes = training_state_bytes(accelerator.unwrap_model(model), optimizer)
    final = evaluate() if eval_dl is not None else {}
    metrics["trained"] = _plain_eval(accelerator.unwrap_model(model), tokenizer, task, check_ds, a.seed)
    from ..lineage import public_source

    section = {"policy": a.trainable, "task": task, "data_source": public_source(a.data), "command": a.command,
               "augmentation": augmentation, "steps": step, "processes": accelerator.num_processes,
               "hyperparameters": {k: v for k, v in a.identity().items() if k not in ("model", "data", "eval_data")},
               "eval_data": public_source(a.eval_data),
               "first_loss": first_loss, "final_loss": last_loss, "final_metrics": final,
               "eval_history": history, "metrics": metrics, "loss_history": loss_history,
               "steps_per_second": (step - start_step) / loop_seconds if loop_seconds > 0 and step > start_step else None,
               "tokens_per_second": (tokens * accelerator.num_processes / loop_seconds
                                     if loop_seconds > 0 and step > start_step else None),
               "training_state_mib": state_bytes / 2**20, "trainable_values": trainable_values,
               "plan": base_plan.summary(), "world_size": accelerator.num_processes,
               "sharding": "fsdp2" if a.fsdp else ("ddp" if accelerator.num_processes > 1 else "none"),
               "precision": a.mixed_precision,
               **({"router_aux_loss_coef": accelerator.unwrap_model(model).config.router_aux_loss_coef} if router else {}),
               **({"expert_load": balance.record()} if balance else {})}
    full = None
    if a.fsdp:  # every rank gathers the whole model: its checksum below, and rank 0 saves it
        from .sharding import full_state_dict

        full = full_state_dict(model)
    # DDP/FSDP proof: every rank holds the same parameters (a float64 checksum per rank, gathered)
    with torch.no_grad():
        values = full.values() if full is not None else accelerator.unwrap_model(model).parameters()
        checksum = sum(p.double().sum() for p in values).reshape(1)
    sums = accelerator.gather(checksum.to(accelerator.device)).tolist()
    section["rank_checksums"] = sums
    section["ranks_identical"] = len(set(sums)) == 1
    accelerator.wait_for_everyone()

    def save():
        unwrapped = accelerator.unwrap_model(model)
        if full is not None:  # sharded: the gathered values, in a model loaded fresh from the grown folder
            unwrapped = policy.shape_like_trained(load_for_training(a, labels)[0], base_plan, a)
            unwrapped.load_state_dict({k: v.cpu() for k, v in full.items()})

        def write(tmp: Path):
            nonlocal unwrapped
            # plain parameters again (split tensors joined, adapters merged): a plain save_pretrained folder
            probe = {k: v.to(accelerator.device) for k, v in probe_batch.items()} if probe_batch is not None else None
            unwrapped, extra = policy.finalize_for_save(unwrapped, tmp, probe, a)
            section.update(extra)
            _write_final(unwrapped, tokenizer, record, section, tmp, a, t.out.name)

        _commit_final(t.run_dir, write)

    _on_main(accelerator, save)
    accelerator.wait_for_everyone()
    if t.replace:
        _on_main(accelerator, lambda: _replace_out(t))
        accelerator.wait_for_everyone()
    # DDP's reducer holds the gloo process group, whose destructor joins worker threads that talk to the other
    # ranks: freed at _train's return after a peer had exited, it blocked forever (seen as the exit hang). So it
    # goes here, on every rank, while every rank is still alive, then a barrier.
    model = optimizer = scheduler = None
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()  # last: it destroys the process group the barriers above need
    return section


def _enable_gradient_checkpointing(model) -> None:
    """Recompute each block's activations in backward. Non-reentrant checkpointing: under ``new`` and ``lora``
    a block's inputs may not require grad (frozen embeddings), which would cut the reentrant variant's
    gradient to the new slices and adapters inside the block."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise HfExpandError(f"{type(model).__name__} does not support gradient checkpointing in transformers; "
                            f"train without --gradient-checkpointing")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name (the old one warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def training_state_bytes(model, optimizer) -> int:
    """Bytes of gradients (trainable parameters) plus optimizer state tensors in this process: what training
    adds to the weights' own memory."""
    import torch

    def size(t) -> int:  # this process's share: a sharded (FSDP) tensor's local shard
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    grads = sum(size(p) for p in model.parameters() if p.requires_grad)
    state = sum(size(v) for st in optimizer.state.values() for v in st.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0)
    return grads + state


def _augmentation_summary(data: str) -> str | None:
    """What ``hf-expand augment`` recorded beside the data, if the data came from it."""
    path = Path(data) / "hf_expand_augmentation.json"
    if not path.is_file():
        return None
    from ..jsonfile import read_object

    info = read_object(path, "restore it or augment the data again")
    return f"{'; '.join(info.get('augmenters', []))}, seed {info.get('seed')}, copies {info.get('copies')}: " + \
        " | ".join(info.get("summary", []))


def _checkpoint(accelerator, out: Path, step: int, logs: dict, sharded=None) -> None:
    """``save_state`` into a hidden folder, renamed once complete: a kill mid-save leaves no half checkpoint
    for ``--resume`` to pick up (it only looks at ``step-*``; the next run removes the leftover).
    ``sharded``: under ``--fsdp`` the model, optimizer and scheduler (which accelerate does not hold) as a
    :class:`.sharding.ShardedState`, saved beside accelerate's state by every rank."""
    partial = out / CHECKPOINTS / f".step-{step}.partial"
    try:
        accelerator.save_state(str(partial))
        if sharded is not None:
            sharded.save(partial)
        if accelerator.is_main_process:  # the curve so far, so a resumed run reports the whole run
            (partial / "hf_expand_logs.json").write_text(json.dumps(logs))
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        earlier = RF.checkpoints(out)
        raise HfExpandError(f"could not save checkpoint step-{step} in {out / CHECKPOINTS}: {exc.strerror or exc}; the "
                            f"run stopped" + (f", {earlier[-1].name} is kept: make room and rerun with --resume"
                                              if earlier else "")) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.replace(partial, out / CHECKPOINTS / f"step-{step}")
    accelerator.wait_for_everyone()


def _move_into_place(src: Path, dest: Path) -> None:
    """One entry of the final save into the run folder (a rename: never half a file)."""
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    os.replace(src, dest)


def _commit_final(run_dir: Path, write) -> None:
    """``write(tmp)`` fills ``<run_dir>/.final.partial``; its entries are then renamed into ``run_dir``, the
    growth record last: a folder without that record (``runfolder.finished``) is an unfinished run, whatever
    else it holds. A failed or interrupted save leaves the run folder unfinished, never half-committed."""
    record_file = RECORD_FILE
    tmp = run_dir / FINAL_PARTIAL
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        write(tmp)
        if (run_dir / record_file).exists():  # a resumed finished run: uncommit while the files change
            (run_dir / record_file).unlink()
        for entry in sorted(tmp.iterdir()):
            if entry.name != record_file:
                _move_into_place(entry, run_dir / entry.name)
        _move_into_place(tmp / record_file, run_dir / record_file)  # the commit marker
    except OSError as exc:
        raise HfExpandError(f"could not write the trained model into {run_dir}: {exc.strerror or exc}; nothing was "
                            f"committed and the checkpoints are kept: make room and rerun with --resume") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_out(t: RunTarget) -> None:
    """``--overwrite``: the committed new run folder takes the place of the old ``out``, which goes only then
    (``output.replace_dir``: under the lock beside ``out``; a kill between its renames is undone by the next run)."""
    from ..output import replace_dir

    try:
        replace_dir(t.run_dir, t.out)
    except OSError as exc:
        raise HfExpandError(f"could not move the new run {t.run_dir} into place as {t.out}: {exc.strerror or exc}; "
                            f"{t.out} is unchanged; rerun with --resume to try again") from None
    t.run_dir = t.out


def router_loss_kwargs(config) -> dict:
    """Forward arguments that add a mixture of experts' load-balancing loss (``router_aux_loss_coef`` x the
    router's aux loss) to the training loss: the router of an upcycled model must learn to spread tokens.
    Evaluation leaves it off, so metrics stay comparable with the dense base."""
    if config is not None and getattr(config, "router_aux_loss_coef", 0) and hasattr(config, "output_router_logits"):
        return {"output_router_logits": True}
    return {}


def _plain_eval(model, tokenizer, task: str, ds, seed: int) -> dict:
    """Metrics on ``ds`` in this process, with a fresh seeded collator (same MLM masks every time)."""
    from torch.utils.data import DataLoader

    from . import data as D
    from .metrics import evaluate_model

    was_training = model.training
    loader = DataLoader(ds, batch_size=16, collate_fn=D.collator(task, tokenizer, seed))
    try:
        return evaluate_model(model, loader, task)
    finally:
        model.train(was_training)


def growth_check_tolerance(model_dir: str, mixed_precision: str) -> dict:
    """The relative tolerance of the pre-training growth check: ``grow``'s table (``verify.DEFAULT_TOLERANCE``)
    for the least precise of the checkpoint's dtype and the mixed-precision dtype. A bf16 checkpoint's grown
    weights are rounded to bf16 where growth wrote them, so its metrics may move in the 3rd digit."""
    import torch

    from ..model_io import load_config, source_dtype
    from ..verify import default_tolerance

    stored = source_dtype(load_config(model_dir))
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    rtol = max(default_tolerance(stored), default_tolerance(amp) if amp is not None else 0.0)
    return {"rel_tolerance": rtol, "checkpoint_dtype": str(stored).removeprefix("torch."),
            "mixed_precision": mixed_precision}


def _growth_metrics(a: TrainArgs, model, tokenizer, record, task, head, ds, accelerator) -> dict:
    """Metrics of the grown model before training and of its base; growth must not have changed them
    (within ``growth_check_tolerance``, recorded as ``growth_check``)."""
    import math

    import torch

    from ..errors import PreservationError
    from ..lineage import local_source

    out = {"grown": _plain_eval(model, tokenizer, task, ds, a.seed)}
    source = local_source(a.model, record) if record else None
    skipped = None
    if head or not source or (record or {}).get("training"):
        skipped = ("a task head is created for training" if head else
                   "the model was already trained after growth" if source else
                   "no local base model in the record")
    elif not ((record or {}).get("verification") or {}).get("function_preserving", True):
        skipped = "growth was not function-preserving (" + ", ".join(
            d["op"] for d in record["verification"].get("recorded_differences") or []) + ")"
    elif {o.get("op") for o in (record or {}).get("operations") or []} & {"add_labels", "add_tokens"}:
        skipped = "the base cannot read the grown label/token ids of this data"
    if skipped:
        out["base_skipped"] = skipped
        _require_finite_metrics(out["grown"], None, a.model)
        return out
    cls = type(model)
    try:  # fp32, like the grown model: the comparison must not be between two precisions
        from ..grow import _class_after
        from ..model_io import load_config

        cls = _class_after(cls, load_config(source))  # upcycle changed the family: the base is a dense model
        base = cls.from_pretrained(source, dtype=torch.float32, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        out["base_skipped"] = f"base not loadable as {cls.__name__}: {str(exc).splitlines()[0]}"
        _require_finite_metrics(out["grown"], None, a.model)
        return out
    try:
        out["base"] = _plain_eval(base, tokenizer, task, ds, a.seed)
    except (IndexError, RuntimeError) as exc:  # ids the base does not have
        out["base_skipped"] = f"base could not be evaluated on this data: {str(exc).splitlines()[0]}"
        _require_finite_metrics(out["grown"], None, a.model)
        return out
    _require_finite_metrics(out["grown"], out["base"], a.model, source)
    check = growth_check_tolerance(a.model, a.mixed_precision)
    out["growth_check"] = check
    for key, value in out["base"].items():
        grown = out["grown"][key]
        if not (math.isclose(value, grown, rel_tol=check["rel_tolerance"], abs_tol=1e-6)):
            raise PreservationError(f"growth check failed: {key} of the grown model {grown:.6g} != base {value:.6g} "
                                    f"(relative tolerance {check['rel_tolerance']:g} for a {check['checkpoint_dtype']} "
                                    f"checkpoint, mixed precision {a.mixed_precision}); the grown checkpoint does not "
                                    f"reproduce its base")
    accelerator.print(f"growth check: grown model metrics equal the base's within {check['rel_tolerance']:g} "
                      f"({format_metrics(out['base'])})")
    return out


def _require_finite_metrics(grown: dict, base: dict | None, model: str, source: str | None = None) -> None:
    """Raise :class:`NonFiniteOutputs` (``where``: base, grown or both) when a metric before training is NaN or
    inf: no comparison can be made with it, and training from a model that computes NaN cannot work."""
    def bad(metrics):
        return sorted(k for k, v in (metrics or {}).items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v))

    sides = [("grown", f"the grown model {model}", grown, bad(grown)), ("base", f"its base {source}", base, bad(base))]
    found = [(where, name, metrics, keys) for where, name, metrics, keys in sides if keys]
    if not found:
        return
    where = "both" if len(found) == 2 else found[0][0]
    said = "; ".join(name + ": " + ", ".join(f"{k} {metrics[k]}" for k in keys) for _, name, metrics, keys in found)
    raise NonFiniteOutputs(f"non-finite metrics before training ({said}); the model computes NaN or inf on this data: "
                           f"check the checkpoint (hf-expand verify) before training it", where)


def format_metrics(metrics: dict) -> str:
    """``accuracy 0.765, f1 0.7569``: 4 significant digits, numbers only."""
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


def _write_final(model, tokenizer, record, section, out: Path, a: TrainArgs, name: str) -> None:
    """The trained model, tokenizer, record, local sidecar and card, into ``out`` (``_commit_final``'s
    temporary folder; ``name``: the run folder's final name, for the card)."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    from ..card import write_card

    from ..lineage import is_hub_id, is_repo_id, local_source, public_source, write_local

    parent = record
    record = dict(parent or {"source": public_source(a.model),
                             "base_model": a.model if is_repo_id(a.model) and is_hub_id(a.model) else None})
    record.pop("pushed_to", None)  # this folder has not been pushed; the parent's repo is its parent_repo
    record.update(inherit_lineage(parent))
    if a.base_model:
        record["base_model"] = a.base_model
    record["trained_from"] = public_source(a.model)
    if not record.get("base_model") and not record.get("parent_repo") and not record_path(a.model).is_file():
        from ..lineage import no_lineage_hint

        log.warning(no_lineage_hint(a.model))  # (a grown folder: grow already said so)
    record[TRAINING] = section
    record.pop(EVALUATION, None)  # a recipe's evaluation of the parent is about other models
    write_record(out, record)
    write_local(out, source=local_source(a.model, record), trained_from=a.model)
    write_card(out, name=name)
