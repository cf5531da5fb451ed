"""The parameter counts a streamed grow reports are the stock model's (a tied head counted once): running the
base on meta parameters unties its head, and the count taken after that counted the head twice."""

from __future__ import annotations

from transformers import AutoModelForCausalLM

from conftest import load_stock
from hf_expand import AddLayers, grow_checkpoint
from matrix import tiny_config, tiny_tokenizer


def test_streamed_counts_match_stock_num_parameters(tmp_path):
    config = tiny_config("llama")
    config.tie_word_embeddings = True
    base = AutoModelForCausalLM.from_config(config)
    base.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    report = grow_checkpoint(str(tmp_path / "base"), tmp_path / "grown", [AddLayers(count=1)])
    op = report.operations[0]
    assert op.params_before == base.num_parameters()
    assert op.params_after == load_stock(tmp_path / "grown").num_parameters()
