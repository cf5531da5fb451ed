"""Partly-new tensors split into frozen old and trained new parameters (hf_expand.train.split, issue 17)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_expand.train.split import join, split

MASKS = {
    "rows at the end": lambda: _rows(6, 4, [4, 5]),
    "rows in the middle": lambda: _rows(6, 4, [1, 3]),
    "columns at the end": lambda: _cols(5, 6, [4, 5]),
    "rows and columns (widen_hidden)": lambda: _rows(6, 6, [4, 5]) | _cols(6, 6, [4, 5]),
}


def _rows(n, m, new):
    mask = torch.zeros(n, m, dtype=torch.bool)
    mask[new] = True
    return mask


def _cols(n, m, new):
    mask = torch.zeros(n, m, dtype=torch.bool)
    mask[:, new] = True
    return mask


@pytest.mark.parametrize("case", sorted(MASKS))
def test_split_linear_trains_only_new_entries_with_stock_adamw(case):
    assert MASKS
    torch.manual_seed(0)
    mask = MASKS[case]()
    layer = nn.Linear(mask.shape[1], mask.shape[0])
    before = layer.weight.detach().clone()
    trained = split(layer, {"weight": mask})
    assert trained == {"weight": "parametrizations.weight.original1"}
    assert torch.equal(layer.weight, before)  # joining gives the tensor back, bit for bit
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["bias", "parametrizations.weight.original1"]
    new_part = layer.parametrizations.weight.original1
    assert new_part.numel() == int(mask.sum())  # state exists for the new entries only

    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=0.1, weight_decay=0.5)
    x = torch.randn(8, mask.shape[1])
    for _ in range(3):
        layer(x).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    after = layer.weight.detach()
    assert torch.equal(after[~mask], before[~mask])  # old values bit-identical (decay and momentum included)
    assert (after[mask] != before[mask]).all()  # every new entry moved
    join(layer)
    assert not hasattr(layer, "parametrizations") and isinstance(layer.weight, nn.Parameter)
    assert torch.equal(layer.weight.detach(), after)


def test_tied_embeddings_split_once_and_are_tied_again():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", hidden_size=16, intermediate_size=24, num_attention_heads=2,
                                  num_key_value_heads=1, num_hidden_layers=1, vocab_size=20, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    mask = _rows(20, 16, [18, 19])
    before = model.lm_head.weight.detach().clone()
    split(model, {"model.embed_tokens.weight": mask})
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names.count("model.embed_tokens.parametrizations.weight.original1") == 1
    assert not any(n.startswith("lm_head.") for n in names)  # the same parts, counted once
    assert model.lm_head.parametrizations.weight.original1 is model.model.embed_tokens.parametrizations.weight.original1
    state = model.state_dict()  # plain names, whole tensors (training checkpoints look like the model)
    assert "model.embed_tokens.weight" in state and not any("parametrizations" in k for k in state)
    assert torch.equal(state["model.embed_tokens.weight"], before)
    changed = {k: v.clone() for k, v in state.items()}
    for key in ("model.embed_tokens.weight", "lm_head.weight"):  # tied: both names hold the tensor
        changed[key][19] += 1.0
    model.load_state_dict(changed)  # split again on load
    assert torch.equal(model.model.embed_tokens.parametrizations.weight.original1[1], before[19] + 1.0)
    model.load_state_dict(state)
    ids = torch.tensor([[1, 18, 19, 2]])
    model(input_ids=ids).logits.sum().backward()
    grad = model.model.embed_tokens.parametrizations.weight.original1.grad
    assert grad is not None and grad.shape == (2, 16)
    join(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight.detach(), before)
