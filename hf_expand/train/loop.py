"""The training loop, on Accelerate: one process, or many under ``accelerate launch``.

Output folder layout: ``<out>/checkpoints/step-<N>/`` (``accelerator.save_state``), ``<out>/train_args.json``
(what ``--resume`` must match), and at the end the model itself (``save_pretrained``, written once by the
main process) with its growth record extended by a ``training`` section.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path

from ..errors import HfExpandError

log = logging.getLogger("hf_expand")
ARGS_FILE = "train_args.json"
CHECKPOINTS = "checkpoints"


@dataclasses.dataclass
class TrainArgs:
    model: str
    data: str
    out: str
    text_column: str = "text"
    label_column: str | None = None
    task: str | None = None
    trainable: str = "new"
    max_steps: int | None = None
    epochs: float | None = None
    lr: float = 1e-4
    new_lr: float | None = None
    weight_decay: float = 0.01
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    max_length: int = 128
    packing: bool = False
    eval_data: str | None = None
    eval_ratio: float | None = None
    eval_split: str | None = None
    eval_every: int = 0
    save_every: int = 0
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "no"
    lora_r: int = 8
    lora_alpha: int = 16
    save_adapter: bool = False
    command: str | None = None  # how the run was started (recorded, not compared on --resume)
    base_model: str | None = None  # lineage for the card when MODEL is a local folder (not compared on --resume)

    def identity(self) -> dict:
        """What a resumed run must share with the run it resumes."""
        d = dataclasses.asdict(self)
        d.pop("out")
        d.pop("command")
        d.pop("base_model")
        if d.get("eval_split") is None:  # runs saved before --eval-split existed resume unchanged
            d.pop("eval_split")
        return d


def _check_args(a: TrainArgs) -> None:
    if (a.max_steps is None) == (a.epochs is None):
        raise HfExpandError("give exactly one of --max-steps N or --epochs E")
    for name in ("batch_size", "grad_accum", "max_length"):
        if getattr(a, name) < 1:
            raise HfExpandError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.max_steps is not None and a.max_steps < 1:
        raise HfExpandError(f"--max-steps must be >= 1, got {a.max_steps}")
    if a.epochs is not None and not a.epochs > 0:
        raise HfExpandError(f"--epochs must be > 0, got {a.epochs}")
    if not a.lr > 0 or (a.new_lr is not None and not a.new_lr > 0):
        raise HfExpandError("learning rates must be > 0")
    from ..lineage import is_hub_id

    if a.base_model is not None and not (is_hub_id(a.base_model) and "/" in a.base_model):
        raise HfExpandError(f"--base-model {a.base_model!r} is not a Hub model id; use org/name")
    if a.mixed_precision not in ("no", "bf16", "fp16"):
        raise HfExpandError(f"--mixed-precision must be no, bf16 or fp16, got {a.mixed_precision}")


def _prepare_out(a: TrainArgs, resume: bool, overwrite: bool) -> Path | None:
    """Validate the output folder; returns the checkpoint to resume from (or None)."""
    out = Path(a.out).resolve()
    for what, src in (("MODEL", a.model), ("--data", a.data), ("--eval-data", a.eval_data)):
        if src and Path(src).exists():
            source = Path(src).resolve()
            if out == source or out in source.parents:
                raise HfExpandError(f"--out {out} is {what} or contains it; choose another --out")
    if resume:
        args_file = out / ARGS_FILE
        if not args_file.is_file():
            raise HfExpandError(f"--resume: {out} holds no training run ({ARGS_FILE} missing); start without --resume")
        saved = json.loads(args_file.read_text())
        diff = sorted(k for k in set(saved) | set(a.identity()) if saved.get(k) != a.identity().get(k))
        if diff:
            raise HfExpandError(f"--resume: this run differs from the one in {out} in {', '.join(diff)}; "
                                f"resume with the same settings or start a new --out")
        checkpoints = sorted((out / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        return checkpoints[-1] if checkpoints else None
    if out.exists() and not overwrite:
        raise HfExpandError(f"output folder {out} already exists; pass --resume to continue its run, --overwrite to "
                            f"replace it, or choose another --out")
    return None


def load_for_training(a: TrainArgs, num_labels=None):
    """(model, tokenizer, growth record or None, task, names of freshly created head parameters)."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    from ..grow import RECORD_FILE
    from ..model_io import auto_class_for, load_config
    from .data import task_of

    config = load_config(a.model)
    task = a.task or task_of(config, a.label_column)
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
    record_path = Path(a.model) / RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
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
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from . import data as D
    from .metrics import evaluate_model
    from .policy import apply_masks, build_optimizer, plan_trainable

    _check_args(a)
    resume_from = _prepare_out(a, resume, overwrite)
    from accelerate.utils import is_tensorboard_available

    trackers = ["tensorboard"] if is_tensorboard_available() else []
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != a.mixed_precision:
        AcceleratorState._reset_state()  # an earlier train() in this process used another precision (API use)
    accelerator = Accelerator(mixed_precision=a.mixed_precision, gradient_accumulation_steps=a.grad_accum,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
                              log_with=trackers or None, project_dir=str(Path(a.out) / "logs"))
    set_seed(a.seed)
    train_raw, eval_raw, eval_info = D.load_train_eval(a.data, a.eval_data, a.eval_ratio, a.seed, a.eval_split)
    model, tokenizer, record, task, head = load_for_training(a, D.count_labels(train_raw, a.label_column))
    if head:
        accelerator.print(new_head_line(model, head) + " (trained fully under every policy)")

    D.check_columns(train_raw, a.text_column, a.label_column if task == "classification" else None, a.data)
    if eval_raw is not None:
        D.check_columns(eval_raw, a.text_column, a.label_column if task == "classification" else None, "the eval data")
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

    plan = plan_trainable(model, record, a.trainable, head)
    if a.trainable == "lora":
        from .lora import wrap_lora

        model, plan = wrap_lora(model, plan, a.lora_r, a.lora_alpha)
    apply_masks(model, plan)
    optimizer = build_optimizer(model, plan, a.lr, a.weight_decay, a.new_lr)
    collate = D.collator(task, tokenizer, a.seed)
    train_dl = DataLoader(train_ds, batch_size=a.batch_size, shuffle=True, collate_fn=collate)
    eval_dl = DataLoader(eval_ds, batch_size=a.batch_size, collate_fn=collate) if eval_ds is not None else None
    per_epoch = math.ceil(len(train_dl) / accelerator.num_processes / a.grad_accum)
    total = a.max_steps if a.max_steps is not None else max(1, math.ceil(a.epochs * per_epoch))
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=a.warmup_steps, num_training_steps=total)
    model, optimizer, train_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, scheduler)
    if eval_dl is not None:
        eval_dl = accelerator.prepare(eval_dl)

    out = Path(a.out)
    if accelerator.is_main_process:
        if out.exists() and overwrite and not resume:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / ARGS_FILE).write_text(json.dumps(a.identity(), indent=2) + "\n")
    accelerator.wait_for_everyone()
    if trackers:
        accelerator.init_trackers("hf_expand", config={k: v for k, v in a.identity().items() if v is not None})
    step = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        step = int(resume_from.name.split("-")[1])
    accelerator.print(f"hf-expand train: {accelerator.num_processes} process(es) on {accelerator.device}; "
                      f"task {task}; {plan.summary()}; {len(train_ds):,} examples; {total} steps"
                      + (f"; resuming at step {step}" if step else ""))

    bar = tqdm(total=total, initial=step, disable=not (progress and accelerator.is_local_main_process), desc="training")
    first_loss = last_loss = None
    tokens, t0 = 0, time.perf_counter()
    model.train()
    epoch = step // per_epoch
    history = []
    loss_history: list = []
    if resume_from is not None and (resume_from / "hf_expand_logs.json").is_file():
        logs = json.loads((resume_from / "hf_expand_logs.json").read_text())
        loss_history, history = logs.get("loss_history", []), logs.get("eval_history", [])
    probe_batch = None
    loop_start, start_step = time.perf_counter(), step
    while step < total:
        train_dl.set_epoch(epoch)
        skip = (step - epoch * per_epoch) * a.grad_accum
        batches = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        for batch in batches:
            if probe_batch is None:  # kept for the LoRA merge check (no extra pass over the loader later)
                probe_batch = {k: v[:4] for k, v in batch.items()}
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and a.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), a.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
            if not accelerator.sync_gradients:
                continue
            step += 1
            value = accelerator.gather(loss.detach().float().reshape(1)).mean().item()
            first_loss = (loss_history[0][1] if loss_history else value) if first_loss is None else first_loss
            last_loss = value
            loss_history.append([step, value])
            bar.update(1)
            if a.log_every and step % a.log_every == 0 and progress:  # -q: no per-step logs
                rate = tokens * accelerator.num_processes / (time.perf_counter() - t0)
                accelerator.print(f"step {step}: loss {value:.4f}, lr {scheduler.get_last_lr()[0]:.3g}, tokens/s {rate:,.0f}")
                accelerator.log({"loss": value, "lr": scheduler.get_last_lr()[0], "tokens_per_s": rate}, step=step)
            if a.eval_every and eval_dl is not None and step % a.eval_every == 0:
                step_metrics = evaluate_model(model, eval_dl, task, accelerator)
                if progress:
                    accelerator.print(f"step {step}: eval " + format_metrics(step_metrics))
                accelerator.log({f"eval/{k}": v for k, v in step_metrics.items()}, step=step)
                history.append({"step": step, **step_metrics})
                model.train()
            if a.save_every and step % a.save_every == 0:
                _checkpoint(accelerator, out, step, {"loss_history": loss_history, "eval_history": history})
            if step >= total:
                break
        epoch += 1
    bar.close()
    loop_seconds = time.perf_counter() - loop_start
    state_bytes = training_state_bytes(accelerator.unwrap_model(model), optimizer)
    final = evaluate_model(model, eval_dl, task, accelerator) if eval_dl is not None else {}
    metrics["trained"] = _plain_eval(accelerator.unwrap_model(model), tokenizer, task, check_ds, a.seed)
    from ..lineage import public_source

    section = {"policy": a.trainable, "task": task, "data_source": public_source(a.data), "command": a.command,
               "augmentation": _augmentation_summary(a.data), "steps": step, "processes": accelerator.num_processes,
               "hyperparameters": {k: v for k, v in a.identity().items() if k not in ("model", "data", "eval_data")},
               "eval_data": public_source(a.eval_data),
               "first_loss": first_loss, "final_loss": last_loss, "final_metrics": final,
               "eval_history": history, "metrics": metrics, "loss_history": loss_history,
               "steps_per_second": (step - start_step) / loop_seconds if loop_seconds > 0 else None,
               "training_state_mib": state_bytes / 2**20, "trainable_values": plan.trainable_values(accelerator.unwrap_model(model)),
               "plan": plan.summary()}
    # DDP proof: every rank holds the same parameters (a float64 checksum per rank, gathered)
    with torch.no_grad():
        checksum = sum(p.double().sum() for p in accelerator.unwrap_model(model).parameters()).reshape(1)
    sums = accelerator.gather(checksum.to(accelerator.device)).tolist()
    section["rank_checksums"] = sums
    section["ranks_identical"] = len(set(sums)) == 1
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if a.trainable == "lora":
            from .lora import finish_lora

            unwrapped, section["lora_merge_max_abs_diff"] = finish_lora(unwrapped, out if a.save_adapter else None, probe_batch)
        _save_final(unwrapped, tokenizer, record, section, out, a)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return section


