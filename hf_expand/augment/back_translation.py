"""``back_translation``: translate to a pivot language and back with two seq2seq models, batched.

Decoding is greedy, so the output depends on the text only (not on the seed): with ``copies > 1`` the copies
are identical, which the duplicate policy counts or drops. A translation that comes back empty leaves the
text unchanged; empty or whitespace-only texts are not translated. Inputs are cut at ``max_length`` tokens,
so the copy of a longer text covers only its beginning.
"""

from __future__ import annotations

from .contextual import check_max_length, load_pretrained
from .specs import REQUIRED, AugmenterType, Param, count


class BackTranslation:
    def __init__(self, p: dict, trust_remote_code: bool = False):
        from transformers import AutoModelForSeq2SeqLM

        self.p = p
        self.forward = load_pretrained(AutoModelForSeq2SeqLM, p["from_model"], p["device"], "translation model",
                                       trust_remote_code)
        self.backward = load_pretrained(AutoModelForSeq2SeqLM, p["to_model"], p["device"], "translation model",
                                        trust_remote_code)
        for _, model in (self.forward, self.backward):
            check_max_length(model, p["max_length"], "back_translation")

    def _translate(self, texts: list[str], tokenizer, model) -> list[str]:
        import torch

        out = []
        for start in range(0, len(texts), self.p["batch_size"]):
            chunk = texts[start:start + self.p["batch_size"]]
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=self.p["max_length"], return_tensors="pt")
            with torch.no_grad():
                ids = model.generate(
                    input_ids=enc["input_ids"].to(model.device), attention_mask=enc["attention_mask"].to(model.device),
                    max_new_tokens=self.p["max_length"], num_beams=1, do_sample=False,
                )
            out.extend(t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True))
        return out

    def augment(self, texts: list[str], seeds: list[int]) -> list[str]:
        todo = [i for i, t in enumerate(texts) if t.strip()]
        pivot = self._translate([texts[i] for i in todo], *self.forward)
        back = self._translate(pivot, *self.backward) if todo else []
        out = list(texts)
        for i, b in zip(todo, back):
            out[i] = b or texts[i]
        return out


TYPE = AugmenterType(
    "back_translation", "translate to a pivot language and back (two seq2seq models, batched, greedy)",
    (
        Param("from_model", str, REQUIRED, "source->pivot translation model: Hub id or local folder"),
        Param("to_model", str, REQUIRED, "pivot->source translation model: Hub id or local folder"),
        count("batch_size", 32, "sentences per generate call"),
        count("max_length", 128, "truncate inputs and outputs to this many tokens"),
        Param("device", str, "cpu", "torch device, e.g. cpu or cuda"),
    ),
    BackTranslation, uses_torch=True, loads_models=True,
)
