"""Reading the small JSON files hf-expand writes beside models and runs (growth record, augmentation record,
training arguments): a damaged one is one line that names the file and says how to fix it."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import HfExpandError


def read_object(path: str | Path, fix: str) -> dict:
    """The JSON object in ``path``; anything else (unreadable, not JSON, not an object) raises one line:
    ``<path> is damaged (<why>); <fix>``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        problem = None if isinstance(data, dict) else f"it holds a JSON {type(data).__name__}, not an object"
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        data, problem = None, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if problem:
        raise HfExpandError(f"{path} is damaged ({problem}); {fix}")
    return data
