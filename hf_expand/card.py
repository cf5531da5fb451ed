"""The model card (README.md) of every folder hf_expand writes: lineage in the front matter, the evidence
in the body (``templates/model_card.md``, filled by ``ModelCard.from_template``). Built from the growth record (``record.RECORD_FILE``) and the model config only, so it
can be rebuilt at any time (``hf-expand push`` refreshes it)."""

from __future__ import annotations

import json
from pathlib import Path

from .lineage import is_hub_id, is_repo_id, public_source
from .record import RECORD_FILE, parent_repo, read_record  # noqa: F401  (parent_repo, RECORD_FILE: re-exported)
from .record import evaluation as evaluation_section
from .record import training as training_section

TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"  # the card's body, a Jinja template

# architecture suffix -> (pipeline tag, the Auto class that loads it)
HEADS = (("ForCausalLM", "text-generation", "AutoModelForCausalLM"), ("ForMaskedLM", "fill-mask", "AutoModelForMaskedLM"),
         ("ForSequenceClassification", "text-classification", "AutoModelForSequenceClassification"),
         ("ForTokenClassification", "token-classification", "AutoModelForTokenClassification"),
         ("ForQuestionAnswering", "question-answering", "AutoModelForQuestionAnswering"))


def _head(config: dict) -> tuple[str, str]:
    arch = (config.get("architectures") or [""])[0]
    return next(((tag, auto) for suffix, tag, auto in HEADS if arch.endswith(suffix)), ("feature-extraction", "AutoModel"))


def pipeline_tag(config: dict) -> str:
    return _head(config)[0]


def base_license(source: str | None) -> str | None:
    """The license on the source model's card, when it can be read (local README or the Hub)."""
    from huggingface_hub import ModelCard

    if not source:
        return None
    try:
        path = Path(source) / "README.md"
        card = ModelCard.load(path) if path.is_file() else (ModelCard.load(source) if is_hub_id(source) else None)
    except Exception:  # noqa: BLE001 - no card, offline, private: the license is just unknown
        return None
    return getattr(card.data, "license", None) if card is not None else None


def _fmt(x) -> str:
    return "n/a" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def _certificate_lines(cert) -> list[str]:
    """The streamed certificate in short: per-block hidden-state differences (largest and where), KL."""
    if not isinstance(cert, dict):
        return []
    rows = [b for b in cert.get("blocks") or [] if isinstance(b, dict) and isinstance(b.get("max_abs_diff"), (int, float))]
    out = []
    if rows:
        worst = max(rows, key=lambda b: b["max_abs_diff"])
        out.append(f"- Run block by block (streamed, stock `transformers` modules): the hidden state after each of "
                   f"{len(rows)} blocks matches its counterpart in the base within {_fmt(worst['max_abs_diff'])} "
                   f"(largest after block {worst['block']}; per-block table in `{RECORD_FILE}`, "
                   f"`verification.certificate`).")
    kl = cert.get("kl") or {}
    if isinstance(kl.get("kl_mean"), (int, float)):
        out.append(f"- KL divergence of the base's output distribution from the grown model's on the probe "
                   f"positions: mean {_fmt(kl['kl_mean'])}, max {_fmt(kl.get('kl_max'))}.")
    return out


def _metrics_rows(training: dict) -> list[str]:
    m = training.get("metrics") or {}
    keys = sorted({k for stage in ("base", "grown", "trained") for k in (m.get(stage) or {})})
    rows = [f"| {k} | {_fmt((m.get('base') or {}).get(k))} | {_fmt((m.get('grown') or {}).get(k))} | "
            f"{_fmt((m.get('trained') or {}).get(k))} |" for k in keys]
    why = ["", f"Base not compared: {m['base_skipped']}."] if m.get("base_skipped") and rows else []
    return ["| metric | base | grown (before training) | trained |", "| --- | ---: | ---: | ---: |", *rows, *why] if rows else []


def _dataset_words(ds: dict) -> str:
    return f"`{ds['name']}`" + (f" ({ds['split']} split)" if ds.get("split") else "")


def held_out_scores(record: dict) -> tuple[dict | None, dict]:
    """(dataset {name, type, split}, metrics) of this model on held-out data, for ``model-index``: the
    recipe's evaluation (its last model), else the end-of-training evaluation when it ran on held-out data.
    Metrics on training rows are never returned: they are not evaluation results."""
    evaluation = evaluation_section(record) or {}
    if evaluation.get("metrics") and evaluation.get("dataset"):
        return evaluation["dataset"], list(evaluation["metrics"].values())[-1]
    metrics = (training_section(record) or {}).get("metrics") or {}
    if metrics.get("dataset") and metrics.get("held_out") and metrics.get("trained"):
        return metrics["dataset"], metrics["trained"]
    return None, {}


