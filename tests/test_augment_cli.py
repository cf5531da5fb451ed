"""``hf-expand augment`` and ``hf-expand setup-wordnet``: happy paths on csv / jsonl / save_to_disk input, and
every bad input (one stderr line, exit 2, no output folder created, an existing one left untouched)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.register_assert_rewrite("augment_fixtures")  # it is also a plugin (pytest_plugins below)
from augment_fixtures import sentences, source_columns  # noqa: E402
from hf_expand.augment import AUGMENTERS  # noqa: E402
from hf_expand.cli import main  # noqa: E402

# the session fixtures (registered once, so both test files share one WordNet folder and one set of models)
pytest_plugins = ["augment_fixtures"]
N = 48


@pytest.fixture(autouse=True)
def _isolated(datasets_cache, nltk_data_dir):
    """Every test here caches datasets and installs WordNet into session tmp folders."""


def run_cli(capsys, *args):
    capsys.readouterr()  # drop what fixtures printed
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write_csv(path: Path, columns: dict[str, list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values()))
    return path


def write_jsonl(path: Path, columns: dict[str, list]) -> Path:
    keys = list(columns)
    with open(path, "w", encoding="utf-8") as f:
        for values in zip(*columns.values()):
            f.write(json.dumps(dict(zip(keys, values))) + "\n")
    return path


@pytest.fixture()
def csv_file(tmp_path):
    return write_csv(tmp_path / "data.csv", source_columns())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_temp_siblings(parent: Path, name: str) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# ---------------------------------------------------------------------------------------------------------
# happy paths


def test_csv_to_arrow(capsys, csv_file, tmp_path):
    """csv in -> save_to_disk folder out with n x (1 + copies) rows; stdout has the rows in/out summary."""
    from datasets import DatasetDict, load_from_disk

    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "augment", csv_file, "--out", out_dir, "--text-column", "text",
                             "--augment", "random_swap", "--copies", "2", "--seed", "5", "-q")
    assert code == 0, err
    loaded = load_from_disk(str(out_dir))
    assert isinstance(loaded, DatasetDict) and list(loaded) == ["train"]
    train = loaded["train"]
    assert len(train) == N * 3
    assert train.column_names == ["text", "label", "id", "source_index", "is_augmented"]
    assert train["label"][:6] == [0, 0, 0, 1, 1, 1]
    assert "train: rows in 48, rows out 144 (96 augmented" in out
    assert "augmenters: random_swap:max=10,min=1,p=0.3; seed 5" in out
    assert f"wrote {out_dir} (arrow)" in out
    assert no_temp_siblings(tmp_path, "out")


def test_cli_matches_api(capsys, csv_file, tmp_path):
    """The CLI writes exactly what augment_dataset returns for the same data, specs and seed."""
    from datasets import load_dataset, load_from_disk

    from hf_expand.augment import augment_dataset

    code, _, err = run_cli(capsys, "augment", csv_file, "--out", tmp_path / "out", "--text-column", "text",
                           "--augment", "keyboard:p=0.5", "--augment", "random_swap", "--seed", "3", "-q")
    assert code == 0, err
    api = augment_dataset(load_dataset("csv", data_files=str(csv_file))["train"], ["keyboard:p=0.5", "random_swap"],
                          "text", seed=3, progress=False)
    assert load_from_disk(str(tmp_path / "out"))["train"].to_dict() == api.to_dict()


def test_jsonl_to_jsonl(capsys, tmp_path):
    """jsonl in, --format jsonl -> train.jsonl with one json object per output row."""
    data = write_jsonl(tmp_path / "data.jsonl", source_columns())
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "augment", data, "--out", out_dir, "--text-column", "text",
                             "--augment", "ocr", "--format", "jsonl", "-q")
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["hf_expand_augmentation.json", "train.jsonl"]
    lines = [json.loads(line) for line in (out_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == N * 2
    assert set(lines[0]) == {"text", "label", "id", "source_index", "is_augmented"}
    assert [r["source_index"] for r in lines[:4]] == [0, 0, 1, 1]
    assert [r["is_augmented"] for r in lines[:4]] == [False, True, False, True]
    assert lines[0]["text"] == sentences()[0]
    assert "(jsonl)" in out


def test_parquet_round_trip(capsys, tmp_path):
    """parquet in, --format parquet out: train.parquet reads back (as a file hf-expand takes again) with the rows
    an arrow output of the same run has."""
    from datasets import Dataset, load_dataset, load_from_disk

    src = tmp_path / "data.parquet"
    Dataset.from_dict(source_columns()).to_parquet(str(src))
    common = ["--text-column", "text", "--augment", "random_swap:p=0.5", "--seed", "4", "-q"]
    code, out, err = run_cli(capsys, "augment", src, "--out", tmp_path / "pq", "--format", "parquet", *common)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == ["hf_expand_augmentation.json", "train.parquet"]
    code, _, err = run_cli(capsys, "augment", src, "--out", tmp_path / "arrow", *common)
    assert code == 0, err
    back = load_dataset("parquet", data_files=str(tmp_path / "pq" / "train.parquet"))["train"]
    assert back.to_dict() == load_from_disk(str(tmp_path / "arrow"))["train"].to_dict()
    assert len(back) == N * 2
    # and hf-expand reads the parquet output as data again (train/evaluate take it as --data)
    from hf_expand.augment.data_io import load_data

    assert load_data(str(tmp_path / "pq" / "train.parquet"))["train"].to_dict() == back.to_dict()


def test_save_to_disk_dataset_input(capsys, tmp_path):
    """A save_to_disk folder of a plain Dataset works; --no-original and --drop-duplicates are honoured."""
    from datasets import Dataset, load_from_disk

    cols = {"text": ["hello", *sentences()[:9]], "n": list(range(10))}
    Dataset.from_dict(cols).save_to_disk(str(tmp_path / "src"))
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "augment", tmp_path / "src", "--out", out_dir, "--text-column", "text",
                             "--augment", "random_swap", "--copies", "2", "--no-original", "--drop-duplicates", "-q")
    assert code == 0, err
    ds = load_from_disk(str(out_dir))
    assert all(ds["is_augmented"])
    assert 0 not in ds["source_index"]  # "hello" cannot be swapped: both copies were duplicates, dropped
    assert len(ds) == 18
    assert "rows: rows in 10, rows out 18 (18 augmented" in out and "2 dropped" in out


def test_save_to_disk_dict_input_with_split(capsys, tmp_path):
    """A DatasetDict folder: the named split is augmented, the other one copied untouched."""
    from datasets import Dataset, DatasetDict, load_from_disk

    cols = source_columns()
    DatasetDict({
        "train": Dataset.from_dict({k: v[:8] for k, v in cols.items()}),
        "test": Dataset.from_dict({k: v[8:12] for k, v in cols.items()}),
    }).save_to_disk(str(tmp_path / "src"))
    code, out, err = run_cli(capsys, "augment", tmp_path / "src", "--out", tmp_path / "out", "--text-column", "text",
                             "--augment", "random_delete", "--split", "test", "-q")
    assert code == 0, err
    loaded = load_from_disk(str(tmp_path / "out"))
    assert len(loaded["test"]) == 8 and "source_index" in loaded["test"].column_names
    assert loaded["train"].to_dict() == {k: v[:8] for k, v in cols.items()}
    assert "test: rows in 4, rows out 8" in out


def test_overwrite_replaces(capsys, csv_file, tmp_path):
    """--overwrite replaces an existing output folder (old files gone, no backup left behind)."""
    from datasets import load_from_disk

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "old.txt").write_text("old")
    (out_dir / "hf_expand_augmentation.json").write_text("{}")  # an earlier output (others are refused)
    code, _, err = run_cli(capsys, "augment", csv_file, "--out", out_dir, "--text-column", "text",
                           "--augment", "random_swap", "--overwrite", "-q")
    assert code == 0, err
    assert not (out_dir / "old.txt").exists()
    assert len(load_from_disk(str(out_dir))["train"]) == N * 2
    assert no_temp_siblings(tmp_path, "out")


def test_default_augmenter_is_synonym(capsys, tmp_path):
    """Without --augment the synonym augmenter runs (WordNet installed offline on first use)."""
    data = write_csv(tmp_path / "d.csv", {"text": sentences()[:5]})
    code, out, err = run_cli(capsys, "augment", data, "--out", tmp_path / "out", "--text-column", "text",
                             "--format", "jsonl", "-q")
    assert code == 0, err
    assert "augmenters: synonym:" in out
    lines = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and any(r["is_augmented"] and r["text"] != sentences()[r["source_index"]] for r in lines)


def test_setup_wordnet(capsys, tmp_path):
    """setup-wordnet copies the database into the target's NLTK layout."""
    code, out, err = run_cli(capsys, "setup-wordnet", "--target", tmp_path / "nltk", "-q")
    assert code == 0, err
    assert (tmp_path / "nltk" / "corpora" / "wordnet" / "lexnames").is_file()
    assert str(tmp_path / "nltk") in out


