"""Perplexity as an offline ``evaluate`` module, from per-token negative log-likelihoods.

``predictions`` are the summed NLL (nats) of each sequence, ``references`` its token count; the result is
``exp(total NLL / total tokens)`` (the same token-weighted mean the model's loss uses)."""

import math

import datasets
import evaluate


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="exp(total NLL / total tokens).", citation="",
            inputs_description="predictions: summed NLL per sequence (float); references: tokens per sequence (int)",
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        tokens = sum(references)
        if tokens == 0:
            return {"perplexity": float("nan")}
        return {"perplexity": math.exp(sum(predictions) / tokens)}
