"""Multimodal checkpoints grow their text tower (issue 16): tiny Gemma3, Mistral3, Qwen2-VL and LLaVA wrappers,
FFN x1.5 + 2 text layers through the checkpoint path. Text-only outputs (the run's own verification) and
image+text outputs (checked here) equal the base's; vision tower and projector are byte-identical; the
folder loads with the stock wrapper class and keeps the processor files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageTextToText

from hf_expand import AddLayers, UnsupportedArchitecture, WidenFFN, WidenHidden, grow_checkpoint

WRAPPERS = ["gemma3", "mistral3", "qwen2_vl", "llava"]

TEXT = dict(hidden_size=64, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=120, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
def tiny(t):
    """A tiny wrapper config: text 64 wide, FFN 88, 3 layers; a 2-layer vision tower on 28x28 images."""
    if t == "gemma3":
        return AutoConfig.for_model("gemma3", text_config={**TEXT, "head_dim": 16, "sliding_window": 8},
            vision_config=dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14),
            mm_tokens_per_image=4, image_token_index=110, boi_token_index=108, eoi_token_index=109)
    if t == "mistral3":
        return AutoConfig.for_model("mistral3", text_config={**TEXT, "model_type": "mistral", "head_dim": 16},
            vision_config=dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14, head_dim=16),
            image_token_index=110, spatial_merge_size=1)
    if t == "llava":
        return AutoConfig.for_model("llava", text_config={**TEXT, "model_type": "llama"},
            vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32),
            image_token_index=110, image_seq_length=4)
    if t == "qwen2_vl":
        return AutoConfig.for_model("qwen2_vl", text_config={**TEXT, "model_type": "qwen2_vl_text", "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}},
            vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2),
            image_token_id=110, video_token_id=111, vision_start_token_id=108, vision_end_token_id=109)


def image_text_inputs(t, cfg):
    """Two rows of ids with a run of image tokens, and the pixels (and grid) the family expects."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (2, 12), generator=g)
    if t == "gemma3":
        n = cfg.mm_tokens_per_image; tok = cfg.image_token_index
        ids[:, 2:2 + n] = tok
        pix = torch.randn(2, 3, cfg.vision_config.image_size, cfg.vision_config.image_size, generator=g)
        return dict(input_ids=ids, pixel_values=pix, attention_mask=torch.ones_like(ids))
    if t == "llava":
        n = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
        ids[:, 2:2 + n] = cfg.image_token_index
        pix = torch.randn(2, 3, cfg.vision_config.image_size, cfg.vision_config.image_size, generator=g)
        return dict(input_ids=ids, pixel_values=pix, attention_mask=torch.ones_like(ids))
    if t == "mistral3":
        s = cfg.vision_config.image_size; p = cfg.vision_config.patch_size
        n = (s // p // cfg.spatial_merge_size) ** 2
        ids[:, 2:2 + n] = cfg.image_token_index
        pix = torch.randn(2, 3, s, s, generator=g)
        return dict(input_ids=ids, pixel_values=pix, attention_mask=torch.ones_like(ids), image_sizes=torch.tensor([[s, s]] * 2))
    if t == "qwen2_vl":
        v = cfg.vision_config; grid = torch.tensor([[1, 2, 2]] * 2)  # t, h, w patches
        n = int(grid[0].prod()) // v.spatial_merge_size ** 2
        ids[:, 2:2 + n] = cfg.image_token_id
        pix = torch.randn(int(grid.prod(-1).sum()), v.in_channels * v.temporal_patch_size * v.patch_size ** 2, generator=g)
        mm = (ids == cfg.image_token_id).long()
        return dict(input_ids=ids, pixel_values=pix, image_grid_thw=grid, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm)


def _weights(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_wrappers_are_listed():
    assert len(WRAPPERS) == 4


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm")
    done = {}

    def get(family):
        if family not in done:
            config = tiny(family)
            config.architectures = None
            torch.manual_seed(0)
            base = root / family
            AutoModelForImageTextToText.from_config(config).save_pretrained(base)
            (base / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "stand-in"}))
            (base / "chat_template.jinja").write_text("{{ messages }}")
            out = root / f"{family}-grown"
            report = grow_checkpoint(str(base), out, [WidenFFN(factor=1.5), AddLayers(count=2)])
            done[family] = (base, out, report)
        return done[family]
    return get


