"""Measure that growth preserved the model: same inputs, fp32, max abs difference of the outputs.

Also checks trainability: every new slice of every grown tensor receives gradient.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .errors import NonFiniteOutputs

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
    from .architectures import is_encoder_decoder
    from .multimodal import probe_limit, text_of

    g = torch.Generator().manual_seed(seed)
    wrapper, config = config, text_of(config)  # a multimodal wrapper: text-only probes below its special tokens
    limits = [x for x in (vocab_limit, probe_limit(wrapper)) if x]
    vocab = min(int(config.vocab_size), *limits) if limits else int(config.vocab_size)
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
    seq2seq = is_encoder_decoder(config)
    eos = getattr(config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    if seq2seq and isinstance(eos, int) and 0 <= eos < vocab and vocab > 3:
        # one end-of-sequence token per row, after its last real token (BART/T5 classifiers read the hidden state
        # there and insist every row has the same number of them)
        spare = next(i for i in range(vocab) if i not in (eos, pad))
        ids[ids == eos] = spare
        ids[torch.arange(ids.shape[0]), mask.sum(1) - 1] = eos
    if seq2seq:  # the decoder reads its own ids, padded like the encoder's
        dec = torch.randint(0, vocab, (3, length), generator=g)
        if isinstance(pad, int) and 0 <= pad < vocab:
            dec[mask == 0] = pad
        batches[0].update(decoder_input_ids=dec, decoder_attention_mask=mask.clone())
    if texts:
        if tokenizer is None:
            raise ValueError("probe texts need a tokenizer")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=int(max_pos) - 2)
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        if seq2seq:  # the text on both sides: outputs per decoder position
            batches[-1].update(decoder_input_ids=enc["input_ids"], decoder_attention_mask=enc["attention_mask"])
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
    and how many argmax predictions changed, over the non-padded probe positions. Raises
    :class:`NonFiniteOutputs` when either side holds NaN or inf there (see :func:`check_finite`)."""
    check_finite(base, grown, probes)
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


def nonfinite_counts(outs: list[torch.Tensor], probes: Probes) -> dict[str, int]:
    """How many compared positions of ``outs`` hold NaN / inf / either, of how many: ``{"nan", "inf", "bad",
    "positions"}``. A position is a non-padded token (or a row of (batch, labels) logits); every output entry
    of it counts, new outputs beyond the base's included."""
    nan = inf = bad = total = 0
    for t, batch in zip(outs, probes.batches):
        flags = torch.stack([t.isnan(), t.isinf()], -1)
        if t.ndim > 1:
            flags = flags.any(-2)  # per position: any entry of the last (feature) axis
        mask = _mask_of(batch, t)
        flags = flags[mask] if mask is not None else flags.reshape(-1, 2)
        nan += int(flags[:, 0].sum())
        inf += int(flags[:, 1].sum())
        bad += int(flags.any(-1).sum())
        total += flags.shape[0]
    return {"nan": nan, "inf": inf, "bad": bad, "positions": total}


def _kinds(counts: dict[str, int]) -> str:
    return " and ".join(kind for kind in ("NaN", "inf") if counts[kind.lower()])


def require_finite(outs: list[torch.Tensor], probes: Probes, name: str = "the base model", where: str = "base") -> None:
    """Raise :class:`NonFiniteOutputs` (``where``) when ``outs`` hold NaN or inf at a compared position:
    "<name> produces non-finite outputs on the probe inputs (NaN at 3 of 24 positions)"."""
    c = nonfinite_counts(outs, probes)
    if c["bad"]:
        raise NonFiniteOutputs(f"{name} produces non-finite outputs on the probe inputs "
                               f"({_kinds(c)} at {c['bad']} of {c['positions']} positions)", where)


def check_finite(base: list[torch.Tensor], grown: list[torch.Tensor], probes: Probes,
                 names: tuple[str, str] = ("the base model", "the grown model"), finite_diff: float | None = None) -> None:
    """Raise :class:`NonFiniteOutputs` when either model's outputs hold NaN or inf at a compared (non-padded)
    position, naming the side (``where``: "base", "grown" or "both"). A non-finite output is a failure
    whatever the tolerance: no difference can be measured against it. ``finite_diff`` (the largest
    difference among the finite entries) is added to the message, so one NaN hides nothing."""
    counts = nonfinite_counts(base, probes), nonfinite_counts(grown, probes)
    bad = [c["bad"] > 0 for c in counts]
    if not any(bad):
        return
    if all(bad):
        where = "both"
        sides = "; ".join(f"{n}: {_kinds(c)} at {c['bad']} of {c['positions']} positions" for n, c in zip(names, counts))
        union = _kinds({k: counts[0][k] + counts[1][k] for k in ("nan", "inf")})
        message = f"both models' outputs contain {union} on the probe inputs ({sides})"
    else:
        i = 0 if bad[0] else 1
        where, c = ("base", "grown")[i], counts[i]
        message = (f"{names[i]}'s outputs contain {_kinds(c)} on the probe inputs ({c['bad']} of {c['positions']} "
                   f"positions); {names[1 - i]} is finite")
    if finite_diff is not None:
        message += f"; elsewhere the outputs differ by up to {finite_diff:.3g}"
    raise NonFiniteOutputs(message, where)


def max_abs_diff(base: list[torch.Tensor], grown: list[torch.Tensor], probes: Probes,
                 exclude: list[tuple[int, int]] | None = None,
                 names: tuple[str, str] = ("the base model", "the grown model")) -> float:
    """Max |base - grown| over the non-padded positions of every probe batch (old outputs only: see
    :func:`old_part`; ``exclude`` lists (start, stop) ranges of the last axis that growth reassigned,
    such as unused rows of a padded vocabulary given to new tokens).

    Always finite: NaN or inf in either model's outputs (at non-padded positions, new outputs included)
    raises :class:`NonFiniteOutputs` (a :class:`PreservationError`) naming the side by ``names``, with the
    largest finite difference in its message. Differences are taken in float64, so finite fp32 outputs
    never differ by inf."""
    parts = [old_part(a, b) for a, b in zip(base, grown)]  # incompatible shapes: ValueError first
    worst, compared = 0.0, 0
    for a, b, batch in zip(base, parts, probes.batches):
        diff = (a.double() - b.double()).abs()
        for start, stop in exclude or []:
            diff[..., start:stop] = 0
        mask = _mask_of(batch, diff)
        if mask is not None:
            diff = diff[mask]
        diff = diff[diff.isfinite()]  # non-finite entries are reported by check_finite, never max()ed away
        if diff.numel():
            worst, compared = max(worst, float(diff.max())), compared + diff.numel()
    check_finite(base, grown, probes, names, worst if compared else None)
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
