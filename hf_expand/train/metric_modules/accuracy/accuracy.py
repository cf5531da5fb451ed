"""Accuracy as an offline ``evaluate`` module: share of predictions equal to their reference."""

import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of predictions equal to the reference.",
            citation="", inputs_description="predictions, references: lists of ints",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        if not references:
            return {"accuracy": float("nan")}
        return {"accuracy": sum(int(p == r) for p, r in zip(predictions, references)) / len(references)}
