"""Per-layer config lists and indices follow the blocks when layers are inserted."""

import torch

from conftest import tiny_model
from hf_expand import AddLayers, grow_model
from hf_expand.architectures import describe


def test_layer_types_follow_copied_blocks():
    model = tiny_model("gemma2")  # layer_types alternate sliding/full
    base_types = list(model.config.layer_types)
    op = AddLayers(count=2, placement=(0, 4))
    order = op.layer_order(3)
    assert order == [(True, 0), (False, 0), (False, 1), (False, 2), (True, 2)]
    grown, _ = grow_model(model, [op])
    assert grown.config.layer_types == [base_types[0], *base_types, base_types[2]]
    # layer_idx (KV cache slot) of every attention module is its new position
    assert [layer.self_attn.layer_idx for layer in grown.model.layers] == list(range(5))


def test_mlp_only_layers_are_renumbered():
    model = tiny_model("qwen2_moe")  # mlp_only_layers=[1]
    grown, _ = grow_model(model, [AddLayers(count=1, placement="bottom")])
    assert grown.config.mlp_only_layers == [2]
    grown, _ = grow_model(model, [AddLayers(placement=(2,))])  # a copy of layer 1 right after it
    layout = describe(grown.config, type(grown))
    dense = sorted({p.layer for p in layout.params.values() if p.layer is not None and ".experts." not in p.rel
                    and p.ffn_field == "intermediate_size"})
    assert dense == grown.config.mlp_only_layers == [1, 2]  # layer 1 and its copy


def test_generation_with_kv_cache_unchanged():
    model = tiny_model("llama")
    grown, _ = grow_model(model, [AddLayers(count=2)])
    ids = torch.tensor([[5, 17, 33, 8]])
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kw), grown.generate(ids, **kw))


def test_interleave_spreads_evenly():
    assert [j for j, (new, _) in enumerate(AddLayers(count=2).layer_order(6)) if new] == [3, 7]
    assert [j for j, (new, _) in enumerate(AddLayers(count=3).layer_order(3)) if new] == [1, 3, 5]
    assert [j for j, (new, _) in enumerate(AddLayers(count=2, placement="bottom").layer_order(3)) if new] == [0, 1]


def test_max_window_layers_threshold_follows_blocks():
    model = tiny_model("qwen2")  # max_window_layers=1: layer 0 full attention, layers 1-2 sliding
    grown, _ = grow_model(model, [AddLayers(count=1, placement="bottom")])  # a copy of layer 0 at 0
    assert grown.config.max_window_layers == 2
    assert grown.config.layer_types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