def test_setup_wordnet_missing_source(capsys, tmp_path):
    """setup-wordnet from a folder without WordNet: one line naming the apt-get command, exit 2."""
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(capsys, "setup-wordnet", "--source", tmp_path / "empty", "--target", tmp_path / "nltk")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("hf-expand: error: ") and "apt-get install wordnet-base wordnet-sense-index" in err
    assert not (tmp_path / "nltk").exists()


# ---------------------------------------------------------------------------------------------------------
# bad inputs: exit 2, one line, nothing written


def _make_data(kind: str, tmp_path: Path) -> Path:
    if kind == "csv":
        return write_csv(tmp_path / "data.csv", source_columns())
    if kind == "header_only":
        path = tmp_path / "data.csv"
        path.write_text("text,label\n")
        return path
    if kind == "zero_bytes":
        path = tmp_path / "data.csv"
        path.write_bytes(b"")
        return path
    if kind == "missing":
        return tmp_path / "nope.csv"
    raise AssertionError(kind)


BAD_INPUTS = {
    # name: (data kind, extra args, expected message parts)
    "missing_text_column": ("csv", ["--text-column", "body"],
                            ["text column 'body' not found", "columns: text, label, id"]),
    "header_only_csv": ("header_only", ["--text-column", "text"], ["data.csv has no rows"]),
    "zero_byte_file": ("zero_bytes", ["--text-column", "text"], ["data.csv is empty"]),
    "unknown_augmenter": ("csv", ["--text-column", "text", "--augment", "wordswap"],
                          ["unknown augmenter 'wordswap'; valid: " + ", ".join(AUGMENTERS)]),
    "p_too_big": ("csv", ["--text-column", "text", "--augment", "synonym:p=2"], ["synonym:p must be a share in (0, 1]"]),
    "p_not_number": ("csv", ["--text-column", "text", "--augment", "synonym:p=abc"], ["synonym:p='abc' is not a valid float"]),
    "unknown_key": ("csv", ["--text-column", "text", "--augment", "keyboard:speed=3"],
                    ["augmenter 'keyboard' has no parameter 'speed'", "valid: p, word_p, max_chars, max_words"]),
    "bad_spec_syntax": ("csv", ["--text-column", "text", "--augment", "synonym:p"], ["bad augmenter spec"]),
    "missing_model": ("csv", ["--text-column", "text", "--augment", "contextual"], ["needs model="]),
    "missing_data": ("missing", ["--text-column", "text"], ["nope.csv does not exist"]),
    "zero_copies": ("csv", ["--text-column", "text", "--copies", "0"], ["--copies must be >= 1"]),
    "zero_workers": ("csv", ["--text-column", "text", "--num-proc", "0"], ["--num-proc must be >= 1"]),
    "copies_not_int": ("csv", ["--text-column", "text", "--copies", "two"], ["invalid int value"]),
    "missing_split": ("csv", ["--text-column", "text", "--split", "validation"], ["'validation' not found; splits: train"]),
    "bad_format": ("csv", ["--text-column", "text", "--format", "xml"], ["invalid choice"]),
}


