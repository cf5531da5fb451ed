"""SOLAR depth up-scaling: not function-preserving by design, so the contract is different from the
preservation matrix: every block is an exact copy of the base block its range names, the outputs'
difference is recorded (not enforced) and marked in the record and card, and the saved folder is proven
equal to the model built in memory. Every family, plus the bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import FAMILY_CONFIGS
from matrix import tiny_model
from hf_expand import AddLayers, DepthUpscale, HfExpandError, UnsupportedArchitecture, grow_checkpoint, grow_model, plan_growth
from hf_expand.grow import RECORD_FILE
from hf_expand.model_io import auto_class_for
from hf_expand.verify import make_probes, max_abs_diff, outputs
from test_cli import assert_nothing_written, run_cli

FAMILIES = list(FAMILY_CONFIGS)


def test_family_table_nonempty():
    assert len(FAMILIES) == 18


def _load(path):
    from transformers import AutoConfig

    return auto_class_for(AutoConfig.from_pretrained(path)).from_pretrained(path, dtype=torch.float32).eval()


def _layer_tensors(model):
    """{layer index: {relative name: tensor}} of the decoder/encoder blocks."""
    from hf_expand.architectures import describe

    layout = describe(model.config, type(model))
    state = model.state_dict()
    out: dict[int, dict[str, torch.Tensor]] = {}
    for i in range(layout.num_layers):
        for p in layout.layer_params(i):
            out.setdefault(i, {})[p.rel] = state[p.name]
    return out, {k: v for k, v in state.items() if not k.startswith(layout.layers_prefix + ".")}


@pytest.mark.parametrize("family", FAMILIES)
def test_depth_upscale_copies_ranges_and_records_the_difference(family, tiny_checkpoints, tmp_path):
    base_dir = tiny_checkpoints(family)
    out = tmp_path / "grown"
    report = grow_checkpoint(str(base_dir), out, [DepthUpscale(trim=1)], seed=3)  # 3 layers: 0,1 + 1,2
    base, grown = _load(base_dir), _load(out)
    assert type(grown) is type(base)
    assert grown.config.num_hidden_layers == 4
    base_layers, base_rest = _layer_tensors(base)
    grown_layers, grown_rest = _layer_tensors(grown)
    for j, src in enumerate([0, 1, 1, 2]):  # every block is an exact copy of the one its range names
        assert grown_layers[j].keys() == base_layers[src].keys()
        for rel, t in grown_layers[j].items():
            assert torch.equal(t, base_layers[src][rel]), (family, j, rel)
    for name, t in base_rest.items():  # everything outside the stack is unchanged
        assert torch.equal(grown_rest[name], t), name
    if getattr(base.config, "layer_types", None) is not None:
        assert grown.config.layer_types == [base.config.layer_types[s] for s in (0, 1, 1, 2)]

    record = json.loads((out / RECORD_FILE).read_text())
    v = record["verification"]
    assert v["function_preserving"] is False and report.preserving is False
    assert [d["op"] for d in v["recorded_differences"]] == ["depth_upscale"]
    recorded = v["recorded_differences"][0]["max_abs_diff"]
    probes = make_probes(base.config, seed=3)
    assert recorded == pytest.approx(max_abs_diff(outputs(base, probes), outputs(grown, probes), probes), rel=1e-3, abs=1e-6)
    assert recorded > 1e-4, "a repeated block must change the outputs (else this test proves nothing)"
    assert v["reloaded_max_abs_diff"] <= 1e-5 and v["compared_with"] == "the model right after depth_upscale"
    # the duplicate (second occurrence of block 1, position 2) is the new capacity
    new_layers = {re.search(r"\.(\d+)\.", k).group(1) for k in record["new_slices"]}
    assert new_layers == {"2"}
    card = (out / "README.md").read_text()
    assert "Not function-preserving" in card and "(recorded, not preserving)" in card
    assert "function-preserving growth" not in card and "outputs are unchanged" not in card
    assert card.startswith("---") and "\n# grown\n" in card  # titled after the folder, not its temporary name


def test_ops_after_depth_upscale_are_held_to_its_output():
    model = tiny_model("llama")
    grown, report = grow_model(model, [AddLayers(count=1), DepthUpscale(ranges=((0, 3), (1, 3)))])
    assert [o.op for o in report.operations] == ["depth_upscale", "add_layers"]  # ranges name the base's layers
    up, add = report.operations
    assert not up.preserving and up.max_abs_diff > 1e-4
    assert add.preserving and add.max_abs_diff <= 1e-5  # measured against depth_upscale's output, not the base
    assert report.max_abs_diff <= 1e-5 and report.reference == "the model right after depth_upscale"
    assert grown.config.num_hidden_layers == 6


def test_threshold_fields_follow_or_refuse():
    from matrix import tiny_config

    config = tiny_config("qwen2")  # max_window_layers=1: layer 0 is treated differently
    plan = plan_growth(config, [DepthUpscale(ranges=((0, 3), (1, 3)))])[0]  # blocks 0,1,2,1,2
    assert plan.new_config.max_window_layers == 1
    # with `layer_types` (transformers 5 always writes it), the per-layer list decides: copies of block 0 may
    # go anywhere, and each keeps block 0's attention type
    plan = plan_growth(config, [DepthUpscale(ranges=((0, 3), (0, 3)))])[0]
    assert plan.new_config.layer_types == config.layer_types * 2
    # a config without the list (older transformers): the threshold alone decides, so a copy of block 0
    # above other blocks is refused
    import copy

    from hf_expand.architectures import describe
    from hf_expand.ops.stacking import stack_config_updates

    layout, old = describe(config), copy.deepcopy(config)
    old.layer_types = None
    for ranges in (((0, 3), (0, 3)), ((1, 3), (0, 2))):
        order = DepthUpscale(ranges=ranges).layer_order(3)
        with pytest.raises(UnsupportedArchitecture, match="max_window_layers"):
            stack_config_updates(old, layout, order, "depth_upscale")


BAD = {
    "neither": ({}, "exactly one of trim"),
    "both": ({"trim": 1, "ranges": ((0, 1),)}, "exactly one of trim"),
    "trim_negative": ({"trim": -1}, ">= 0"),
    "trim_bool": ({"trim": True}, ">= 0"),
    "ranges_empty": ({"ranges": ()}, "pairs of layer indices"),
    "ranges_triple": ({"ranges": ((0, 1, 2),)}, "pairs of layer indices"),
    "ranges_reversed": ({"ranges": ((2, 1),)}, "empty or negative"),
    "ranges_text": ({"ranges": "0-2"}, "like 0:24,8:32"),
}


def test_bad_table_nonempty():
    assert len(BAD) == 8


@pytest.mark.parametrize("case", BAD)
def test_bad_parameters(case):
    kwargs, message = BAD[case]
    with pytest.raises(HfExpandError, match=message):
        DepthUpscale(**kwargs)


CLI_BAD = {
    "trim_all": (["--depth-upscale", "3"], "would not grow"),
    "trim_shrinks": (["--depth-upscale", "2"], "would not grow"),
    "ranges_shrink": (["--depth-upscale", "0:2"], "not more than the model's 3"),
    "ranges_too_many": (["--depth-upscale", ",".join(["0:3"] * 4000)], "more than 10000"),
    "range_past_end": (["--depth-upscale", "0:2,1:9"], "out of range"),
    "garbage": (["--depth-upscale", "x"], "like 0:24,8:32"),
    "superscript_digit": (["--depth-upscale", "³"], "like 0:24,8:32"),
}


def test_cli_bad_table_nonempty():
    assert len(CLI_BAD) == 7


@pytest.mark.parametrize("case", CLI_BAD)
def test_cli_bad_inputs(case, capsys, tiny_checkpoints, tmp_path):
    args, message = CLI_BAD[case]
    code, out, err = run_cli(capsys, "grow", tiny_checkpoints("llama"), "--out", tmp_path / "out", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert_nothing_written(tmp_path)


def test_cli_marks_the_difference(capsys, tiny_checkpoints, tmp_path):
    code, out, err = run_cli(capsys, "grow", tiny_checkpoints("llama"), "--out", tmp_path / "out",
                             "--depth-upscale", "0:2,1:3", "-q")
    assert code == 0, err
    assert "recorded, not enforced" in out and "3 -> 4 layers" in out
    code, out, _ = run_cli(capsys, "grow", tiny_checkpoints("llama"), "--depth-upscale", "1", "--dry-run")
    assert code == 0 and "not function-preserving" in out
