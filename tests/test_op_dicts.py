"""Operations round-trip as dicts (``to_dict`` / ``from_dict``), the form recipes use (issue 18)."""

from __future__ import annotations

import pytest
import yaml

from hf_expand import (AddExperts, AddHeads, AddLabels, AddLayers, AddTokens, DepthUpscale, HfExpandError, Upcycle, WidenFFN,
                       WidenHidden)
from hf_expand.ops import REGISTRY, from_dict
from hf_expand.recipe import operations

SAMPLES = [
    WidenFFN(factor=1.5), WidenFFN(size=96, init="split"), AddLayers(count=2), AddLayers(count=2, placement=(0, 3)),
    AddLayers(count=1, placement="top", stack="decoder"), DepthUpscale(trim=2), DepthUpscale(ranges="0:3,1:4"),
    AddLabels(("spam", "ham")), AddTokens(("<tool>", "<call>"), output_init="mean"), WidenHidden(factor=2, noise=False),
    AddHeads(count=2, kv="fixed"), Upcycle(experts=8), Upcycle(experts=4, top_k=1, family="qwen2_moe", layers=(1, 3),
                                                         route="shared", init="drop:r=0.5"),
    AddExperts(count=4), AddExperts(count=8, mode="duplicate"),
]


def test_every_operation_has_a_sample():
    assert {op.name for op in SAMPLES} == set(REGISTRY) and len(REGISTRY) >= 7


@pytest.mark.parametrize("op", SAMPLES, ids=repr)
def test_round_trip(op):
    d = op.to_dict()
    assert list(d) == [op.name]
    assert from_dict(d) == op
    assert type(op).from_dict(d[op.name]) == op
    # through YAML, and as a recipe's grow.operations entry
    text = yaml.safe_dump({"grow": {"operations": [d]}})
    assert operations(yaml.safe_load(text)) == [op]


def test_defaults_are_left_out():
    assert WidenFFN(factor=1.5).to_dict() == {"widen_ffn": {"factor": 1.5}}
    assert AddTokens(("<x>",)).to_dict() == {"add_tokens": {"tokens": ["<x>"]}}  # no tokenizer, no default init


@pytest.mark.parametrize("entry,words", [
    ({"widen_ffn": {"factr": 1.5}}, "operation.factr: unknown parameter of widen_ffn"),
    ({"grow_wider": {}}, "operation: unknown operation 'grow_wider'"),
    ({"widen_ffn": {"factor": 0.5}}, "operation: --widen-ffn factor must be greater than 1"),
    ({"widen_ffn": 1.5}, "operation.widen_ffn: expected a mapping of parameters"),
    ([1, 2], "operation: expected {operation: {parameters}}"),
])
def test_bad_dicts_are_one_line(entry, words):
    with pytest.raises(HfExpandError) as info:
        from_dict(entry)
    assert words in str(info.value) and "\n" not in str(info.value)