def test_bad_inputs_table_is_complete():
    """The table covers the required bad inputs."""
    assert {"missing_text_column", "header_only_csv", "zero_byte_file", "unknown_augmenter", "p_too_big",
            "p_not_number", "unknown_key", "missing_data"} <= set(BAD_INPUTS)


def _check_error(code: int, err: str, parts: list[str]) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hf-expand: error: ")
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_writes_nothing(case, capsys, tmp_path):
    """Exit 2, one stderr line with the reason, and no output folder (nor temp folder) created."""
    kind, args, parts = BAD_INPUTS[case]
    data = _make_data(kind, tmp_path)
    code, out, err = run_cli(capsys, "augment", data, "--out", tmp_path / "out", *args, "-q")
    _check_error(code, err, parts)
    assert not (tmp_path / "out").exists()
    assert no_temp_siblings(tmp_path, "out")


@pytest.mark.parametrize("case", ["missing_text_column", "zero_byte_file", "unknown_augmenter", "missing_data",
                                  "header_only_csv", "p_too_big"])
def test_bad_input_keeps_existing_output(case, capsys, tmp_path):
    """With --overwrite, a failing run leaves the existing output folder exactly as it was."""
    kind, args, parts = BAD_INPUTS[case]
    data = _make_data(kind, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("precious")
    (out_dir / "hf_expand_augmentation.json").write_text("{}")  # an earlier output: --overwrite may replace it
    before = snapshot(out_dir)
    code, out, err = run_cli(capsys, "augment", data, "--out", out_dir, *args, "--overwrite", "-q")
    _check_error(code, err, parts)
    assert snapshot(out_dir) == before
    assert no_temp_siblings(tmp_path, "out")


def test_existing_output_without_overwrite(capsys, csv_file, tmp_path):
    """An existing --out folder without --overwrite is refused before reading data; it stays untouched."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("precious")
    before = snapshot(out_dir)
    code, out, err = run_cli(capsys, "augment", csv_file, "--out", out_dir, "--text-column", "text",
                             "--augment", "random_swap", "-q")
    _check_error(code, err, ["already exists", "--overwrite"])
    assert snapshot(out_dir) == before
    assert no_temp_siblings(tmp_path, "out")


def test_out_is_the_source_folder(capsys, tmp_path):
    """--out pointing at the input save_to_disk folder is refused even with --overwrite (the data survives)."""
    from datasets import Dataset, load_from_disk

    Dataset.from_dict({"text": sentences()[:4]}).save_to_disk(str(tmp_path / "src"))
    code, out, err = run_cli(capsys, "augment", tmp_path / "src", "--out", tmp_path / "src", "--text-column", "text",
                             "--augment", "random_swap", "--overwrite", "-q")
    _check_error(code, err, ["is the source"])
    assert load_from_disk(str(tmp_path / "src"))["text"] == sentences()[:4]


def test_split_on_a_single_dataset_is_refused(tmp_path, capsys):
    from datasets import Dataset

    Dataset.from_dict({"text": ["a b c", "d e f"]}).save_to_disk(str(tmp_path / "single"))
    code = main(["augment", str(tmp_path / "single"), "--out", str(tmp_path / "o"), "--text-column", "text",
                 "--augment", "random_swap", "--split", "validation", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no splits" in err[0]
    assert not (tmp_path / "o").exists()
