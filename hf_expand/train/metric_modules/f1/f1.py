"""F1 as an offline ``evaluate`` module: binary (``pos_label``) or macro/micro/weighted over classes."""

import datasets
import evaluate


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="F1 = 2PR/(P+R); average: binary, macro, micro or weighted.",
            citation="", inputs_description="predictions, references: lists of ints",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="binary", pos_label=1):
        def f1_of(label):
            tp = sum(1 for p, r in zip(predictions, references) if p == label and r == label)
            fp = sum(1 for p, r in zip(predictions, references) if p == label and r != label)
            fn = sum(1 for p, r in zip(predictions, references) if p != label and r == label)
            return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)

        if average == "binary":
            return {"f1": f1_of(pos_label)}
        labels = sorted(set(references) | set(predictions))
        if average == "micro":  # single-label: micro F1 equals accuracy
            return {"f1": sum(int(p == r) for p, r in zip(predictions, references)) / max(1, len(references))}
        scores = {label: f1_of(label) for label in labels}
        if average == "macro":
            return {"f1": sum(scores.values()) / len(scores)}
        if average == "weighted":
            support = {label: sum(1 for r in references if r == label) for label in labels}
            return {"f1": sum(scores[label] * support[label] for label in labels) / max(1, len(references))}
        raise ValueError(f"average must be binary, macro, micro or weighted, got {average!r}")
