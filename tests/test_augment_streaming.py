"""``hf-expand augment --streaming`` / ``augment_dataset(IterableDataset)``: the same rows as a non-streaming run on
the same data and seed (row for row), written as they are read, counted without a second pass; and its bad inputs
(one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest

pytest.register_assert_rewrite("augment_fixtures")
from augment_fixtures import source_columns  # noqa: E402
from hf_expand.augment import augment_dataset, summarize  # noqa: E402
from hf_expand.cli import main  # noqa: E402

pytest_plugins = ["augment_fixtures"]
CHAIN = ["--augment", "synonym:p=0.4", "--augment", "random_swap:p=0.3"]


@pytest.fixture(autouse=True)
def _isolated(datasets_cache, nltk_data_dir):
    """datasets cache and WordNet in session tmp folders."""


def run_cli(capsys, *args):
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def jsonl_file(tmp_path):
    columns = source_columns()
    keys = list(columns)
    path = tmp_path / "data.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for values in zip(*columns.values()):
            f.write(json.dumps(dict(zip(keys, values))) + "\n")
    return path


@pytest.mark.parametrize("specs", [["synonym:p=0.4", "random_swap:p=0.3"], ["random_swap:p=0.01"]])
def test_api_stream_equals_dataset_row_for_row(specs):
    """An IterableDataset gives the rows a Dataset gives, in order, and the running counts equal summarize()
    (the light augmenter makes duplicates, so the drop policy is exercised on the stream too)."""
    from datasets import Dataset

    ds = Dataset.from_dict(source_columns())
    kwargs = dict(copies=3, seed=11, batch_size=7, duplicates="drop", progress=False)  # 7: batches cross rows
    eager = augment_dataset(ds, specs, "text", **kwargs)
    counts: dict = {}
    lazy = augment_dataset(ds.to_iterable_dataset(num_shards=3), specs, "text", counts=counts, **kwargs)
    rows = list(lazy)
    assert len(rows) == len(eager) > len(ds)
    assert rows == list(eager)
    assert sum(r["text"] != ds[r["source_index"]]["text"] for r in rows if r["is_augmented"]) > 0
    expected = summarize(ds, eager, "text", 3)
    assert counts["rows"] == expected, (counts["rows"], expected)
    if len(specs) == 1:
        assert counts["rows"].dropped > 0  # the duplicate policy ran on the stream too


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_cli_streaming_equals_non_streaming(fmt, capsys, tmp_path, jsonl_file):
    """The same command with and without --streaming writes the same rows (read back with load_dataset), the same
    summary counts, and a record saying it streamed."""
    from datasets import load_dataset

    common = [jsonl_file, "--text-column", "text", *CHAIN, "--copies", "2", "--seed", "5", "--format", fmt,
              "--batch-size", "10", "-q"]
    code, out_plain, err = run_cli(capsys, "augment", *common, "--out", tmp_path / "plain")
    assert code == 0, err
    code, out_stream, err = run_cli(capsys, "augment", *common, "--out", tmp_path / "stream", "--streaming")
    assert code == 0, err
    builder = "json" if fmt == "jsonl" else "parquet"
    plain = load_dataset(builder, data_files=str(tmp_path / "plain" / f"train.{fmt}"))["train"]
    stream = load_dataset(builder, data_files=str(tmp_path / "stream" / f"train.{fmt}"))["train"]
    assert len(plain) == 3 * len(source_columns()["text"])
    assert stream.features == plain.features
    assert stream.to_list() == plain.to_list()
    counts = [line.split("; ")[0].split(", rows out")[1] for line in out_plain.splitlines() if line.startswith("train:")]
    counts_stream = [line.split("; ")[0].split(", rows out")[1] for line in out_stream.splitlines()
                     if line.startswith("train:")]
    assert counts and counts == counts_stream
    record = json.loads((tmp_path / "stream" / "hf_expand_augmentation.json").read_text())
    assert record["streaming"] is True and record["format"] == fmt and record["rows"] == {"train": len(plain)}


def test_streaming_save_to_disk_dict_keeps_other_splits(capsys, tmp_path):
    """A save_to_disk DatasetDict streamed: the named split is augmented, the other copied untouched, as without
    --streaming; parquet is the default format under --streaming."""
    from datasets import Dataset, DatasetDict, load_dataset

    cols = source_columns()
    DatasetDict({"train": Dataset.from_dict(cols), "test": Dataset.from_dict(cols).select(range(5))}).save_to_disk(
        str(tmp_path / "src"))
    code, out, err = run_cli(capsys, "augment", tmp_path / "src", "--out", tmp_path / "out", "--text-column", "text",
                             "--streaming", "-q")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hf_expand_augmentation.json", "test.parquet",
                                                                     "train.parquet"]
    test = load_dataset("parquet", data_files=str(tmp_path / "out" / "test.parquet"))["train"]
    assert test.to_dict() == Dataset.from_dict(cols).select(range(5)).to_dict()
    train = load_dataset("parquet", data_files=str(tmp_path / "out" / "train.parquet"))["train"]
    assert len(train) == 2 * len(cols["text"]) and sum(train["is_augmented"]) == len(cols["text"])


STREAM_BAD = {
    "arrow_format": (["--format", "arrow"], "use --format parquet"),
    "num_proc": (["--num-proc", "2"], "--num-proc does not apply to --streaming"),
    "missing_column": (["--text-column", "body"], "text column 'body' not found"),
    "empty": ([], "is empty"),
}


def test_stream_bad_table_is_non_empty():
    assert len(STREAM_BAD) == 4


@pytest.mark.parametrize("case", sorted(STREAM_BAD))
def test_streaming_bad_input_writes_nothing(case, capsys, tmp_path, jsonl_file):
    args, part = STREAM_BAD[case]
    data = jsonl_file
    if case == "empty":
        data = tmp_path / "empty.jsonl"
        data.write_text("\n")
    if "--text-column" not in args:
        args = [*args, "--text-column", "text"]
    code, out, err = run_cli(capsys, "augment", data, "--out", tmp_path / "out", "--streaming", *args, "-q")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and part in lines[0], err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
