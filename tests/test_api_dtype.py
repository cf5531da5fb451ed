"""The Python API in the caller's world (issue 16): a model cast with ``.to(bfloat16/float16)`` grows without
false alarms on every family of the matrix; the caller's model is unchanged; the grown model keeps its dtype,
device and generation config."""

from __future__ import annotations

import pytest
import torch

from hf_expand import AddLayers, WidenFFN, grow_model
from tests.matrix import (FAMILY_CONFIGS, MORE_FAMILY_CONFIGS, more_operations, more_tiny_model,
                          more_unsupported_reason, tiny_model)

FAMILIES = sorted(FAMILY_CONFIGS)
MORE = sorted(MORE_FAMILY_CONFIGS)
DTYPES = [torch.bfloat16, torch.float16]


def test_families_are_listed():
    assert len(FAMILIES) >= 18 and len(MORE) >= 45


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_half_precision_model_grows_and_is_left_alone(family, dtype):
    _grows_and_leaves_the_caller_alone(tiny_model(family), dtype, [WidenFFN(factor=1.5), AddLayers(count=1)])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", MORE)
def test_half_precision_more_families(family, dtype):
    """The families beyond the full matrix, with widen_ffn and add_layers where the family takes them."""

    model = more_tiny_model(family)
    ops = [op for name in ("widen_ffn", "add_layers") if more_unsupported_reason(family, name) is None
           for op in more_operations(name, model.config, None)]
    assert ops, family
    _grows_and_leaves_the_caller_alone(model, dtype, ops)


def _grows_and_leaves_the_caller_alone(model, dtype, ops):
    model = model.to(dtype)
    model.train()  # the caller's mode must come back too
    generates = getattr(model, "generation_config", None) is not None  # encoders have none
    if generates:
        model.generation_config.max_new_tokens = 7
        model.generation_config.eos_token_id = [2, 5]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}

    grown, report = grow_model(model, ops)

    assert report.preserving and report.max_abs_diff <= 1e-4, report.max_abs_diff
    # the caller's model: same dtype, same bits, same buffers, same mode
    assert model.training
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    for k, v in model.named_buffers():
        assert v.dtype == buffers[k].dtype and torch.equal(v, buffers[k]), k
    # the grown model: the caller's dtype and device, generation config kept
    assert {p.dtype for p in grown.parameters()} == {dtype}
    assert {p.device.type for p in grown.parameters()} == {"cpu"}
    if generates:
        assert grown.generation_config.max_new_tokens == 7 and grown.generation_config.eos_token_id == [2, 5]


def test_rotary_buffer_keeps_the_base_rounding():
    """qwen3 cast to bf16 rounds the non-persistent inv_freq; a grown model rebuilt from the config would have
    a fresh fp32 one and differ by ~1e-4 before any growth (the false alarm of issue 16)."""
    model = tiny_model("qwen3").to(torch.bfloat16)
    name, base_inv = next((n, b) for n, b in model.named_buffers() if n.endswith("inv_freq"))
    grown, _ = grow_model(model, [AddLayers(count=1)])
    assert torch.equal(dict(grown.named_buffers())[name], base_inv)
