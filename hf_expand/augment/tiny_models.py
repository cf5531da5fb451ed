"""Tiny random-weight models for exercising ``contextual`` and ``back_translation`` offline (tests and the
benchmark): the outputs are nonsense, the code paths and batching are real."""

from __future__ import annotations

from pathlib import Path


def save_tiny_masked_lm(tokenizer, out: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    BertForMaskedLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)


def save_tiny_translator(tokenizer, out: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, bos_token_id=start,
                        eos_token_id=end, decoder_start_token_id=start, forced_eos_token_id=None)
    BartForConditionalGeneration(config).save_pretrained(out)  # random: it rambles until max_length
    tokenizer.save_pretrained(out)
    return Path(out)
