"""Tokens and sizes (issue 18): ``--multiple-of N`` rounds every new FFN width up to a multiple of N, and the
grown model stays exact (new units start with zero output weights whatever their number); ``--special-tokens``
adds chat/tool markers that ``decode(skip_special_tokens=True)`` drops."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import load_stock
from hf_expand import HfExpandError, WidenFFN
from hf_expand.cli import main
from hf_expand.verify import make_probes, max_abs_diff, outputs


@pytest.mark.parametrize("family,field", [("llama", "intermediate_size"), ("qwen2_moe", "moe_intermediate_size")])
def test_ffn_rounded_to_a_multiple_of_128_is_exact(family, field, tiny_checkpoints, tmp_path, capsys):
    src = tiny_checkpoints(family)
    old = json.loads((src / "config.json").read_text())[field]
    out = tmp_path / "grown"
    assert main(["grow", str(src), "--out", str(out), "--widen-ffn", "1.5", "--multiple-of", "128", "-q"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config[field] % 128 == 0 and config[field] >= 1.5 * old and config[field] - 128 < 1.5 * old
    record = json.loads((out / "hf_expand_growth.json").read_text())
    assert record["operations"][0]["params"]["multiple_of"] == 128
    base, grown = load_stock(src), load_stock(out)
    probes = make_probes(base.config, seed=5)
    with torch.no_grad():
        assert max_abs_diff(outputs(base, probes), outputs(grown, probes), probes) <= 1e-5


def test_multiple_of_checks():
    with pytest.raises(HfExpandError, match="--multiple-of must be a whole number from 1 to 65536, got 0"):
        WidenFFN(factor=1.5, multiple_of=0)
    with pytest.raises(HfExpandError, match="got 1.5"):
        WidenFFN(factor=1.5, multiple_of=1.5)
    assert WidenFFN(size=100, multiple_of=64.0).multiple_of == 64


def test_multiple_of_alone_is_refused(tiny_checkpoints, tmp_path, capsys):
    assert main(["grow", str(tiny_checkpoints("llama")), "--out", str(tmp_path / "g"), "--add-layers", "1",
                 "--multiple-of", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hf-expand: error: --multiple-of applies to --widen-ffn F / --ffn-size N; add one or drop the flag"]
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("special", [True, False])
def test_special_tokens_are_dropped_by_skip_special_tokens(special, tiny_checkpoints, tmp_path):
    from transformers import AutoTokenizer

    src, out = tiny_checkpoints("llama"), tmp_path / "grown"
    flags = ["--special-tokens"] if special else []
    assert main(["grow", str(src), "--out", str(out), "--add-tokens", "<tool>,<call>", *flags, "-q"]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    tool = tok.convert_tokens_to_ids("<tool>")
    ids = tok("the <tool> and <call>", add_special_tokens=False)["input_ids"]
    assert tool in ids and tok.convert_tokens_to_ids("<call>") in ids  # one id each
    text = tok.decode(ids, skip_special_tokens=True)
    assert ("<tool>" in text) is not special and ("<call>" in text) is not special, text
    assert "<tool>" in tok.decode(ids)  # shown when special tokens are kept
    record = json.loads((out / "hf_expand_growth.json").read_text())
    assert record["operations"][0]["params"].get("special", False) is special
    assert record["verification"]["reloaded_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_vocabulary_padded_to_a_multiple_of_64_is_exact_on_old_tokens(family, tiny_checkpoints, tmp_path):
    from transformers import AutoTokenizer

    src, out = tiny_checkpoints(family), tmp_path / "grown"
    old_vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    assert main(["grow", str(src), "--out", str(out), "--add-tokens", "<tool>,<call>", "--pad-to-multiple-of", "64",
                 "-q"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] % 64 == 0 and config["vocab_size"] >= old_vocab + 2
    assert len(AutoTokenizer.from_pretrained(out)) == len(AutoTokenizer.from_pretrained(src)) + 2
    record = json.loads((out / "hf_expand_growth.json").read_text())
    assert record["operations"][0]["params"]["pad_to_multiple_of"] == 64
    base, grown = load_stock(src), load_stock(out)
    assert grown.get_input_embeddings().weight.shape[0] == config["vocab_size"]
    probes = make_probes(base.config, seed=9, vocab_limit=old_vocab)  # old tokens only
    with torch.no_grad():
        a, b = outputs(base, probes), outputs(grown, probes)
    worst = max(float((x - y[..., : x.shape[-1]]).abs().max()) for x, y in zip(a, b))  # old tokens' logits
    assert worst <= 1e-5, worst
