"""Metrics through ``evaluate``, offline: accuracy, F1 and perplexity ship as local ``evaluate`` modules
(``evaluate.load("accuracy")`` needs the Hub; the wheel carries no metric scripts). ``hub=True`` asks
the Hub's versions instead."""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import HfExpandError

MODULES = Path(__file__).parent / "metric_modules"
METRICS = ("accuracy", "f1", "perplexity")


@functools.lru_cache(maxsize=None)  # evaluate.load reads and imports the module: once per process is enough
def load_metric(name: str, hub: bool = False):
    import evaluate

    if name not in METRICS and not hub:
        raise HfExpandError(f"unknown metric {name!r}; offline metrics: {', '.join(METRICS)}")
    try:
        return evaluate.load(name if hub else str(MODULES / name))
    except Exception as exc:  # noqa: BLE001
        raise HfExpandError(f"cannot load metric {name!r}{' from the Hub' if hub else ''}: "
                            f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0]}") from None


def _token_nll(logits, labels, causal: bool):
    """(summed NLL per sequence, counted tokens per sequence) over labels != -100."""
    import torch

    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    counted = labels != -100
    return (nll * counted).sum(dim=1), counted.sum(dim=1)


def evaluate_model(model, dataloader, task: str, accelerator=None) -> dict:
    """accuracy + F1 for classification (binary F1 for 2 labels, macro otherwise), perplexity for LMs.
    Under Accelerate, predictions are gathered from every process (duplicates of the last batch removed)."""
    import torch

    model.eval()
    preds, refs = [], []
    for batch in dataloader:
        with torch.no_grad():
            out = model(**batch)
        if task == "classification":
            p, r = out.logits.argmax(-1), batch["labels"]
        else:
            p, r = _token_nll(out.logits, batch["labels"], causal=task == "causal-lm")
        if accelerator is not None:
            p, r = accelerator.gather_for_metrics((p, r))
        preds.extend(p.tolist())
        refs.extend(r.tolist())
    if task == "classification":
        bare = accelerator.unwrap_model(model) if accelerator is not None else model
        num_labels = bare.config.num_labels
        f1_args = {"average": "binary"} if num_labels == 2 else {"average": "macro"}
        return {**load_metric("accuracy").compute(predictions=preds, references=refs),
                **load_metric("f1").compute(predictions=preds, references=refs, **f1_args)}
    return load_metric("perplexity").compute(predictions=preds, references=refs)
