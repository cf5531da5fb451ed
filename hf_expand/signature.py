"""A cheap fingerprint of local files: names, sizes and modification times (no reading of contents)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def path_signature(value) -> str:
    """Hex digest of what a local file or folder holds; "" when ``value`` is not an existing path (Hub ids)."""
    if not isinstance(value, str) or not Path(value).exists():
        return ""
    path = Path(value)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    entries = [f"{f.relative_to(path) if f != path else f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return hashlib.blake2b("|".join(entries).encode(), digest_size=8).hexdigest()
