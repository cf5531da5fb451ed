"""``contextual``: replace words with a masked LM's predictions, many sentences per forward pass.

nlpaug's ContextualWordEmbsAug runs the model once per replaced word per sentence (and calls tokenizer
internals transformers 5 removed). Here each sentence's chosen words are masked together, a whole batch of
sentences goes through the model in one call, and the replacement for each mask is drawn from the top-k
whole-word predictions with the sentence's own generator.

Determinism: logits of one sentence can differ in the last bits with the batch it is padded into, so the
sampling probabilities are rounded to 1e-4 first; the choice then depends on (text, seed) only.

A text that already contains the mask token literally is left unchanged (its masks would be ambiguous).
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import HfExpandError
from .nlpaug_augmenters import WORD_PARAMS
from .specs import REQUIRED, AugmenterType, Param, count

# A word we may replace: optional leading/trailing punctuation around letters (any script; inner ' or -).
_L = r"[^\W\d_]"
_WORD = re.compile(rf"^(\W*)({_L}(?:(?:{_L}|['-])*{_L})?)(\W*)$")


def load_pretrained(auto_cls, name: str, device: str, what: str, trust_remote_code: bool = False):
    """(tokenizer, model in eval mode) from a Hub id or local folder, or a one-line error.

    ``trust_remote_code`` is passed explicitly on every load (transformers would otherwise prompt on stdin
    and run the model's code on a ``y``); without it, a model whose config names custom code (``auto_map``)
    is refused before anything of it is imported."""
    import torch
    from transformers import AutoTokenizer

    from ..model_io import check_no_custom_code, is_custom_code_refusal, needs_custom_code

    try:
        if not trust_remote_code:
            check_no_custom_code(name, what)
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = auto_cls.from_pretrained(name, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except HfExpandError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loading failure becomes one line for the user
        if not trust_remote_code and is_custom_code_refusal(exc):  # e.g. a tokenizer that only exists as custom code
            raise needs_custom_code(name, what) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HfExpandError(f"cannot load {what} {name!r}: {first}") from None
    try:
        model.to(device)
    except Exception as exc:  # noqa: BLE001
        raise HfExpandError(f"cannot use device {device!r}: {exc}") from None
    return tokenizer, model.eval()


def check_max_length(model, max_length: int, where: str) -> None:
    """A ``max_length`` beyond the model's position table would crash mid-run: refuse it up front."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") and limit:
        limit -= 2  # positions start after the padding index
    if limit and max_length > limit:
        raise HfExpandError(f"{where}:max_length={max_length} exceeds the model's {limit} positions; "
                            f"use max_length<={limit}")


def whole_word_ids(tokenizer, vocab: list[str]) -> np.ndarray:
    """Boolean mask over ``vocab`` (the tokenizer's tokens by id): tokens that are a whole alphabetic word."""
    special = set(tokenizer.all_special_tokens)
    wordpiece = any(t.startswith("##") for t in vocab if t)
    ok = np.zeros(len(vocab), dtype=bool)
    for i, tok in enumerate(vocab):
        if not tok or tok in special:
            continue
        if wordpiece:
            ok[i] = tok.isalpha()
        elif tok[0] in "\u0120\u2581":  # byte-level BPE / sentencepiece word starts
            ok[i] = tok[1:].isalpha()
    if not ok.any():
        raise HfExpandError("the masked LM's vocabulary has no whole-word tokens to substitute with")
    return ok


def _match_case(original: str, word: str) -> str:
    if original.isupper() and len(original) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if original[:1].isupper() else word


class ContextualAugmenter:
    def __init__(self, p: dict, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForMaskedLM

        self.p = p
        self.tokenizer, self.model = load_pretrained(AutoModelForMaskedLM, p["model"], p["device"], "masked LM",
                                                     trust_remote_code)
        if self.tokenizer.mask_token_id is None:
            raise HfExpandError(f"{p['model']!r} has no mask token; contextual needs a masked LM (BERT, RoBERTa, ...)")
        check_max_length(self.model, p["max_length"], "contextual")
        self.vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self.allowed = torch.from_numpy(whole_word_ids(self.tokenizer, self.vocab))

    def _choose(self, text: str, rng: np.random.Generator):
        """Split into pieces (words and spaces) and pick which word pieces to mask."""
        pieces = re.split(r"(\s+)", text)
        if self.tokenizer.mask_token in text:
            return pieces, []
        words = [i for i, piece in enumerate(pieces) if _WORD.match(piece)]
        n = min(self.p["max"], max(self.p["min"], int(len(words) * self.p["p"])), len(words))
        chosen = sorted(rng.choice(len(words), n, replace=False).tolist()) if n else []
        return pieces, [words[k] for k in chosen]

    def augment(self, texts: list[str], seeds: list[int]) -> list[str]:
        import torch

        rngs = [np.random.default_rng(seed) for seed in seeds]
        plans = [self._choose(text, rng) for text, rng in zip(texts, rngs)]
        out = list(texts)
        todo = [i for i, (_, chosen) in enumerate(plans) if chosen]
        for start in range(0, len(todo), self.p["batch_size"]):
            rows = todo[start:start + self.p["batch_size"]]
            masked = [self._masked(*plans[i]) for i in rows]
            enc = self.tokenizer(masked, padding=True, truncation=True, max_length=self.p["max_length"], return_tensors="pt")
            enc = {k: v.to(self.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            with torch.no_grad():
                logits = self.model(**enc).logits.float()
                is_mask = enc["input_ids"] == self.tokenizer.mask_token_id
                # Only the masked positions matter: keep whole-word tokens, take the k+1 best (one may be
                # the original word) for all masks of the batch at once.
                scores = logits[is_mask].masked_fill(~self.allowed.to(logits.device), float("-inf"))
                top_scores, top_ids = scores.topk(min(self.p["top_k"] + 1, scores.shape[-1]), dim=-1)
            top_scores, top_ids = top_scores.cpu().numpy(), top_ids.cpu().numpy()
            per_row = is_mask.sum(dim=1).tolist()
            offset = 0
            for row, i in enumerate(rows):
                pieces, chosen = plans[i]
                new = list(pieces)
                # masks cut off by max_length leave their word as is
                for slot, k in enumerate(chosen[:per_row[row]]):
                    lead, word, trail = _WORD.match(pieces[k]).groups()
                    pick = self._sample(top_scores[offset + slot], top_ids[offset + slot], word, rngs[i])
                    if pick is not None:
                        new[k] = lead + _match_case(word, pick) + trail
                offset += per_row[row]
                out[i] = "".join(new)
        return out

    def _masked(self, pieces: list[str], chosen: list[int]) -> str:
        """The text with each chosen word replaced by the mask token, its punctuation kept."""
        parts = []
        for k, piece in enumerate(pieces):
            if k in chosen:
                lead, _, trail = _WORD.match(piece).groups()
                parts.append(f"{lead}{self.tokenizer.mask_token}{trail}")
            else:
                parts.append(piece)
        return "".join(parts)

    def _sample(self, scores: np.ndarray, ids: np.ndarray, original: str, rng: np.random.Generator) -> str | None:
        """Draw one of the top-k candidates (best first, without the original word) by softmax probability."""
        keep = [n for n, (s, t) in enumerate(zip(scores, ids))
                if np.isfinite(s) and self._clean(self.vocab[t]).lower() != original.lower()][: self.p["top_k"]]
        if not keep:
            return None
        keep.sort(key=lambda n: ids[n])  # by token id: near-ties may swap rank between batch compositions
        best = scores[keep] - scores[keep].max()
        probs = np.round(np.exp(best) / np.exp(best).sum(), 4)  # rounding: see module docstring
        if probs.sum() <= 0:
            probs = np.ones(len(keep))
        return self._clean(self.vocab[ids[keep[int(rng.choice(len(keep), p=probs / probs.sum()))]]])

    @staticmethod
    def _clean(token: str) -> str:
        return token[1:] if token[:1] in ("\u0120", "\u2581") else token


TYPE = AugmenterType(
    "contextual", "replace words with a masked LM's predictions (batched)",
    WORD_PARAMS + (
        Param("model", str, REQUIRED, "masked LM: Hub id or local folder"),
        count("top_k", 20, "sample among this many best whole-word predictions"),
        count("batch_size", 32, "sentences per forward pass"),
        count("max_length", 128, "truncate sentences to this many tokens"),
        Param("device", str, "cpu", "torch device, e.g. cpu or cuda"),
    ),
    ContextualAugmenter, uses_torch=True, loads_models=True,
)
