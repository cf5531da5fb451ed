"""Load the data ``hf-expand augment`` reads and write what it produces."""

from __future__ import annotations

from pathlib import Path

from ..errors import HfExpandError

FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
FORMATS = ("arrow", "jsonl", "parquet")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def load_data(source: str, config: str | None = None, revision: str | None = None):
    """A local csv/json/jsonl/parquet/txt file (-> ``DatasetDict`` with a ``train`` split), a ``save_to_disk``
    folder, or a Hub dataset id (``load_dataset`` semantics; ``config`` is its configuration name, ``revision`` a
    branch, tag or commit, both refused for local data)."""
    import datasets

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
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise HfExpandError(f"cannot read {path}: unknown extension {path.suffix!r}; "
                                f"use one of {', '.join(FILE_BUILDERS)}")
        if path.stat().st_size == 0:
            raise HfExpandError(f"{path} is empty; nothing to augment")
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
