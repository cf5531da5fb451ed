"""``hf-expand push DATA_FOLDER REPO``: an augmented dataset (what ``hf-expand augment --out`` wrote) goes up as
a dataset repo in the layout ``DatasetDict.push_to_hub`` writes (``data/<split>-0000i-of-0000n.parquet`` shards
and a card whose ``configs`` metadata names them, so ``load_dataset(REPO)`` reads it), in one commit; the card
lists the augmenters, seed, copies, row counts and source (from ``hf_expand_augmentation.json``).

The shards go up in the commit itself rather than through ``push_to_hub``'s pre-upload, so a failure leaves
the repo as it was, and hf-expand's tests can run it against their Hub server (which has no LFS endpoint)."""

from __future__ import annotations

import json
from pathlib import Path

from .augment.data_io import FILE_BUILDERS
from .errors import HfExpandError

AUGMENTATION_FILE = "hf_expand_augmentation.json"


def _load(folder: Path, fmt: str):
    from datasets import DatasetDict, load_dataset, load_from_disk

    if fmt == "arrow":
        data = load_from_disk(str(folder))
        return data if isinstance(data, DatasetDict) else DatasetDict({"train": data})
    files = sorted(folder.glob(f"*.{fmt}"))
    if not files:
        raise HfExpandError(f"{folder} has no .{fmt} files; push the folder hf-expand augment wrote")
    builder = FILE_BUILDERS[f".{fmt}"]
    return load_dataset(builder, data_files={p.stem if p.stem != "data" else "train": str(p) for p in files})


def card_text(info: dict, repo_id: str) -> str:
    """The card's body: what was augmented, how, and how many rows each split has."""
    rows = info.get("rows") or {}
    lines = [f"# {repo_id.split('/')[-1]}", "",
             f"Text augmented with hf-expand (nlpaug through `datasets.map`) from "
             f"`{info.get('source', 'unknown')}`" + (f" (config `{info['data_config']}`)" if info.get("data_config")
                                                    else "") + ".", "",
             "| setting | value |", "| --- | --- |",
             f"| augmenters | {'; '.join(f'`{a}`' for a in info.get('augmenters', []))} |",
             f"| seed | {info.get('seed')} |",
             f"| copies per row | {info.get('copies')} |"]
    lines += [f"| rows in `{name}` | {count:,} |" for name, count in rows.items()]
    lines += ["", "Rows keep `source_index` (the original row) and `is_augmented`; the output depends only on the "
              "data, the augmenters and the seed.", ""]
    if info.get("summary"):
        lines += ["Summary:", "", *[f"- {s}" for s in info["summary"]], ""]
    if info.get("command"):
        lines += ["Made with:", "", "```bash", info["command"], "```", ""]
    return "\n".join(lines)


MAX_SHARD_BYTES = 500 << 20  # push_to_hub's default shard size


def _shards(data, root: Path) -> dict[str, int]:
    """Write each split as parquet shards under ``root/data``; return {split: rows}."""
    import math

    (root / "data").mkdir(parents=True)
    rows = {}
    for split, ds in data.items():
        n = max(1, math.ceil((ds.data.nbytes or 1) / MAX_SHARD_BYTES))
        for i in range(n):
            ds.shard(n, i, contiguous=True).to_parquet(str(root / "data" / f"{split}-{i:05d}-of-{n:05d}.parquet"))
        rows[split] = len(ds)
    return rows


def push_dataset(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                 commit_message: str | None = None, create_pr: bool = False, token: str | None = None,
                 timeout: float | None = None) -> str:
    """Push an augmented dataset folder as dataset repo ``repo_id``; returns the commit URL."""
    import tempfile

    from . import checks
    from .hub import _hub_timeout, push_error, push_timeout

    folder = Path(folder)
    problem = checks.repo_id(repo_id)
    if problem:
        raise HfExpandError(problem)
    try:
        info = json.loads((folder / AUGMENTATION_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise HfExpandError(f"{folder / AUGMENTATION_FILE} is unreadable ({exc}); augment again") from None
    data = _load(folder, info.get("format", "arrow"))
    seconds = push_timeout(timeout)
    from huggingface_hub import CommitOperationAdd, DatasetCard, DatasetCardData, HfApi, get_token

    token = token or get_token()
    with tempfile.TemporaryDirectory() as tmp:
        rows = _shards(data, Path(tmp))
        info = {**info, "rows": rows}
        meta = DatasetCardData(tags=["hf-expand", "data-augmentation", "nlpaug"],
                               configs=[{"config_name": "default", "data_files": [
                                   {"split": split, "path": f"data/{split}-*"} for split in rows]}])
        card = DatasetCard.from_template(meta, template_str="---\n{{ card_data }}\n---\n\n" + card_text(info, repo_id))
        ops = [CommitOperationAdd("README.md", str(card).encode())]
        ops += [CommitOperationAdd(f"data/{p.name}", str(p)) for p in sorted((Path(tmp) / "data").iterdir())]
        api = HfApi(token=token)
        try:
            with _hub_timeout(seconds):
                api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
                if revision and revision != "main" and not create_pr:
                    api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
                commit = api.create_commit(repo_id, ops, repo_type="dataset", revision=revision, create_pr=create_pr,
                                           commit_message=commit_message or f"Upload {repo_id} with hf-expand")
        except Exception as exc:  # noqa: BLE001 - any Hub or network failure: one line, the token never in it
            raise push_error(exc, repo_id, token, seconds) from None
    return getattr(commit, "pr_url", None) or getattr(commit, "commit_url", None) or f"pushed dataset {repo_id}"
