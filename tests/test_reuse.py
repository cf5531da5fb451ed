"""When the certificate may take a grown block's output from its counterpart (hf_expand.reuse): every rule that
keeps a block running is exercised with a case that breaks it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AutoConfig

from hf_expand.reuse import _names_read, fingerprint, same_structure, same_value


def _llama_config(**kw):
    sizes = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=4, vocab_size=64)
    return AutoConfig.for_model("llama", **{**sizes, **kw})


def _layer(config, index):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return LlamaDecoderLayer(config, index)


def _differing(a, b):
    from hf_expand.reuse import _differing_config_fields

    return _differing_config_fields(a, b)


def test_llama_block_at_another_index_is_the_same_function():
    base, grown = _llama_config(), _llama_config(num_hidden_layers=6)
    differing = _differing(base, grown)
    assert "num_hidden_layers" in differing
    # llama reads layer_idx only in its cache update: position does not change the block's function
    assert same_structure(_layer(grown, 5), _layer(base, 1), differing)


def test_a_changed_attribute_keeps_the_block_running():
    base = _llama_config()
    a, b = _layer(base, 0), _layer(base, 0)
    b.self_attn.scaling = b.self_attn.scaling * 2
    assert not same_structure(a, b, frozenset())


def test_a_different_shape_or_class_keeps_the_block_running():
    base, wide = _llama_config(), _llama_config(intermediate_size=64)
    assert not same_structure(_layer(wide, 0), _layer(base, 0), _differing(base, wide))
    a = _layer(base, 0)
    b = copy.deepcopy(a)
    b.mlp.act_fn = nn.ReLU()
    assert not same_structure(a, b, frozenset())


def test_gpt2_inverse_layer_scaling_keeps_copies_running():
    """GPT-2 can divide attention by (layer_idx + 1): a copy moved to another index is another function."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    config = AutoConfig.for_model("gpt2", n_embd=32, n_head=4, n_layer=4, scale_attn_by_inverse_layer_idx=True)
    assert GPT2Block(config, 3).attn.scaling != GPT2Block(config, 1).attn.scaling  # folded into an attribute
    assert not same_structure(GPT2Block(config, 3), GPT2Block(config, 1), frozenset())


class _ReadsIndex(nn.Module):
    def __init__(self, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x) / (self.layer_idx + 1)


class _CacheOnly(nn.Module):
    def __init__(self, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.proj = nn.Linear(4, 4)

    def forward(self, x, past_key_values=None):
        if past_key_values is not None:
            x = past_key_values.update(x, x, self.layer_idx)[0]
        return self.proj(x)


def _scale_by_position(module, x):
    return x / (module.layer_idx + 1)


class _HelperReadsIndex(_CacheOnly):
    def forward(self, x, past_key_values=None):
        return _scale_by_position(self, super().forward(x, past_key_values))


class _ReadsDepth(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x) / self.config.num_hidden_layers


def test_code_reading_the_index_or_a_changed_config_field_keeps_the_block_running():
    assert "layer_idx" in _names_read(_ReadsIndex)
    assert not same_structure(_ReadsIndex(3), _ReadsIndex(1), frozenset())
    assert "layer_idx" not in _names_read(_CacheOnly)  # the cache statement is left out
    assert same_structure(_CacheOnly(3), _CacheOnly(1), frozenset())
    assert "layer_idx" in _names_read(_HelperReadsIndex)  # read by a function of the module the method calls
    assert not same_structure(_HelperReadsIndex(3), _HelperReadsIndex(1), frozenset())
    base, grown = _llama_config(), _llama_config(num_hidden_layers=6)
    assert not same_structure(_ReadsDepth(grown), _ReadsDepth(base), _differing(base, grown))
    assert same_structure(_ReadsDepth(base), _ReadsDepth(base), frozenset())


def test_buffers_are_compared_bit_for_bit():
    a, b = _CacheOnly(0), _CacheOnly(0)
    b.load_state_dict(a.state_dict())
    a.register_buffer("scale", torch.tensor([0.0]))
    b.register_buffer("scale", torch.tensor([-0.0]))  # equal as numbers, different bits
    assert not same_structure(a, b, frozenset())


@pytest.mark.parametrize("x,y,same", [
    (torch.ones(3), torch.ones(3), True),
    (torch.ones(3), torch.tensor([1.0, 1.0, 1.0 + 2**-20]), False),
    (torch.zeros(2), -torch.zeros(2), False),
    (torch.tensor([float("nan")]), torch.tensor([float("nan")]), True),  # the same bits
    (torch.ones(3), torch.ones(3, dtype=torch.float64), False),
    (torch.ones(1, 3), torch.ones(3), False),
    ((torch.ones(2), None, 3), (torch.ones(2), None, 3), True),
    ({"mask": torch.ones(2)}, {"mask": torch.ones(2)}, True),
    ({"mask": torch.ones(2)}, {"mask": None}, False),
    (object(), object(), False),  # something that cannot be compared never matches
])
def test_inputs_match_only_when_every_bit_does(x, y, same):
    assert (fingerprint(x) == fingerprint(y)) is same
    assert same_value(x, y) is same
