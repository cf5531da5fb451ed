"""Measure that growth preserved the model: same inputs, fp32, max abs difference of the outputs.

Also checks trainability: every new slice of every grown tensor receives gradient.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

# Default tolerance by the dtype the checkpoint is stored in (the comparison itself always runs in fp32).
# New weights rounded to half precision and Net2Net's divided columns are where the error comes from.
DEFAULT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def default_tolerance(dtype: torch.dtype) -> float:
    return DEFAULT_TOLERANCE.get(dtype, 1e-4)


@dataclass
class Probes:
    """A batch of inputs both models see: random token ids, right-padded, plus optional user texts."""

    batches: list[dict[str, torch.Tensor]]

    @property
    def description(self) -> str:
        return f"{len(self.batches)} batch(es): random token ids with padding" + (
            " + probe text" if len(self.batches) > 1 else ""
        )


def make_probes(config, tokenizer=None, texts: list[str] | None = None, seed: int = 0, length: int = 12,
                vocab_limit: int | None = None) -> Probes:
    """Random ids below ``vocab_limit`` (default: the whole vocabulary) with rows right-padded.

    ``vocab_limit`` keeps probes to the ids a tokenizer can produce when a padded vocabulary's unused
    rows are about to be reused for new tokens."""
    g = torch.Generator().manual_seed(seed)
    vocab = min(int(config.vocab_size), vocab_limit or int(config.vocab_size))
    max_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 512
    length = min(length, int(max_pos) - 2)
    ids = torch.randint(0, vocab, (3, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length * 2 // 3 :] = 0  # padding in the batch
    mask[2, length // 3 :] = 0
    pad = getattr(config, "pad_token_id", None)
    if isinstance(pad, int) and 0 <= pad < vocab:
        ids[mask == 0] = pad
    batches = [{"input_ids": ids, "attention_mask": mask}]
    if texts:
        if tokenizer is None:
            raise ValueError("probe texts need a tokenizer")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=int(max_pos) - 2)
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return Probes(batches)


def _main_output(out) -> torch.Tensor:
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if value is not None:
            return value
    return out[0]


@torch.no_grad()
def outputs(model, probes: Probes) -> list[torch.Tensor]:
    """The model's main output (logits, else last hidden state) in fp32 on each probe batch."""
    model.eval()
    device = next(model.parameters()).device
    no_cache = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    return [
        _main_output(model(**{k: v.to(device) for k, v in batch.items()}, **no_cache)).float().cpu()
        for batch in probes.batches
    ]


def old_part(base: torch.Tensor, grown: torch.Tensor) -> torch.Tensor:
    """The grown output restricted to the base's entries.

    Growth appends new outputs after the old ones (new labels, new tokens, hidden-state replicas), so
    when only the last axis is longer, its first ``base.shape[-1]`` entries are the ones to compare.
    """
    if grown.shape == base.shape:
        return grown
    if grown.shape[:-1] == base.shape[:-1] and grown.shape[-1] > base.shape[-1]:
        return grown[..., : base.shape[-1]]
    raise ValueError(f"output shapes differ: base {tuple(base.shape)} vs grown {tuple(grown.shape)}")


def _mask_of(batch, t: torch.Tensor) -> torch.Tensor | None:
    """The padding mask when ``t`` has one entry per token ((batch, seq, features)), else None (sequence
    classification logits are (batch, labels): a label axis must never be masked)."""
    mask = batch["attention_mask"]
    return mask.bool() if t.ndim == 3 and t.shape[:2] == mask.shape else None


def new_output_measures(base: list[torch.Tensor], grown: list[torch.Tensor], probes: Probes, new: tuple[int, int]) -> dict:
    """Probability mass the new outputs (``new`` = (start, stop) on the last axis) take under softmax,
    and how many argmax predictions changed, over the non-padded probe positions."""
    mass, changed, total = 0.0, 0, 0
    for a, b, batch in zip(base, grown, probes.batches):
        p = b.float().softmax(-1)[..., new[0] : new[1]].sum(-1)
        flips = a.argmax(-1) != b.argmax(-1)
        mask = _mask_of(batch, b)
        if mask is not None:
            p, flips = p[mask], flips[mask]
        mass += float(p.sum())
        changed += int(flips.sum())
        total += p.numel()
    return {"new_probability_mass": mass / max(total, 1), "predictions_changed": changed, "positions": total}


def max_abs_diff(base: list[torch.Tensor], grown: list[torch.Tensor], probes: Probes,
                 exclude: list[tuple[int, int]] | None = None) -> float:
    """Max |base - grown| over the non-padded positions of every probe batch (old outputs only: see
    :func:`old_part`; ``exclude`` lists (start, stop) ranges of the last axis that growth reassigned,
    such as unused rows of a padded vocabulary given to new tokens)."""
    worst = 0.0
    for a, b, batch in zip(base, grown, probes.batches):
        b = old_part(a, b)
        diff = (a - b).abs()
        for start, stop in exclude or []:
            diff[..., start:stop] = 0
        mask = _mask_of(batch, diff)
        if mask is not None:
            diff = diff[mask]
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return worst


def new_slice_gradients(model, record: dict, probes: Probes) -> dict[str, list[float]]:
    """Backward a loss on the probes; return the gradient norm of every new slice in ``record``.

    ``record`` maps parameter names to slices as in the growth record (``{"axis": None}`` = whole).
    The loss is the mean of squared outputs, which depends on every output unit.
    """
    model.train(False)
    model.zero_grad(set_to_none=True)
    params = dict(model.named_parameters(remove_duplicate=False))
    batch = probes.batches[0]
    loss = _main_output(model(**batch)).float().pow(2).mean()
    loss.backward()
    norms = {}
    for name, slices in record.items():
        grad = params[name].grad
        res = []
        for s in slices:
            if grad is None:
                res.append(0.0)
            elif s["axis"] is None:
                res.append(float(grad.norm()))
            else:
                res.append(float(grad.narrow(s["axis"], s["start"], s["stop"] - s["start"]).norm()))
        norms[name] = res
    return norms