def training_state_bytes(model, optimizer) -> int:
    """Bytes of gradients (trainable parameters) plus optimizer state tensors: what training adds to the
    weights' own memory."""
    import torch

    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = sum(v.numel() * v.element_size() for st in optimizer.state.values() for v in st.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0)
    return grads + state


def _augmentation_summary(data: str) -> str | None:
    """What ``hf-expand augment`` recorded beside the data, if the data came from it."""
    path = Path(data) / "hf_expand_augmentation.json"
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return f"{'; '.join(info.get('augmenters', []))}, seed {info.get('seed')}, copies {info.get('copies')}: " + \
        " | ".join(info.get("summary", []))


def _checkpoint(accelerator, out: Path, step: int, logs: dict) -> None:
    """``save_state`` into a hidden folder, renamed once complete: a kill mid-save leaves no half checkpoint
    for ``--resume`` to pick up (it only looks at ``step-*``)."""
    import os

    partial = out / CHECKPOINTS / f".step-{step}.partial"
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:  # the curve so far, so a resumed run reports the whole run
        (partial / "hf_expand_logs.json").write_text(json.dumps(logs))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.replace(partial, out / CHECKPOINTS / f"step-{step}")
    accelerator.wait_for_everyone()


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
    if head or not source or (record or {}).get("training"):
        out["base_skipped"] = ("a task head is created for training" if head else
                               "the model was already trained after growth" if source else
                               "no local base model in the record")
        return out
    if not ((record or {}).get("verification") or {}).get("function_preserving", True):
        out["base_skipped"] = "growth was not function-preserving (" + ", ".join(
            d["op"] for d in record["verification"].get("recorded_differences") or []) + ")"
        return out
    grown_ops = {o.get("op") for o in (record or {}).get("operations") or []}
    if grown_ops & {"add_labels", "add_tokens"}:
        out["base_skipped"] = "the base cannot read the grown label/token ids of this data"
        return out
    cls = type(model)
    try:  # fp32, like the grown model: the comparison must not be between two precisions
        base = cls.from_pretrained(source, dtype=torch.float32, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        out["base_skipped"] = f"base not loadable as {cls.__name__}: {str(exc).splitlines()[0]}"
        return out
    try:
        out["base"] = _plain_eval(base, tokenizer, task, ds, a.seed)
    except (IndexError, RuntimeError) as exc:  # ids the base does not have
        out["base_skipped"] = f"base could not be evaluated on this data: {str(exc).splitlines()[0]}"
        return out
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


def format_metrics(metrics: dict) -> str:
    """``accuracy 0.765, f1 0.7569``: 4 significant digits, numbers only."""
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


def _save_final(model, tokenizer, record, section, out: Path, a: TrainArgs) -> None:
    from ..grow import RECORD_FILE

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    from ..card import write_card

    from ..lineage import is_hub_id, local_source, public_source, write_local

    record = dict(record or {"source": public_source(a.model),
                             "base_model": a.model if is_hub_id(a.model) and "/" in a.model else None})
    if a.base_model:
        record["base_model"] = a.base_model
    record["trained_from"] = public_source(a.model)
    if not record.get("base_model") and not record.get("parent_repo") and not (Path(a.model) / RECORD_FILE).is_file():
        from ..lineage import no_lineage_hint

        log.warning(no_lineage_hint(a.model))  # (a grown folder: grow already said so)
    if record.get("pushed_to"):  # the parent folder was pushed: that repo is this model's direct parent
        record["parent_repo"] = record.pop("pushed_to")
    record["training"] = section
    record.pop("evaluation", None)  # a recipe's evaluation of the parent is about other models
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_local(out, source=local_source(a.model, record), trained_from=a.model)
    write_card(out)
