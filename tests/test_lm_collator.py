"""``hf-expand train`` run from a worker process (joblib, Ray, a ProcessPoolExecutor): the language-modeling
collator draws with its seed there too. transformers' own refused ("Worker process information is not available")
in any process not called MainProcess, outside a DataLoader worker."""

from __future__ import annotations

import multiprocessing

import torch

from hf_expand.train.data import collator
from matrix import tiny_tokenizer


def test_masks_draw_in_a_process_not_called_main(monkeypatch):
    tok = tiny_tokenizer()
    examples = [{"input_ids": list(range(5, 25))} for _ in range(4)]
    expected = collator("causal-lm", tok, seed=3)(examples)
    monkeypatch.setattr(multiprocessing.current_process(), "name", "SpawnProcess-1")
    got = collator("causal-lm", tok, seed=3)(examples)  # raised ValueError with transformers' collator
    assert torch.equal(got["input_ids"], expected["input_ids"]) and torch.equal(got["labels"], expected["labels"])
    tok.mask_token = tok.unk_token or tok.eos_token  # masked-LM draws its masks from the seeded generator
    masked = [collator("masked-lm", tok, seed=3)(examples) for _ in range(2)]
    assert torch.equal(masked[0]["labels"], masked[1]["labels"]) and (masked[0]["labels"] != -100).any()
