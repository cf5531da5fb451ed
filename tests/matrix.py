"""The test matrix: tiny models of every supported family (deliberately odd sizes), a tiny tokenizer,
and the growth operations each test case applies. ``scripts/support_table.py`` builds the README's
support table from this same module, so the table and the tests cannot disagree.

hidden 64, FFN 88, vocab 99, 4 heads / 2 kv heads, 3 layers, 80 positions, and heads of 24 (q width 96) in every
family whose config takes a head_dim: no two spaces coincide, so a swapped dimension cannot go unnoticed.
"""

from __future__ import annotations

import functools

import torch

COMMON = dict(hidden_size=64, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=99, max_position_embeddings=80,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)
HEAD_DIM = {"head_dim": 24}  # q width 96, apart from hidden 64 (families whose config takes a head_dim)

# Per-family overrides: the field names that family uses, and switches that exercise its quirks.
FAMILY_CONFIGS = {
    "llama": {**HEAD_DIM},
    "mistral": {**HEAD_DIM, "sliding_window": 8},
    "mixtral": {**HEAD_DIM, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2": {**HEAD_DIM, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
    "qwen2_moe": {**HEAD_DIM, "moe_intermediate_size": 88, "shared_expert_intermediate_size": 88, "num_experts": 4,
                  "num_experts_per_tok": 2, "mlp_only_layers": [1]},
    "qwen3": {**HEAD_DIM, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
    "gemma": {**HEAD_DIM},
    "gemma2": {**HEAD_DIM, "sliding_window": 8},
    "gemma3_text": {**HEAD_DIM, "sliding_window": 8, "sliding_window_pattern": 2},
    "phi3": {},
    "olmo2": {},
    "starcoder2": {},
    "gpt2": {"n_embd": 64, "n_inner": 88, "n_layer": 3, "n_head": 4, "n_positions": 80},
    "gpt_neox": {},
    "opt": {"ffn_dim": 88, "word_embed_proj_dim": 64},
    "bert": {},
    "roberta": {"pad_token_id": 1, "max_position_embeddings": 82},
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


def tiny_model(family: str, seed: int = 0, config=None):
    """A tiny LM of ``family`` (masked for encoders) from ``tiny_config`` (or ``config``), with random norms."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    torch.manual_seed(seed)
    cls = AutoModelForMaskedLM if family in ENCODERS else AutoModelForCausalLM
    model = cls.from_config(config if config is not None else tiny_config(family))
    # Random norms and biases, so that an identity trick that only works for default init would fail.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()




def tiny_classifier(family: str, num_labels: int = 3, seed: int = 0):
    """A tiny sequence classifier of ``family`` (random norms and biases, like ``tiny_model``)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.models.auto import modeling_auto

    torch.manual_seed(seed)
    config = tiny_config(family)
    config.num_labels = num_labels
    config.architectures = [modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[family]]
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


TOKENIZER_WORDS = ("the cat sat on mat an dog ran to park and it was big small red blue green tree house "
                   "model grow wide deep layer head token label text data train test good bad new old yes no "
                   "one two three four five six").split()


def tiny_tokenizer():
    """A WordPiece tokenizer with exactly ``COMMON["vocab_size"]`` (99) ids: specials at the ids the tiny
    configs use (pad 0, bos 1, eos 2), letters, ``##`` letters, then whole words. Any lowercase word
    splits into known pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"] + letters + [f"##{c}" for c in letters]
    vocab += TOKENIZER_WORDS[: COMMON["vocab_size"] - len(vocab)]
    assert len(vocab) == COMMON["vocab_size"], len(vocab)
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", unk_token="[UNK]")


NEW_TOKENS = ("hfexpandium", "zq")  # not in the tiny vocabulary; both split into letter pieces
NEW_LABELS = ("new_a", "new_b")


def _add_heads(config):
    from hf_expand import AddHeads

    if getattr(config, "num_attention_heads", None) is None:  # no attention (Mamba): planning refuses any count
        return AddHeads(2)
    valid = AddHeads(1).valid_counts(config)
    return AddHeads(valid[0] if valid else 2)


def _ops(*names):
    """Operations of a case, built for a config and tokenizer (``add_heads`` picks a count the config allows)."""
    from hf_expand import AddLabels, AddLayers, AddTokens, DepthUpscale, WidenFFN, WidenHidden

    makers = {
        "widen_ffn": lambda c, t: WidenFFN(factor=1.5),
        "widen_ffn_split": lambda c, t: WidenFFN(factor=1.5, init="split"),
        "add_layers": lambda c, t: AddLayers(count=2),
        "add_layers_top": lambda c, t: AddLayers(count=2, placement="top"),
        "depth_upscale": lambda c, t: DepthUpscale(trim=1),
        "widen_hidden": lambda c, t: WidenHidden(factor=2),
        "add_heads": lambda c, t: _add_heads(c),
        "add_labels": lambda c, t: AddLabels(NEW_LABELS),
        "add_tokens": lambda c, t: AddTokens(NEW_TOKENS, tokenizer=t),
    }
    return lambda config, tokenizer: [makers[n](config, tokenizer) for n in names]


# case -> (model kind, operations). "classifier" cases grow tiny_classifier(family), the others tiny_model(family).
CASES = {
    "widen_zero": ("lm", _ops("widen_ffn")),
    "widen_split": ("lm", _ops("widen_ffn_split")),
    "layers_interleave": ("lm", _ops("add_layers")),
    "layers_top": ("lm", _ops("add_layers_top")),
    "both": ("lm", _ops("widen_ffn", "add_layers")),
    "widen_hidden": ("lm", _ops("widen_hidden")),
    "add_heads": ("lm", _ops("add_heads")),
    "add_tokens": ("lm", _ops("add_tokens")),
    "add_labels": ("classifier", _ops("add_labels")),
    "all_axes": ("lm", _ops("widen_hidden", "widen_ffn", "add_layers", "add_tokens")),
}

# Operations that change the outputs by design (their difference is recorded, not enforced): tested by
# test_depth_upscale.py instead of the preservation contract.
NON_PRESERVING_CASES = {
    "depth_upscale": ("lm", _ops("depth_upscale")),
}
ALL_CASES = {**CASES, **NON_PRESERVING_CASES}

# One case per operation: the columns of the README support table.
OPERATION_CASES = {
    "widen_ffn": "widen_zero", "add_layers": "layers_interleave", "depth_upscale": "depth_upscale",
    "widen_hidden": "widen_hidden", "add_heads": "add_heads", "add_labels": "add_labels", "add_tokens": "add_tokens",
}


def case_config(family: str, case: str):
    from transformers.models.auto import modeling_auto

    config = tiny_config(family)
    if ALL_CASES[case][0] == "classifier":
        config.num_labels = 3
        config.architectures = [modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[family]]
    return config


# The cells growth refuses (head size implied by hidden/heads; OLMo2's q/k norms span all heads):
# test_preservation asserts unsupported_reason agrees with this set, so tests may use it without planning.
IMPLIED_HEAD_SIZE = {"gpt2", "gpt_neox", "opt", "bert", "roberta", "distilbert"}
EXPECTED_UNSUPPORTED = {(f, "add_heads") for f in IMPLIED_HEAD_SIZE | {"olmo2"}}


@functools.lru_cache(maxsize=None)
def unsupported_reason(family: str, case: str) -> str | None:
    """Why ``case`` cannot apply to ``family`` (the error growth raises), or None when it applies.

    Decided by planning on the tiny config (meta device: no weights), exactly as ``hf-expand grow
    --dry-run`` would."""
    from hf_expand import UnsupportedArchitecture, plan_growth

    config = case_config(family, case)
    try:
        plan_growth(config, ALL_CASES[case][1](config, tiny_tokenizer()))
    except UnsupportedArchitecture as exc:
        return str(exc)
    return None


# Families beyond the full matrix (issue 16): each is grown by every operation of the support table through
# the checkpoint path (tests/test_more_families.py); most have no data file and use an inferred layout.
# Sizes: hidden 64, FFN 88, 4 heads of 24 (q width 96) where the family takes head_dim, vocab 99, 80 positions:
# no two spaces coincide.
MORE_COMMON = dict(hidden_size=64, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=24, vocab_size=99, max_position_embeddings=80,
                   pad_token_id=0, bos_token_id=1, eos_token_id=2)
MORE_FAMILY_CONFIGS = {
    "granite": {}, "olmo": {}, "phi": {}, "cohere": {}, "cohere2": {}, "smollm3": {}, "exaone4": {},
    "ernie4_5": {}, "seed_oss": {}, "apertus": {}, "arcee": {}, "glm": {}, "glm4": {}, "stablelm": {},
    "olmoe": {"num_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 40},
    "minimax": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "granitemoe": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "hunyuan_v1_dense": {},
    "jamba": {"num_experts": 4, "num_experts_per_tok": 2, "mamba_d_state": 8, "mamba_dt_rank": 8,
              "use_mamba_kernels": False, "attn_layer_period": 2, "attn_layer_offset": 1,  # one attention block,
              "expert_layer_period": 2, "expert_layer_offset": 0},  # experts in blocks 0 and 2
    "gptj": {"n_embd": 64, "n_layer": 3, "n_head": 4, "n_inner": 88, "n_positions": 80, "rotary_dim": 8},
    "gpt_bigcode": {"n_embd": 64, "n_layer": 3, "n_head": 4, "n_inner": 88, "n_positions": 80},
    "falcon": {"ffn_hidden_size": 88, "num_kv_heads": 4},
    "bloom": {},
    "mpt": {"d_model": 64, "n_heads": 4, "n_layers": 3, "expansion_ratio": 2, "max_seq_len": 80},
    "xlm-roberta": {"pad_token_id": 1, "max_position_embeddings": 82},
    "electra": {"embedding_size": 64},
    "camembert": {"pad_token_id": 1, "max_position_embeddings": 82},
    "data2vec-text": {"pad_token_id": 1, "max_position_embeddings": 82},
    "nemotron": {}, "ministral": {}, "cwm": {}, "olmo3": {}, "flex_olmo": {}, "vaultgemma": {},
    "helium": {"head_dim": 16},  # its o_proj is hidden x hidden: heads x head_dim must equal hidden_size
    "doge": {},
    "codegen": {"n_embd": 64, "n_layer": 3, "n_head": 4, "n_inner": 88, "n_positions": 80, "rotary_dim": 8},
    # sparsemixer's router gets gradient only from tokens where more than the top expert passes its jitter mask
    "phimoe": {"num_local_experts": 4, "num_experts_per_tok": 2, "router_jitter_noise": 0.5},
    "granitemoeshared": {"num_local_experts": 4, "num_experts_per_tok": 2, "shared_intermediate_size": 40},
    "hunyuan_v1_moe": {"num_experts": 4, "moe_topk": 2},
    "qwen3_next": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 40,
                   "shared_expert_intermediate_size": 40,
                   "layer_types": ["linear_attention", "full_attention", "linear_attention"],
                   "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 8,
                   "linear_value_head_dim": 8},
    "ernie4_5_moe": {"moe_intermediate_size": 40, "moe_num_shared_experts": 1, "moe_num_experts": 4, "moe_k": 2,
                     "moe_layer_start_index": 1},
    **{f: {"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 40, "n_shared_experts": 1,
           "first_k_dense_replace": 1} for f in ("dots1", "glm4_moe")},
    # Llama-4: dense and MoE blocks interleaved, 3-D experts stored (in, out), a shared expert, chunked attention
    "llama4_text": {"num_local_experts": 4, "num_experts_per_tok": 1, "intermediate_size_mlp": 88,
                    "intermediate_size": 40, "interleave_moe_layer_step": 2, "no_rope_layers": [1, 1, 0],
                    "attention_chunk_size": 16},
    # gpt-oss: 3-D experts stored (in, out) with gate and up interleaved, per-head attention sinks, alternating windows
    "gpt_oss": {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8,
                "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
    # ModernBERT: fused Wqkv, GLU Wi, global attention every 2nd block, no attention norm in block 0
    "modernbert": {"global_attn_every_n_layers": 2, "local_attention": 8},
    # DeBERTa-v3 style: relative attention through the shared rel_embeddings, no absolute positions
    "deberta-v2": {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "norm_rel_ebd": "layer_norm",
                   "position_buckets": 16, "max_relative_positions": -1, "share_att_key": True,
                   "position_biased_input": False},
    # state-space and hybrid: LFM2's short-convolution + attention blocks (FFN width taken as stored), Mamba
    "lfm2": {"layer_types": ["conv", "full_attention", "conv"], "block_auto_adjust_ff_dim": False},
    "mamba": {"state_size": 8, "expand": 2, "conv_kernel": 4},
    # Falcon-H1: a Mamba-2 mixer beside the attention in every block
    "falcon_h1": {"mamba_d_ssm": 64, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_d_state": 8, "mamba_n_groups": 1,
                  "mamba_chunk_size": 16, "projectors_bias": False},
    # MLA attention: per-head no-rope + rope query parts, low-rank q and kv (queries and keys need as many heads)
    **{f: {"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 40, "n_shared_experts": 1,
           "first_k_dense_replace": 1, "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8,
           "qk_nope_head_dim": 16, "v_head_dim": 16, "n_group": 1, "topk_group": 1, "head_dim": 8,
           "num_key_value_heads": 4} for f in ("deepseek_v2", "deepseek_v3")},
    # encoder-decoders: two block stacks (T5 pre-norm with block-0 position bias; BART post-norm), each its own depth
    "t5": {"d_ff": 88, "num_decoder_layers": 3, "d_kv": 24, "relative_attention_num_buckets": 8},
    "bart": {"encoder_ffn_dim": 88, "decoder_ffn_dim": 88, "encoder_layers": 3, "decoder_layers": 3,
             "encoder_attention_heads": 4, "decoder_attention_heads": 4},
}
MORE_SEQ2SEQ = {"t5", "bart"}
MORE_ENCODERS = {"xlm-roberta", "electra", "camembert", "data2vec-text", "modernbert", "deberta-v2"}


def more_tiny_config(family: str, classifier: bool = False):
    """The tiny config of a family beyond the full matrix: a causal LM (masked LM for encoders), or a
    3-label sequence classifier."""
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto

    defaults = AutoConfig.for_model(family)
    cls = type(defaults)
    kw = {k: v for k, v in MORE_COMMON.items()
          if (hasattr(defaults, k) or k in getattr(defaults, "attribute_map", {}))
          and not isinstance(getattr(cls, k, None), property)}
    config = AutoConfig.for_model(family, **{**kw, **MORE_FAMILY_CONFIGS[family]})
    if classifier:
        mapping = modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
        config.num_labels = 3
    elif family in MORE_ENCODERS:
        mapping = modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    elif family in MORE_SEQ2SEQ:
        mapping = modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    else:
        mapping = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    config.architectures = [mapping[family]]
    return config


def more_tiny_model(family: str, seed: int = 0, classifier: bool = False):
    from hf_expand.model_io import auto_class_for

    torch.manual_seed(seed)
    config = more_tiny_config(family, classifier)
    model = auto_class_for(config).from_config(config)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


# the support table's columns, each applied by the same case as in the full matrix
MORE_OPERATIONS = tuple(OPERATION_CASES)


def has_classifier(family: str) -> bool:
    from transformers.models.auto import modeling_auto

    return family in modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES


def no_classifier_reason(family: str) -> str:
    """The table's reason for ``add_labels`` on a family transformers has no classifier for (the same for all)."""
    return "transformers has no sequence-classification class for this family, so there is no label head to grow"


def more_operations(op: str, config, tokenizer):
    return ALL_CASES[OPERATION_CASES[op]][1](config, tokenizer)


@functools.lru_cache(maxsize=None)  # planning builds meta models: the tests ask for each cell more than once
@functools.lru_cache(maxsize=None)
def more_unsupported_reason(family: str, op: str) -> str | None:
    """Why ``op`` cannot apply to the tiny model of a family beyond the full matrix (planning only), or None.
    Cached: the support table and test_more_families ask for every cell (~400 plannings, ~10 s)."""
    from hf_expand import UnsupportedArchitecture, plan_growth

    if op == "add_labels" and not has_classifier(family):
        return no_classifier_reason(family)
    config = more_tiny_config(family, classifier=op == "add_labels")
    try:
        plan_growth(config, more_operations(op, config, tiny_tokenizer()))
    except UnsupportedArchitecture as exc:
        return str(exc)
    return None
