"""add_labels: extend a classification head (sequence or token classification) with new labels.

The output projection of the head gains one row (and bias entry) per new label, appended after the
old ones, so the old labels' logits are bit-identical. A new label's row is the mean of the old rows
and its bias the mean of the old biases minus ``margin``, so its logit is the mean of the old logits
minus ``margin``: strictly below the largest old logit for every input, so no prediction changes
(a head without bias gets the plain mean, which is never above the largest; ties go to the old label,
as ``argmax`` returns the first maximum). The new rows still get gradient: their softmax probability
is not zero.

The head is found by comparing the model for ``num_labels`` and ``num_labels + N`` labels (whatever
changes shape is the head), so RoBERTa's dense-then-projection head and BERT's single layer need no data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..architectures import ModelLayout, describe
from ..errors import HfExpandError, UnsupportedArchitecture
from ..plan import Plan, SetRows, TensorStep
from . import register
from .common import updated_config
from .spaces import validated

HEAD_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification")


def parse_list(text: str, what: str) -> tuple[str, ...]:
    """``"a,b , c"`` -> ``("a", "b", "c")``; an empty item is an error."""
    items = tuple(t.strip() for t in text.split(","))
    if not text.strip() or any(not t for t in items):
        raise HfExpandError(f"{what} must be a comma-separated list of non-empty names, got {text!r}")
    return items


@register
@dataclass(frozen=True)
class AddLabels:
    """Append ``labels`` to a classifier; new logits start ``margin`` below the mean of the old ones."""

    name: ClassVar[str] = "add_labels"
    labels: tuple[str, ...]
    margin: float = 1.0

    def __post_init__(self):
        labels = (self.labels,) if isinstance(self.labels, str) else tuple(self.labels)
        if not labels:
            raise HfExpandError("--add-labels needs at least one label name, e.g. --add-labels neutral,mixed")
        if any(not isinstance(x, str) or not x.strip() for x in labels):
            raise HfExpandError(f"--add-labels names must be non-empty strings, got {list(labels)}")
        labels = tuple(x.strip() for x in labels)
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise HfExpandError(f"--add-labels lists {twice} more than once; give each new label once")
        if not (isinstance(self.margin, (int, float)) and self.margin >= 0):
            raise HfExpandError(f"add_labels margin must be a number >= 0, got {self.margin!r}")
        object.__setattr__(self, "labels", labels)

    def plan(self, config, layout: ModelLayout) -> Plan:
        cls = layout.model_cls.__name__ if layout.model_cls is not None else "this model"
        if not cls.endswith(HEAD_SUFFIXES):
            raise HfExpandError(
                f"--add-labels needs a classification head, and {cls} has none; grow a checkpoint saved from "
                "AutoModelForSequenceClassification or AutoModelForTokenClassification"
            )
        if getattr(config, "problem_type", None) == "regression":
            raise HfExpandError("--add-labels: this head is a regression head (problem_type=regression); it has no labels to extend")
        if getattr(config, "problem_type", None) == "multi_label_classification":
            raise HfExpandError(
                "--add-labels on a multi-label head (problem_type=multi_label_classification) is not supported: "
                "each label fires on its own sigmoid, so no row can start below every old decision; grow a single-label head"
            )
        n = int(config.num_labels)
        id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}  # keys may be strings
        if sorted(id2label) != list(range(n)):
            raise HfExpandError(f"--add-labels: id2label {config.id2label} does not name labels 0..{n - 1}; fix the config")
        old = [id2label[i] for i in range(n)]
        clash = [x for x in self.labels if x in old]
        if clash:
            raise HfExpandError(f"--add-labels: {clash} already exist (labels: {old}); give only new label names")
        names = old + list(self.labels)
        updates = {"id2label": dict(enumerate(names)), "label2id": {x: i for i, x in enumerate(names)}}
        new_config = validated(updated_config(config, updates), "--add-labels")
        new_layout = describe(new_config, layout.model_cls)
        total = len(names)
        steps, new_slices, has_bias = [], {}, False
        for name, p in layout.params.items():
            new_shape = new_layout.params[name].shape
            changed = [a for a, (x, y) in enumerate(zip(p.shape, new_shape)) if x != y]
            if not changed:
                steps.append(TensorStep(name, name, p.shape, p.shape))
                continue
            if len(changed) != 1 or p.shape[changed[0]] != n or new_shape[changed[0]] != total:
                raise UnsupportedArchitecture(f"{name}: shape {p.shape} -> {new_shape} is not a label axis of {n} -> {total}")
            axis = changed[0]
            has_bias |= len(p.shape) == 1
            rows = tuple((i, ()) for i in range(n, total))  # () = mean of all old rows
            action = SetRows(axis, total, rows, offset=-self.margin if len(p.shape) == 1 else 0.0)
            steps.append(TensorStep(name, name, p.shape, new_shape, (action,)))
            new_slices[name] = [{"axis": axis, "start": n, "stop": total}]
        if not new_slices:
            raise UnsupportedArchitecture(f"{cls}: no parameter depends on num_labels; cannot find the classifier")
        notes = [] if has_bias else ["the head has no bias: new labels' logits start at the mean of the old logits"]
        return Plan(
            op=self.name,
            params={"labels": list(self.labels), "margin": self.margin},
            summary=f"labels {n} -> {total}: + {', '.join(self.labels)}",
            config_updates={"num_labels": total, **updates},
            new_config=new_config,
            steps=steps,
            new_slices=new_slices,
            notes=notes,
            new_outputs=(n, total),
        )
