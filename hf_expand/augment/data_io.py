"""Load the data ``hf-expand augment`` reads and write what it produces."""

from __future__ import annotations

from pathlib import Path

from ..errors import HfExpandError

FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
FORMATS = ("arrow", "jsonl", "parquet")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def load_data(source: str, config: str | None = None, revision: str | None = None, streaming: bool = False):
    """A local csv/json/jsonl/parquet/txt file (-> ``DatasetDict`` with a ``train`` split), a ``save_to_disk``
    folder, or a Hub dataset id (``load_dataset`` semantics; ``config`` is its configuration name, ``revision`` a
    branch, tag or commit, both refused for local data). ``streaming``: the same as an ``IterableDataset`` /
    ``IterableDatasetDict``, read as it is used (nothing goes through the datasets cache)."""
    import datasets

    if streaming:
        return _stream(load_data, source, config, revision)

    path = Path(source)
    if (config is not None or revision is not None) and path.exists():
        flag = "--data-config" if config is not None else "--data-revision"
        raise HfExpandError(f"{flag} applies to Hub datasets; {source} is local data: drop the option")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            try:
                return datasets.load_from_disk(str(path))
            except Exception as exc:  # noqa: BLE001
                raise HfExpandError(f"cannot read the dataset folder {path}: {_first_line(exc)}") from None
        raise HfExpandError(f"{path} is a folder but not a datasets save_to_disk folder; give a "
                            f"{'/'.join(e[1:] for e in FILE_BUILDERS)} file or a save_to_disk folder")
    if path.is_file():
        builder = _file_builder(path)
        level = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity_error()  # datasets logs read failures before raising; we say it once
        try:
            return datasets.load_dataset(builder, data_files=str(path))
        except Exception as exc:  # noqa: BLE001
            if "corresponds to no data" in str(exc):
                raise HfExpandError(f"{path} has no rows; nothing to augment") from None
            raise HfExpandError(f"cannot read {path} as {builder}: {_first_line(exc)}") from None
        finally:
            datasets.logging.set_verbosity(level)
    check_source(source)
    try:
        return datasets.load_dataset(source, name=config, revision=revision)
    except Exception as exc:  # noqa: BLE001
        what = "".join([f" (config {config!r})" if config else "", f" at revision {revision!r}" if revision else ""])
        raise HfExpandError(f"cannot load dataset {source!r}{what} from the Hub: {_first_line(exc)}") from None


def _stream(load, source: str, config, revision):
    """``load_data(..., streaming=True)``: files and Hub ids through ``load_dataset(streaming=True)``; a
    ``save_to_disk`` folder through ``to_iterable_dataset`` (its arrow files are read in order, not copied)."""
    import datasets

    path = Path(source)
    if path.is_dir():
        data = load(source, config, revision)
        if isinstance(data, datasets.DatasetDict):
            return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in data.items()})
        return data.to_iterable_dataset()
    if path.is_file():
        builder = _file_builder(path)
        if config is not None or revision is not None:
            load(source, config, revision)  # raises the local-data message
        return datasets.load_dataset(builder, data_files=str(path), streaming=True)
    check_source(source)
    try:
        return datasets.load_dataset(source, name=config, revision=revision, streaming=True)
    except Exception as exc:  # noqa: BLE001
        what = "".join([f" (config {config!r})" if config else "", f" at revision {revision!r}" if revision else ""])
        raise HfExpandError(f"cannot stream dataset {source!r}{what} from the Hub: {_first_line(exc)}") from None


def save_stream(data, folder: Path, fmt: str, batch_size: int = 1000, progress: bool = True) -> dict[str, int]:
    """Write a streamed ``IterableDataset`` / ``IterableDatasetDict`` batch by batch, as it is read: one
    ``<split>.parquet`` (a row group per batch) or ``<split>.jsonl`` per split, the layout :func:`save_data`
    writes. Returns {split: rows}. Only one batch is held at a time."""
    import contextlib
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import IterableDataset
    from tqdm.auto import tqdm

    if fmt not in ("jsonl", "parquet"):
        raise HfExpandError(f"a streamed dataset is written as it is read, as jsonl or parquet; got --format {fmt}: "
                            f"use --format parquet (or drop --streaming)")
    splits = {"data": data} if isinstance(data, IterableDataset) else dict(data)
    rows = {}
    for name, ds in splits.items():
        if ds.features is None:  # a split passed through untouched from a source that declares no features
            ds = ds._resolve_features()
        target, writer, count = folder / f"{name}.{fmt}", None, 0
        bar = tqdm(desc=f"writing {name}", unit=" rows", disable=not progress)
        with open(target, "w", encoding="utf-8") if fmt == "jsonl" else contextlib.nullcontext() as handle:
            for batch in ds.iter(batch_size=batch_size):
                n = len(next(iter(batch.values()))) if batch else 0
                if fmt == "parquet":
                    table = pa.Table.from_pydict(ds.features.encode_batch(batch), schema=ds.features.arrow_schema)
                    if writer is None:
                        writer = pq.ParquetWriter(str(target), table.schema)
                    writer.write_table(table)
                else:
                    keys = list(batch)
                    for values in zip(*(batch[k] for k in keys)):
                        handle.write(json.dumps(dict(zip(keys, values)), ensure_ascii=False) + "\n")
                count += n
                bar.update(n)
        bar.close()
        if writer is not None:
            writer.close()
        elif fmt == "parquet":  # an empty split: an empty file with the schema, as to_parquet writes
            schema = ds.features.arrow_schema if ds.features is not None else pa.schema([])
            pq.write_table(schema.empty_table(), str(target))
        rows[name] = count
    return rows


def _file_builder(path: Path) -> str:
    """The ``load_dataset`` builder of a local data file, refusing unknown extensions and empty files."""
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise HfExpandError(f"cannot read {path}: unknown extension {path.suffix!r}; use one of {', '.join(FILE_BUILDERS)}")
    if path.stat().st_size == 0:
        raise HfExpandError(f"{path} is empty; nothing to augment")
    return builder


def check_source(source: str) -> None:
    """Refuse a source that names a local file or folder that does not exist (a Hub id is left to the Hub)."""
    if Path(source).exists():
        return
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or Path(source).suffix.lower() in FILE_BUILDERS:
        raise HfExpandError(f"{source} does not exist; give a local file, a save_to_disk folder or a Hub dataset id")


def save_data(data, folder: Path, fmt: str) -> list[Path]:
    """``save_to_disk`` (``arrow``), or one ``<split>.jsonl`` / ``<split>.parquet`` per split, into ``folder``."""
    from datasets import Dataset

    if fmt == "arrow":
        data.save_to_disk(str(folder))
        return [folder]
    splits = {"data": data} if isinstance(data, Dataset) else dict(data)
    written = []
    for name, ds in splits.items():
        target = folder / f"{name}.{fmt}"
        if fmt == "parquet":
            ds.to_parquet(str(target))
        else:
            ds.to_json(str(target), lines=True, force_ascii=False)
        written.append(target)
    return written
