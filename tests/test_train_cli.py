"""`hf-expand train` / `hf-expand evaluate` through the CLI: bad input is one line, exit 2, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hf_expand import AddLayers, grow_checkpoint
from hf_expand.cli import main
from matrix import tiny_classifier, tiny_model, tiny_tokenizer

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"


@pytest.fixture(scope="module")
def grown(tmp_path_factory, tiny_checkpoints) -> Path:
    root = tmp_path_factory.mktemp("train_cli")
    grow_checkpoint(str(tiny_checkpoints("llama")), root / "grown", [AddLayers(count=1)], progress=False)
    return root / "grown"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_cls")
    tiny_classifier("llama", num_labels=3).save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    grow_checkpoint(str(root / "base"), root / "grown", [AddLayers(count=1)], progress=False)
    return root / "grown"


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("hf-expand: error: "), err
    return err[0]


def test_train_cli_happy_path_and_evaluate(grown, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert main(["train", str(grown), "--data", str(SENTENCES), "--out", str(out), "--max-steps", "3", "-q"]) == 0
    stdout = capsys.readouterr().out
    assert "trained 3 steps" in stdout and f"wrote {out}" in stdout
    assert json.loads((out / "hf_expand_growth.json").read_text())["training"]["steps"] == 3
    assert main(["evaluate", str(out), "--data", str(SENTENCES), "-q"]) == 0
    assert "perplexity" in capsys.readouterr().out


BAD = {
    "missing_text_column": (["--text-column", "body"], "column 'body' not found"),
    "both_lengths": (["--max-steps", "2", "--epochs", "1"], "not allowed with argument"),
    "no_length": ([], "exactly one of --max-steps"),
    "bad_eval_ratio": (["--max-steps", "2", "--eval-ratio", "1.5"], "--eval-ratio must be in (0, 1)"),
    "missing_data": (["--max-steps", "2", "--data", "/nonexistent/x.csv"], "does not exist"),
}


def test_bad_table_is_not_empty():
    assert len(BAD) >= 5


@pytest.mark.parametrize("case", sorted(BAD))
def test_train_bad_input(case, grown, tmp_path, capsys):
    extra, message = BAD[case]
    argv = ["train", str(grown), "--data", str(SENTENCES), "--out", str(tmp_path / "o")]
    if "--data" in extra:
        argv = argv[:2] + argv[4:]
    if case in ("missing_text_column",):
        extra = extra + ["--max-steps", "2"]
    line = one_line_error(capsys, argv + extra)
    assert message in line, line
    assert not (tmp_path / "o").exists()


def test_existing_output_is_kept(grown, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    line = one_line_error(capsys, ["train", str(grown), "--data", str(SENTENCES), "--out", str(out), "--max-steps", "2"])
    assert "already exists" in line and "--resume" in line
    assert (out / "mine.txt").read_text() == "keep me"


def test_model_without_tokenizer(tmp_path, capsys):
    tiny_model("llama").save_pretrained(tmp_path / "m")
    line = one_line_error(capsys, ["train", str(tmp_path / "m"), "--data", str(SENTENCES), "--out", str(tmp_path / "o"),
                                   "--max-steps", "2", "--trainable", "all"])
    assert "has no tokenizer" in line
    assert not (tmp_path / "o").exists()


def test_labels_outside_num_labels(classifier, tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("text,label\nthe cat sat,0\nthe dog ran,7\n")
    line = one_line_error(capsys, ["train", str(classifier), "--data", str(data), "--out", str(tmp_path / "o"),
                                   "--label-column", "label", "--max-steps", "2", "-q"])
    assert "label 7 is outside the model's 3 labels" in line
    assert not (tmp_path / "o").exists()


def test_resume_into_other_configuration(grown, tmp_path, capsys):
    out = tmp_path / "r"
    base = ["train", str(grown), "--data", str(SENTENCES), "--out", str(out), "--max-steps", "2", "--save-every", "1", "-q"]
    assert main(base) == 0
    capsys.readouterr()
    line = one_line_error(capsys, base[:-1] + ["--batch-size", "4", "--resume"])
    assert "differs from the one in" in line and "batch_size" in line
    assert (out / "model.safetensors").is_file()  # nothing lost


def test_abbreviated_token_flag_is_refused(grown, tmp_path, capsys):
    """`--tok SECRET` must not be taken for --token (it would be recorded unmasked)."""
    line = one_line_error(capsys, ["train", str(grown), "--data", str(SENTENCES), "--out", str(tmp_path / "o"),
                                   "--max-steps", "1", "--tok", "hf_SECRET"])
    assert "unrecognized arguments" in line and not (tmp_path / "o").exists()


def test_out_equal_to_the_model_is_refused(grown, tmp_path, capsys):
    import shutil

    copy = tmp_path / "g"
    shutil.copytree(grown, copy)
    line = one_line_error(capsys, ["train", str(copy), "--data", str(SENTENCES), "--out", str(copy),
                                   "--max-steps", "1", "--overwrite"])
    assert "is MODEL or contains it" in line
    assert (copy / "model.safetensors").is_file()


def test_evaluate_classifier_needs_label_column(classifier, tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("text,label\nthe cat sat,0\nthe dog ran,1\n")
    line = one_line_error(capsys, ["evaluate", str(classifier), "--data", str(data), "-q"])
    assert "--label-column" in line


def test_added_labels_train_and_string_labels_name_a_fresh_head(tmp_path, capsys):
    """Training a classifier grown with new labels works (the base is skipped, not crashed on); a fresh head
    on a masked-LM checkpoint is named after string labels."""
    from hf_expand import AddLabels

    torch.set_num_threads(1)
    tiny_classifier("llama", num_labels=3).save_pretrained(tmp_path / "c")
    tiny_tokenizer().save_pretrained(tmp_path / "c")
    grow_checkpoint(str(tmp_path / "c"), tmp_path / "cg", [AddLabels(labels=("new_a",))], progress=False)
    data = tmp_path / "d.csv"
    data.write_text("text,label\nthe cat sat,0\nthe dog ran,3\nthe bird sang,1\nthe fish swam,3\n")
    assert main(["train", str(tmp_path / "cg"), "--data", str(data), "--label-column", "label", "--out",
                 str(tmp_path / "t"), "--max-steps", "2", "--eval-ratio", "0.5", "-q"]) == 0
    record = json.loads((tmp_path / "t" / "hf_expand_growth.json").read_text())
    assert "base_skipped" in record["training"]["metrics"]
    tiny_model("bert").save_pretrained(tmp_path / "b")
    tiny_tokenizer().save_pretrained(tmp_path / "b")
    words = tmp_path / "w.csv"
    words.write_text("text,label\nthe cat sat,pos\nthe dog ran,neg\nthe bird sang,pos\n")
    assert main(["train", str(tmp_path / "b"), "--data", str(words), "--label-column", "label", "--task",
                 "classification", "--trainable", "all", "--out", str(tmp_path / "s"), "--max-steps", "2", "-q"]) == 0
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["neg", "pos"]


def test_label_column_on_a_language_model_needs_task(grown, tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("text,label\nthe cat sat,0\nthe dog ran,1\n")
    line = one_line_error(capsys, ["train", str(grown), "--data", str(data), "--label-column", "label",
                                   "--out", str(tmp_path / "o"), "--max-steps", "1", "-q"])
    assert "--task classification" in line