@pytest.mark.parametrize("family", WRAPPERS)
def test_text_tower_grows_and_the_rest_stays(family, grown):
    base, out, report = grown(family)
    assert report.reloaded_max_abs_diff <= report.tolerance  # text-only probes, in the run itself
    text = AutoConfig.from_pretrained(out).get_text_config()
    assert text.num_hidden_layers == 5 and text.intermediate_size == 132
    a, b = _weights(base), _weights(out)
    # stored names differ by family (Qwen2-VL stores the language model as model.layers.*): pick the vision side
    untouched = [k for k in a if any(w in k for w in ("vision", "visual", "projector"))]
    assert untouched, sorted(a)[:5]
    for k in untouched:  # vision tower and projector: the same bytes
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k].view(-1).view(torch.uint8),
                                                                                     b[k].view(-1).view(torch.uint8)), k
    for name in ("preprocessor_config.json", "chat_template.jinja"):
        assert (out / name).read_text() == (base / name).read_text()


@pytest.mark.parametrize("family", WRAPPERS)
def test_image_and_text_outputs_equal_the_base(family, grown):
    base, out, _ = grown(family)
    a = AutoModelForImageTextToText.from_pretrained(base).eval()
    b = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(a) is type(b) and type(b).__name__.endswith("ForConditionalGeneration")
    x = image_text_inputs(family, a.config)
    with torch.no_grad():
        la, lb = a(**x).logits, b(**x).logits
    assert la.shape == lb.shape
    assert float((la - lb).abs().max()) <= 1e-5


def test_widening_the_hidden_size_of_a_wrapper_is_refused(grown, tmp_path):
    base, _, _ = grown("llava")
    with pytest.raises(UnsupportedArchitecture, match="projector writes the text model's hidden size"):
        grow_checkpoint(str(base), tmp_path / "out", [WidenHidden(factor=2)])
    assert not (tmp_path / "out").exists()


def test_llama4_wrapper_grows_exactly_or_is_refused_in_one_line(tmp_path):
    """Llama4ForConditionalGeneration nests a whole causal LM (``language_model.model`` + ``language_model.lm_head``);
    its plans lift onto that. In transformers 5.24 the wrapper's own forward fails even on text (it reads
    ``image_outputs`` off the language model's output), and growth is only as good as its verification: the run
    is refused in one line naming that failure, and nothing is written. Where the stock forward works, growth
    must be exact."""
    text = {**TEXT, "intermediate_size": 40, "intermediate_size_mlp": 88, "head_dim": 24, "num_local_experts": 4,
            "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "no_rope_layers": [1, 1, 0],
            "attention_chunk_size": 16}
    cfg = AutoConfig.for_model("llama4", text_config=text, vision_config=dict(
        hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
        vision_output_dim=64, projector_input_dim=64, projector_output_dim=64, pixel_shuffle_ratio=0.5),
        image_token_index=110, boi_token_index=108, eoi_token_index=109)
    cfg.architectures = ["Llama4ForConditionalGeneration"]
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(cfg).eval()
    base, out = tmp_path / "base", tmp_path / "out"
    model.save_pretrained(base)
    try:
        model(input_ids=torch.randint(3, 100, (1, 6)))
        stock_forward_works = True
    except AttributeError:
        stock_forward_works = False
    ops = [WidenFFN(factor=1.5), AddLayers(count=2)]
    if not stock_forward_works:
        with pytest.raises(UnsupportedArchitecture, match=r"base model's own forward \(Llama4ForConditionalGeneration"):
            grow_checkpoint(str(base), out, ops)
        assert not out.exists()
        return
    report = grow_checkpoint(str(base), out, ops)
    assert report.reloaded_max_abs_diff <= report.tolerance
    assert type(AutoModelForImageTextToText.from_pretrained(out)).__name__ == "Llama4ForConditionalGeneration"
