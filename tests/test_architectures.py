"""Architecture data checked against real transformers models (names, shapes, tp plans)."""

from __future__ import annotations

import pytest

from conftest import FAMILY_CONFIGS, tiny_config
from hf_expand.architectures import describe, family_data, known_families, roles_from_tp_plan
from hf_expand.errors import UnsupportedArchitecture
from hf_expand.ops.widen_ffn import WidenFFN
from hf_expand.plan import Grow

FAMILIES = sorted(FAMILY_CONFIGS)


def test_every_data_file_is_tested():
    """Every data file's family is in the full matrix or among the families grown by test_more_families."""
    from matrix import MORE_FAMILY_CONFIGS

    assert FAMILIES and set(FAMILIES) <= set(known_families())
    assert set(known_families()) <= set(FAMILIES) | set(MORE_FAMILY_CONFIGS)


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_matches_real_model(family):
    config = tiny_config(family)
    layout = describe(config)  # raises if data names a module the model lacks
    assert layout.num_layers == 3
    ffn = [p for p in layout.params.values() if p.ffn_field]
    assert ffn, "no FFN tensors"
    for p in ffn:  # the FFN axis really has the FFN width (times the packing)
        if p.ffn_axis is not None:
            width = getattr(config, p.ffn_field) or 4 * config.hidden_size
            assert p.shape[p.ffn_axis] == p.parts * width, (p.name, p.shape)
    assert {p.role for p in ffn} == {"in", "out"}
    assert layout.residual_out, "identity layers need the residual-writing modules"
    # Every residual-writing module exists in some layer (qwen2_moe: dense down_proj only in mlp_only_layers).
    rels = [p.rel for p in layout.params.values() if p.layer is not None]
    for rel in layout.residual_out:
        assert any(r.startswith(rel + ".") or r == rel for r in rels), rel


@pytest.mark.parametrize("family", [f for f in FAMILIES if tiny_config(f).base_model_tp_plan])
def test_data_does_not_contradict_tp_plan(family):
    roles, packed = roles_from_tp_plan(tiny_config(family))
    data = family_data(family)
    for key, role in data.roles.items():
        assert roles.get(key, role) == role, key


def test_gpt2_conv1d_axes_are_transposed():
    layout = describe(tiny_config("gpt2"))
    c_fc = layout.params["transformer.h.0.mlp.c_fc.weight"]
    c_proj = layout.params["transformer.h.0.mlp.c_proj.weight"]
    assert c_fc.shape == (64, 88) and c_fc.ffn_axis == -1
    assert c_proj.shape == (88, 64) and c_proj.ffn_axis == -2


def test_moe_and_packed_layouts():
    layout = describe(tiny_config("mixtral"))
    gate_up = layout.params["model.layers.0.mlp.experts.gate_up_proj"]
    assert gate_up.shape == (4, 176, 64) and gate_up.parts == 2 and gate_up.ffn_axis == -2
    phi = describe(tiny_config("phi3")).params["model.layers.0.mlp.gate_up_proj.weight"]
    assert phi.parts == 2 and phi.role == "in"


def test_plan_without_weights():
    config = tiny_config("phi3")
    plan = WidenFFN(factor=2).plan(config, describe(config))
    step = next(s for s in plan.steps if s.target == "model.layers.1.mlp.gate_up_proj.weight")
    assert step.shape_before == (176, 64) and step.shape_after == (352, 64)
    assert step.actions == (Grow(axis=0, parts=2, old=88, new=88, init="normal", scope="model.layers.1.intermediate_size"),)
    assert plan.new_slices[step.target] == [{"axis": 0, "start": 88, "stop": 176}, {"axis": 0, "start": 264, "stop": 352}]
    assert plan.config_updates == {"intermediate_size": 176}


def test_unknown_family_error():
    with pytest.raises(UnsupportedArchitecture, match="no architecture data for model_type 'pegasus'"):
        family_data("pegasus")
