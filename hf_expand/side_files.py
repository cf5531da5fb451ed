"""Everything around the weights that a grown folder keeps.

A checkpoint is more than its weights: chat templates, processor and feature-extractor configs, a
sentence-transformers pipeline (``modules.json``, ``sentence_bert_config.json``, the pooling, dense and
normalize modules), training notes. Growth copies every such file; what it does not copy is what it writes
itself (weights, ``config.json``, ``generation_config.json``, the growth record, the card) and folders that
hold exported copies of the base's weights (``onnx/``, ``openvino/``), which would no longer match.

A sentence-transformers model stays one: its pipeline reads the transformer's hidden states, so an
operation that changes the hidden size is refused for it (the pooled embedding would change size).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import HfExpandError
from .record import RECORD_FILE

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".ot",
                   ".tflite", ".mlmodel")
WRITTEN_BY_GROWTH = frozenset({"config.json", "generation_config.json", RECORD_FILE, "README.md",
                               "model.safetensors.index.json", "pytorch_model.bin.index.json"})
ST_MODULES = "modules.json"


def _is_weight(path: Path) -> bool:
    return path.name.endswith(WEIGHT_SUFFIXES) or ".safetensors.index" in path.name or ".bin.index" in path.name


def sentence_transformer_modules(folder: Path) -> list[dict] | None:
    """The entries of ``modules.json`` when ``folder`` is a sentence-transformers model, else None."""
    path = Path(folder) / ST_MODULES
    if not path.is_file():
        return None
    try:
        modules = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HfExpandError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise HfExpandError(f"{path} is not a sentence-transformers module list; fix or remove it")
    return modules


def side_files(folder: Path) -> tuple[list[str], list[str]]:
    """``(relative paths to copy, notes on what is left out and why)`` for a source checkpoint folder."""
    folder = Path(folder)
    modules = sentence_transformer_modules(folder) or []
    pipeline_dirs = {str(m.get("path") or "").strip("/") for m in modules} - {""}
    copy, notes = [], []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.startswith("."):
            continue
        if entry.is_dir():
            if name in pipeline_dirs:  # a sentence-transformers module: its own weights (Dense) are its own
                copy.append(name)
            elif any(_is_weight(p) for p in entry.rglob("*") if p.is_file()):
                notes.append(f"{name}/ (holds weights exported from the base; export the grown model again)")
            else:
                copy.append(name)
        elif name not in WRITTEN_BY_GROWTH and not _is_weight(entry):
            copy.append(name)
    return copy, notes


def copy_side_files(folder: Path, dest: Path) -> tuple[list[str], list[str]]:
    """Copy :func:`side_files` of ``folder`` into ``dest``; returns ``(copied, notes)``."""
    copy, notes = side_files(folder)
    for rel in copy:
        src = Path(folder) / rel
        if src.is_dir():
            shutil.copytree(src, Path(dest) / rel, dirs_exist_ok=True)
        else:
            shutil.copy2(src, Path(dest) / rel)
    return copy, notes


def sentence_transformers_problem(folder: Path | None, hidden_before: int | None, hidden_after: int | None) -> str | None:
    """Why growth would break the sentence-transformers pipeline of ``folder``, or None."""
    if folder is None or not Path(folder).is_dir() or sentence_transformer_modules(folder) is None:
        return None
    if hidden_before is not None and hidden_after is not None and hidden_before != hidden_after:
        return (f"{folder} is a sentence-transformers model, whose embedding size is the hidden size "
                f"({hidden_before}); growing it to {hidden_after} would change every embedding. Grow the FFN, "
                f"depth or heads instead, or remove modules.json to grow the bare transformer")
    return None
