"""The growth record, ``hf_expand_growth.json``: the one JSON file beside every model hf-expand writes (grow,
train, a recipe run, push). This module is the only place that names the file, reads it, writes it, and
knows its layout; everything else goes through it.

Layout (one flat JSON object; the sections below are groups of its keys, not nested objects, except
``training`` and ``evaluation``, which are objects under those keys)::

    {"schema_version": 1,                            # added by write_record
     "hf_expand_version", "created", "command", ...  # growth (written by grow)
     "operations", "verification", "new_slices", "modified", "seed", "tolerance", "probes", ...
     "source", "base_model", "parent_repo", "pushed_to", "license",   # lineage
     "training": {...},                              # written by train
     "evaluation": {...}}                            # written by a recipe's evaluate stage

* ``read_record(folder)``: the record beside a model, None when there is none; a damaged one, or one
  written by a newer hf-expand (``schema_version`` above ``SCHEMA_VERSION``), is one line naming the fix.
* ``write_record(folder, record)``: adds ``schema_version`` and replaces the file atomically.
* ``inherit_lineage(parent)``: the lineage keys a model made from a grown folder carries ("the folder was
  pushed, so that repo is the new model's parent").
* ``parent_repo(record)``: the card's ``base_model``.
* ``growth`` / ``lineage`` / ``training`` / ``evaluation``: typed views of the sections (plain dicts).

Records written before ``schema_version`` existed have none and are read as version 1.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Optional, TypedDict

from .errors import HfExpandError

RECORD_FILE = "hf_expand_growth.json"
SCHEMA_VERSION = 1  # bump when a key changes meaning or moves; readers refuse records newer than this
SCHEMA_KEY = "schema_version"

DEFAULT_FIX = ("restore it (from a backup, or from the repo the model was pushed to), or delete it to use the "
               "folder as a plain model without its growth record")


# ------------------------------------------------------------------ sections


class Growth(TypedDict, total=False):
    """Top-level keys written by ``grow`` (``GrowthReport.to_record`` + ``grow_checkpoint``)."""

    hf_expand_version: str
    created: str
    command: Optional[str]
    seed: int
    tolerance: float
    probes: str
    operations: list[dict[str, Any]]  # one per operation: op, params, summary, params_before/after, ...
    verification: dict[str, Any]  # max_abs_diff, reloaded_max_abs_diff, compared_with, function_preserving, ...
    new_slices: dict[str, list[dict]]  # tensor name -> the slices growth added (what --trainable new trains)
    modified: dict[str, list[dict]]
    versions: dict[str, str]
    auto_class: str
    dtype: str
    copied: list[str]


class Lineage(TypedDict, total=False):
    """Where the model comes from (top-level keys). ``parent_repo``: the repo its parent folder was pushed to;
    ``pushed_to``: the repo this folder itself was pushed to (set by push)."""

    source: Optional[str]  # the model it was made from, as public_source names it
    base_model: Optional[str]  # the Hub id the user named (or the Hub source)
    parent_repo: Optional[str]
    pushed_to: Optional[str]
    license: Optional[str]
    trained_from: Optional[str]  # written by train: the folder / id it was trained from


GROWTH_KEYS = tuple(Growth.__annotations__)
LINEAGE_KEYS = tuple(Lineage.__annotations__)
TRAINING = "training"  # the section train writes (policy, steps, hyperparameters, metrics, ...)
EVALUATION = "evaluation"  # the section a recipe's evaluate stage writes (dataset, metrics per model)


def growth(record: dict | None) -> Growth:
    """The growth keys of ``record`` (a new dict; missing keys are absent)."""
    return {k: record[k] for k in GROWTH_KEYS if k in (record or {})}  # type: ignore[return-value]


def lineage(record: dict | None) -> Lineage:
    """The lineage keys of ``record`` (a new dict; missing keys are absent)."""
    return {k: record[k] for k in LINEAGE_KEYS if k in (record or {})}  # type: ignore[return-value]


def training(record: dict | None) -> dict | None:
    """The ``training`` section, None when the model was not trained by hf-expand (or training did not finish)."""
    return (record or {}).get(TRAINING)


def evaluation(record: dict | None) -> dict | None:
    """The ``evaluation`` section of a recipe run, None when there is none."""
    return (record or {}).get(EVALUATION)


# ------------------------------------------------------------------ lineage rules


def inherit_lineage(parent: dict | None) -> Lineage:
    """The lineage keys a model made from a folder with record ``parent`` carries (grow or train of that
    folder): ``parent_repo`` = the repo the parent folder was pushed to, when it was; ``base_model`` = the
    parent's. ``pushed_to`` is never inherited: the new folder has not been pushed. Keys with nothing to say
    are absent, so ``record.update(inherit_lineage(parent))`` keeps what ``record`` already has."""
    parent = parent or {}
    out: Lineage = {}
    if parent.get("pushed_to"):
        out["parent_repo"] = parent["pushed_to"]
    if parent.get("base_model"):
        out["base_model"] = parent["base_model"]
    return out


def parent_repo(record: dict) -> str | None:
    """The card's ``base_model``: the repo the parent was pushed to, else the lineage the user gave, else a
    Hub id source. None when nothing is known (a local source without ``--base-model``)."""
    from .lineage import is_hub_id, is_repo_id

    for value in (record.get("parent_repo"), record.get("base_model"), record.get("source")):
        if value and is_repo_id(value) and is_hub_id(value):
            return value
    return None


# ------------------------------------------------------------------ read / write


def record_path(folder: str | Path) -> Path:
    return Path(folder) / RECORD_FILE


def read_record(folder: str | Path, fix_hint: str = DEFAULT_FIX) -> dict | None:
    """The record beside the model in ``folder``; None when there is none. A damaged one (not JSON, not an
    object) raises ``<path> is damaged (<why>); <fix_hint>``; one written by a newer hf-expand raises a line
    saying to upgrade."""
    from .jsonfile import read_object

    path = record_path(folder)
    if not path.is_file():
        return None
    record = read_object(path, fix_hint)
    version = record.get(SCHEMA_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise HfExpandError(f"{path} is damaged ({SCHEMA_KEY} {version!r} is not a positive whole number); {fix_hint}")
    if version > SCHEMA_VERSION:
        raise HfExpandError(f"{path} was written by a newer hf-expand (record schema {version}; this hf-expand reads "
                            f"up to {SCHEMA_VERSION}); upgrade hf-expand (pip install -U hf-expand)")
    return record


def record_text(record: dict) -> str:
    """The file's text for ``record``: ``schema_version`` first, indent 2, trailing newline (what
    ``write_record`` writes, for pushing the same bytes from memory)."""
    body = {SCHEMA_KEY: SCHEMA_VERSION, **{k: v for k, v in record.items() if k != SCHEMA_KEY}}
    return json.dumps(body, indent=2, default=str) + "\n"


def write_record(folder: str | Path, record: dict) -> Path:
    """Write ``record`` beside the model in ``folder`` (``record_text``), atomically: a temporary file in the
    same folder, then ``os.replace`` (a kill leaves the old record or the new one, never half of one)."""
    path = record_path(folder)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(record_text(record), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
