"""Persistent buffers a checkpoint stores (DeepSeek-V3's trained selection bias ``e_score_correction_bias``) pass
through growth on both paths, and the streamed certificate reads them from the files: before session 12 the
streamed writer wrote the grown model's zeros and the certificate, running both models on their init buffers,
did not see it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_expand import WidenFFN, grow_checkpoint
from hf_expand.cli import main
from matrix import more_tiny_model, tiny_tokenizer

BIAS = "e_score_correction_bias"


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    """A tiny DeepSeek-V3 whose selection biases are trained-looking (random), saved."""
    model = more_tiny_model("deepseek_v3")
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith(BIAS):
                buffer.copy_(torch.randn_like(buffer, generator=None))
    folder = tmp_path_factory.mktemp("biased") / "base"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    assert any(k.endswith(BIAS) for k in load_file(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("streamed", [None, False], ids=["streamed", "in-memory"])
def test_selection_bias_passes_through_growth(biased, tmp_path, streamed):
    report = grow_checkpoint(str(biased), tmp_path / "wide", [WidenFFN(factor=2)], streamed=streamed)
    assert report.reloaded_max_abs_diff <= 1e-5
    base, grown = load_file(biased / "model.safetensors"), load_file(tmp_path / "wide" / "model.safetensors")
    keys = [k for k in base if k.endswith(BIAS)]
    assert keys and all(torch.equal(base[k], grown[k]) for k in keys)
    assert any(base[k].abs().sum() > 0 for k in keys)


def test_the_certificate_sees_a_changed_selection_bias(biased, tmp_path, capsys):
    """A grown folder whose stored bias differs from the base's: verify exits 1 (the certificate reads buffers)."""
    assert grow_checkpoint(str(biased), tmp_path / "wide", [WidenFFN(factor=2)]).reloaded_max_abs_diff <= 1e-5
    path = tmp_path / "wide" / "model.safetensors"
    state = load_file(path)
    key = next(k for k in state if k.endswith(BIAS))
    state[key] = state[key] + 5.0 * torch.arange(state[key].numel(), dtype=state[key].dtype)
    save_file(state, str(path), metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["verify", str(biased), str(tmp_path / "wide"), "-q"]) == 1
