"""The contract: (family x operation) on tiny odd-sized models, reloaded from disk in stock transformers,
matches the base model's outputs, and every new slice can learn."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import FAMILY_CONFIGS, POST_NORM
from hf_expand import AddLayers, WidenFFN, grow_checkpoint
from hf_expand.grow import RECORD_FILE
from hf_expand.model_io import auto_class_for
from hf_expand.verify import make_probes, max_abs_diff, new_slice_gradients, outputs

CASES = {
    "widen_zero": lambda: [WidenFFN(factor=1.5)],
    "widen_split": lambda: [WidenFFN(factor=1.5, init="split")],
    "layers_interleave": lambda: [AddLayers(count=2)],
    "layers_top": lambda: [AddLayers(count=2, placement="top")],
    "both": lambda: [WidenFFN(factor=1.5), AddLayers(count=2)],
}
TABLE = [(family, case) for family in FAMILY_CONFIGS for case in CASES]


def test_table_is_complete():
    assert len(FAMILY_CONFIGS) == 18
    assert len(TABLE) == 18 * 5


def _load(path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return auto_class_for(config).from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("family,case", TABLE)
def test_growth_preserves_outputs(family, case, tiny_checkpoints, tmp_path):
    base_dir = tiny_checkpoints(family)
    out = tmp_path / "grown"
    report = grow_checkpoint(str(base_dir), out, CASES[case](), seed=3)

    base, grown = _load(base_dir), _load(out)
    assert type(grown) is type(base)
    probes = make_probes(base.config, seed=11)  # different probes from the ones growth used
    assert (probes.batches[0]["attention_mask"] == 0).any(), "probes must contain padding"
    diff = max_abs_diff(outputs(base, probes), outputs(grown, probes), probes)
    tol = 1e-4 if family in POST_NORM else 1e-5
    assert diff <= tol, f"{family}/{case}: max |base - grown| = {diff:.3g} > {tol}"

    # The model really grew, as planned.
    assert grown.num_parameters() > base.num_parameters()
    if "layers" in case or case == "both":
        assert grown.config.num_hidden_layers == base.config.num_hidden_layers + 2
        if getattr(base.config, "layer_types", None) is not None:
            assert len(grown.config.layer_types) == grown.config.num_hidden_layers
            assert set(grown.config.layer_types) == set(base.config.layer_types)
        if family == "qwen2_moe":  # base: layer 1 is dense; it must stay dense wherever it moved
            assert len(grown.config.mlp_only_layers) >= 1
            assert all(not hasattr(grown.model.layers[i].mlp, "experts") for i in grown.config.mlp_only_layers)
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["operations"] and record["new_slices"]
    assert record["verification"]["reloaded_max_abs_diff"] == pytest.approx(report.reloaded_max_abs_diff)
    _assert_new_slices_learn(grown, record["new_slices"], probes)


def _assert_new_slices_learn(model, new_slices, probes):
    """Every new slice gets a non-zero gradient within two backward passes.

    Output-side slices (zeroed columns, zeroed output projections of identity layers) get gradient on the
    first pass; the input side of a zero-initialised unit is reached on the second pass, once one SGD step
    has moved its output side off zero (a branch that outputs exactly zero for every input cannot pass
    gradient to its inputs on the very first step: see docs/DEVELOPING.md).
    """
    model = copy.deepcopy(model)
    first = new_slice_gradients(model, new_slices, probes)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-1.0)
    second = new_slice_gradients(model, new_slices, probes)
    dead = [(name, i) for name, norms in first.items() for i, g in enumerate(norms) if g == 0 and second[name][i] == 0]
    assert first, "no new slices recorded"
    assert not dead, f"new slices without gradient: {dead[:5]}"
