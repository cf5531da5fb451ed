"""What ``grow_model`` refuses, in one line that says what to do instead (issue 18): a peft model, a quantised
or dispatched model, something that is not a transformers model."""

from __future__ import annotations

import pytest
import torch

from conftest import load_stock
from hf_expand import AddLayers, HfExpandError, grow_model


@pytest.fixture()
def llama(tiny_checkpoints):
    return load_stock(tiny_checkpoints("llama"))


def test_peft_model_is_refused_with_the_way_out(llama):
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(llama, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(HfExpandError, match=r"peft PeftModel\w*: .*merge_and_unload\(\).*get_base_model\(\)"):
        grow_model(wrapped, [AddLayers(count=1)])
    grown, report = grow_model(wrapped.merge_and_unload(), [AddLayers(count=1)])  # the way out works
    assert report.max_abs_diff <= 1e-5


def test_quantised_model_is_refused(llama, monkeypatch):
    monkeypatch.setattr(llama.config, "quantization_config", {"quant_method": "bitsandbytes"}, raising=False)
    with pytest.raises(HfExpandError, match="is quantised: .* grow the unquantised checkpoint"):
        grow_model(llama, [AddLayers(count=1)])


@pytest.mark.parametrize("device_map", [{"model.embed_tokens": "cpu", "model.layers": "disk", "lm_head": "cpu"},
                                        {"model": 0, "lm_head": "cpu"}])
def test_dispatched_model_is_refused(llama, device_map):
    llama.hf_device_map = device_map
    with pytest.raises(HfExpandError, match="dispatched across devices or offloaded .* grow_checkpoint"):
        grow_model(llama, [AddLayers(count=1)])


def test_single_device_map_is_an_ordinary_model(llama):
    llama.hf_device_map = {"": "cpu"}
    _, report = grow_model(llama, [AddLayers(count=1)])
    assert report.max_abs_diff <= 1e-5


def test_plain_module_is_refused():
    with pytest.raises(HfExpandError, match="takes a transformers PreTrainedModel .* got Linear"):
        grow_model(torch.nn.Linear(2, 2), [AddLayers(count=1)])


def test_save_grown_then_train_new(tiny_checkpoints, tmp_path, one_thread):
    """An in-memory grow saved with save_grown carries its record and card: `train --trainable new` keeps
    every old value bit-identical and trains the new slices; the folder loads in stock transformers."""
    import json

    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from hf_expand import WidenFFN, save_grown
    from hf_expand.train.loop import TrainArgs, train
    from test_train import SENTENCES, new_masks

    src = tiny_checkpoints("llama")
    grown, report = grow_model(load_stock(src), [WidenFFN(factor=1.5), AddLayers(count=1)])
    out = save_grown(grown, report, tmp_path / "grown", tokenizer=AutoTokenizer.from_pretrained(src),
                     base_model="org/tiny-llama")
    record = json.loads((out / "hf_expand_growth.json").read_text())
    assert record["verification"]["saved_vs_in_memory_max_abs_diff"] == 0.0
    assert record["new_slices"] and record["base_model"] == "org/tiny-llama"
    card = (out / "README.md").read_text()
    assert "base_model: org/tiny-llama" in card and "widen_ffn" in card
    assert load_stock(out).config.num_hidden_layers == grown.config.num_hidden_layers

    train(TrainArgs(model=str(out), data=str(SENTENCES), out=str(tmp_path / "trained"), max_steps=4, lr=1e-2,
                    weight_decay=0.1, batch_size=8, log_every=0), progress=False)
    before, after = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "trained" / "model.safetensors"))
    masks = new_masks(out, before)
    assert any(m.any() for m in masks.values())
    for name, t in before.items():
        assert torch.equal(t[~masks[name]], after[name][~masks[name]]), name
        if masks[name].any():
            assert not torch.equal(t[masks[name]], after[name][masks[name]]), name


def test_save_grown_refuses_an_existing_folder(tiny_checkpoints, tmp_path):
    from hf_expand import save_grown

    grown, report = grow_model(load_stock(tiny_checkpoints("llama")), [AddLayers(count=1)])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(HfExpandError, match="exists"):
        save_grown(grown, report, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
