"""Engine properties: order-independent seeded init, dtype handling, head classes, the verify command."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config, tiny_model
from hf_expand import AddLayers, WidenFFN, grow_checkpoint
from hf_expand.architectures import describe
from hf_expand.cli import main
from hf_expand.execute import execute


def _run(plan, state, seed, reverse=False):
    steps = list(reversed(plan.steps)) if reverse else plan.steps
    plan = type(plan)(**{**plan.__dict__, "steps": steps})
    return dict(execute(plan, state.__getitem__, seed))


@pytest.mark.parametrize("init", ["zero", "split"])
def test_init_is_seeded_per_tensor_not_by_order(init):
    model = tiny_model("llama")
    plan = WidenFFN(factor=2, init=init).plan(model.config, describe(model.config, type(model)))
    state = model.state_dict()
    forward, backward = _run(plan, state, seed=5), _run(plan, state, seed=5, reverse=True)
    assert forward.keys() == backward.keys()
    assert all(torch.equal(forward[k], backward[k]) for k in forward)
    other = _run(plan, state, seed=6)
    name = "model.layers.0.mlp.gate_proj.weight"
    assert not torch.equal(forward[name], other[name])
    # Old units keep their indices and values (zero mode touches no old value).
    if init == "zero":
        assert torch.equal(forward[name][:88], state[name])
        assert torch.count_nonzero(forward["model.layers.0.mlp.down_proj.weight"][:, 88:]) == 0


def test_bfloat16_checkpoint_stays_bfloat16(tmp_path):
    model = tiny_model("qwen2").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "base")
    report = grow_checkpoint(str(tmp_path / "base"), tmp_path / "out", [WidenFFN(factor=2, init="split"), AddLayers(count=1)])
    assert report.tolerance == 5e-2
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert report.reloaded_max_abs_diff <= report.tolerance
    record = json.loads((tmp_path / "out" / "hf_expand_growth.json").read_text())
    assert record["dtype"] == "bfloat16" and record["seed"] == 0


@pytest.mark.parametrize("family,head", [("bert", "AutoModelForSequenceClassification"),
                                         ("llama", "AutoModelForSequenceClassification"),
                                         ("roberta", "AutoModel")])
def test_head_class_comes_from_config(family, head, tmp_path):
    import transformers

    torch.manual_seed(0)
    config = tiny_config(family)
    config.num_labels = 3
    model = getattr(transformers, head).from_config(config).eval()
    model.save_pretrained(tmp_path / "base")
    grow_checkpoint(str(tmp_path / "base"), tmp_path / "out", [WidenFFN(factor=1.5), AddLayers(count=1)])
    grown = getattr(transformers, head).from_pretrained(tmp_path / "out").eval()
    assert type(grown) is type(model)
    ids = torch.randint(3, 99, (2, 9))
    with torch.no_grad():
        a, b = model(input_ids=ids)[0], grown(input_ids=ids)[0]
    assert a.shape == b.shape and (a - b).abs().max() <= 1e-4


def test_verify_command(tiny_checkpoints, tmp_path, capsys):
    base = tiny_checkpoints("gpt_neox")
    out = tmp_path / "grown"
    assert main(["grow", str(base), "--out", str(out), "--add-layers", "2", "--placement", "bottom", "-q"]) == 0
    capsys.readouterr()
    assert main(["verify", str(base), str(out)]) == 0
    assert "within tolerance" in capsys.readouterr().out
    other = tmp_path / "other"
    tiny_model("gpt_neox", seed=1).save_pretrained(other)
    capsys.readouterr()
    assert main(["verify", str(base), str(other)]) == 1
    assert "ABOVE tolerance" in capsys.readouterr().out


def test_ffn_size_leaves_unused_ffn_fields_alone():
    from transformers import AutoModelForCausalLM

    config = tiny_config("qwen2_moe")
    config.mlp_only_layers = []  # no dense layer: intermediate_size is used by no tensor
    config.intermediate_size = 37
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    from hf_expand import grow_model

    grown, report = grow_model(model, [WidenFFN(size=132)])
    assert grown.config.moe_intermediate_size == 132
    assert grown.config.shared_expert_intermediate_size == 132  # same ratio (88 -> 132)
    assert grown.config.intermediate_size == 37
    assert report.operations[0].max_abs_diff <= 1e-5
