"""Model cards written at grow and train time: front matter fields and the body's sections."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_expand import AddLayers, WidenFFN, grow_checkpoint
from hf_expand.card import build_card
from hf_expand.cli import main
from matrix import tiny_model, tiny_tokenizer

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
SECTIONS = ["## Growth", "## Preservation evidence", "## Augmentation", "## Training", "## How to load", "## Reproduce"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("card")
    tiny_model("llama").save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    (root / "base" / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    return root / "base"


def test_grow_writes_a_card_with_lineage_and_evidence(base, tmp_path):
    out = tmp_path / "grown"
    grow_checkpoint(str(base), out, [WidenFFN(factor=1.5), AddLayers(count=1)], command="hf-expand grow x", progress=False)
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert {"hf-expand", "model-growth", "widen-ffn", "add-layers"} <= set(data["tags"])
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["license"] == "mit"  # inherited from the base card
    assert "base_model" not in data  # a local base has no Hub id
    text = card.text
    for section in SECTIONS:
        assert section in text, section
    assert "| widen_ffn |" in text and "| add_layers |" in text and "max |difference|" in text
    assert "LlamaForCausalLM.from_pretrained" in text or "AutoModelForCausalLM.from_pretrained" in text


def test_card_names_the_hub_parent(base, tmp_path):
    import json

    out = tmp_path / "grown"
    grow_checkpoint(str(base), out, [AddLayers(count=1)], progress=False)
    record = json.loads((out / "hf_expand_growth.json").read_text())
    record["parent_repo"] = "alice/grown-once"
    (out / "hf_expand_growth.json").write_text(json.dumps(record))
    data = build_card(out, "bob/grown-twice").data.to_dict()
    assert data["base_model"] == "alice/grown-once" and data["base_model_relation"] == "finetune"


def test_train_card_has_training_and_evaluation(base, tmp_path, monkeypatch, capsys):
    import torch

    torch.set_num_threads(1)
    grown = tmp_path / "grown"
    grow_checkpoint(str(base), grown, [AddLayers(count=1)], progress=False)
    monkeypatch.setattr(sys, "argv", ["hf-expand", "train", str(grown), "--token", "hf_SECRET123"])
    assert main(["train", str(grown), "--data", str(SENTENCES), "--out", str(tmp_path / "t"), "--max-steps", "2",
                 "--eval-ratio", "0.2", "--token", "hf_SECRET123", "-q"]) == 0
    card = ModelCard.load(tmp_path / "t" / "README.md")
    assert "## Evaluation" in card.text and "perplexity" in card.text and "Policy `new`" in card.text
    assert card.data.to_dict().get("model-index") or card.data.eval_results
    for f in (tmp_path / "t").rglob("*"):
        if f.is_file():
            assert b"hf_SECRET123" not in f.read_bytes(), f


def test_card_carries_the_augmentation_summary(base, tmp_path):
    import torch

    torch.set_num_threads(1)
    grown = tmp_path / "grown"
    grow_checkpoint(str(base), grown, [AddLayers(count=1)], progress=False)
    assert main(["augment", str(SENTENCES), "--out", str(tmp_path / "aug"), "--text-column", "text",
                 "--augment", "random_swap:p=0.2", "--copies", "1", "-q"]) == 0
    assert main(["train", str(grown), "--data", str(tmp_path / "aug"), "--out", str(tmp_path / "t"),
                 "--max-steps", "2", "-q"]) == 0
    text = ModelCard.load(tmp_path / "t" / "README.md").text
    assert "random_swap:max=10,min=1,p=0.2" in text and "rows in 48, rows out 96" in text


def test_card_body_is_the_jinja_template(base, tmp_path, monkeypatch):
    """The body comes from ``templates/model_card.md`` through ``ModelCard.from_template``: an edited template
    changes the card, and the shipped one leaves no Jinja syntax unrendered."""
    import hf_expand.card as card_module

    out = tmp_path / "grown"
    grow_checkpoint(str(base), out, [AddLayers(count=1)], progress=False)
    text = str(build_card(out))
    assert "{{" not in text and "{%" not in text and text.startswith("---\n")
    assert "\n\n\n" not in text  # the template's whitespace control leaves no empty runs
    custom = tmp_path / "card.md"
    custom.write_text(card_module.TEMPLATE.read_text().replace("## How to load", "## Loading it"))
    monkeypatch.setattr(card_module, "TEMPLATE", custom)
    edited = str(build_card(out))
    assert "## Loading it" in edited and "## How to load" not in edited
    assert edited.replace("## Loading it", "## How to load") == text