def build_card(folder: str | Path, repo_id: str | None = None, name: str | None = None):
    """``huggingface_hub.ModelCard`` for the model in ``folder`` (``repo_id``: where it is being pushed;
    ``name``: the folder's final name when it is being written under a temporary one)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder)
    record = read_record(folder) or {}
    config = json.loads((folder / "config.json").read_text())
    training = training_section(record) or {}
    parent = parent_repo(record)
    ops = record.get("operations") or []
    name = repo_id or name or folder.name
    tags = ["hf-expand", "model-growth", *sorted({o["op"].replace("_", "-") for o in ops})]
    data_sources = [d for d in (training.get("data_source"),) if is_repo_id(d) and is_hub_id(d)]
    task = pipeline_tag(config)
    evaluation = evaluation_section(record) or {}
    eval_results = [EvalResult(task_type=task, dataset_type=ds["type"], dataset_name=ds["name"],
                               dataset_split=ds.get("split"), metric_type=metric, metric_name=metric,
                               metric_value=float(value))
                    for ds, scores in [held_out_scores(record)] if ds
                    for metric, value in scores.items() if isinstance(value, (int, float))]
    data = ModelCardData(
        base_model=parent, base_model_relation="finetune" if parent else None, tags=tags,
        library_name="transformers", pipeline_tag=task, license=record.get("license"),
        datasets=data_sources or None, model_name=name if eval_results else None, eval_results=eval_results or None,
    )
    origin = parent or public_source(record.get("source")) or "an unknown base"
    v = record.get("verification") or {}
    preserving = v.get("function_preserving", True)
    against = "the base" if v.get("compared_with", "base") == "base" else v["compared_with"]
    intro = [f"Grown from [`{origin}`](https://huggingface.co/{origin})" if parent else f"Grown from `{origin}`"]
    if preserving:
        intro += ["with hf_expand (function-preserving growth: at the moment of growth the model's",
                  "outputs equal the base model's, measured below)."]
    else:
        changed = ", ".join(f"`{d['op']}` changed the outputs by {_fmt(d['max_abs_diff'])}"
                            for d in v.get("recorded_differences") or [])
        intro += [f"with hf_expand. **Not function-preserving**: {changed} (recorded, not enforced; by design,",
                  "continued training is expected to recover the base model's quality)."]
    growth_rows = [f"| {o['op']} | {o['summary']} | {o['params_before']:,} | {o['params_after']:,} | "
                   f"{_fmt(o['max_abs_diff'])}{'' if o.get('preserving', True) else ' (recorded, not preserving)'} |"
                   for o in ops]
    evidence = [f"Reloaded from disk with stock `transformers` and compared with {against} on probe inputs "
                f"({record.get('probes') or 'random ids'}): max |difference| = {_fmt(v.get('reloaded_max_abs_diff'))} "
                f"(tolerance {_fmt(record.get('tolerance'))}, dtype {record.get('dtype', 'float32')}).",
                *[line[2:] for line in _certificate_lines(v.get("certificate"))],
                *([f"The architecture layout of `{record.get('model_type', 'this model')}` was inferred from "
                   f"transformers (no hand-written data for it): the comparison above is what vouches for it."]
                  if record.get("layout") == "inferred" else []),
                f"New tensor slices recorded: {len(record.get('new_slices') or {})} tensors "
                f"(`{RECORD_FILE}`, `new_slices`)."]
    aug = record.get("augmentation") or training.get("augmentation")
    metrics = None
    if training:
        hp = training.get("hyperparameters") or {}
        trained = [f"- Policy `{training.get('policy')}` ({training.get('plan', '')}), task {training.get('task')}, "
                   f"{training.get('steps')} steps on {training.get('processes', 1)} process(es).",
                   f"- Learning rate {hp.get('lr')}" + (f" (new capacity {hp['new_lr']})" if hp.get("new_lr") else "")
                   + f", batch size {hp.get('batch_size')}, weight decay {hp.get('weight_decay')}, seed {hp.get('seed')}.",
                   f"- Loss {_fmt(training.get('first_loss'))} -> {_fmt(training.get('final_loss'))}."]
        rows = [] if evaluation.get("metrics") else _metrics_rows(training)  # the held-out table below supersedes
        if rows:
            m = training.get("metrics") or {}
            metrics = {"heading": "## Evaluation" if m.get("held_out") else "## Training-set metrics", "rows": rows,
                       "where": (f"Held-out data: {_dataset_words(m['dataset'])}." if m.get("held_out") and m.get("dataset")
                                 else f"Training-set figures ({m.get('on') or 'rows of the training data'}), not an "
                                      f"evaluation: no held-out data was given to training.")}
    else:
        trained = ["Not trained after growth: the new capacity is initialised so that outputs are unchanged; train it "
                   "with `hf-expand train`." if preserving else
                   "Not trained after growth: the outputs differ from the base model's (see above); continue training "
                   "with `hf-expand train --trainable all`."]
    held_out = None
    if evaluation.get("metrics"):
        names = list(evaluation["metrics"])
        fresh = set(evaluation.get("fresh_head") or [])
        held_out = {
            "names": names,
            "intro": f"{evaluation.get('rows')} rows of "
                     + (_dataset_words(evaluation["dataset"]) if evaluation.get("dataset") else str(evaluation.get("data")))
                     + f" (inputs cut at {evaluation.get('max_length', 128)} tokens)"
                     + (f"; {', '.join(sorted(fresh))}: the same seeded untrained classification head" if fresh else "")
                     + ".",
            "rows": [f"| {k} | " + " | ".join(_fmt(evaluation["metrics"][n].get(k)) for n in names) + " |"
                     for k in sorted({k for m in evaluation["metrics"].values() for k in m})],
            "skipped": [f"{n} ({why})" for n, why in (evaluation.get("skipped") or {}).items()],
        }
    recipe = (folder / "recipe.yaml").read_text().rstrip() if (folder / "recipe.yaml").is_file() else None
    return ModelCard.from_template(
        data, template_path=str(TEMPLATE), name=name, intro="\n".join(intro), growth_rows=growth_rows,
        evidence=evidence, augmentation=aug or "No augmentation recorded.", training=trained, metrics=metrics,
        curve=bool(training) and (folder / "training_curve.png").is_file(), held_out=held_out,
        auto=_head(config)[1], recipe=recipe,
        commands=list(dict.fromkeys(c for c in (record.get("command"), training.get("command")) if c)))


def write_card(folder: str | Path, repo_id: str | None = None, name: str | None = None) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(str(build_card(folder, repo_id, name)))
    return path
