"""Write safetensors shards as tensors are produced, without holding a shard in memory.

The layout (names, dtypes, shapes, which shard) is known before any tensor is computed, so each shard's
header is written first and every tensor's bytes are appended as soon as it exists. The files are what
``save_pretrained`` writes for the same tensors: the safetensors format with ``{"format": "pt"}`` metadata,
``model.safetensors`` alone or ``model-0000k-of-0000n.safetensors`` plus ``model.safetensors.index.json``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from .errors import HfExpandError

DEFAULT_MAX_SHARD_SIZE = "5GB"

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "TIB": 2**40}


def dtype_name(dtype: torch.dtype) -> str:
    """safetensors' name for ``dtype`` (the inverse of ``checkpoint.STORED_DTYPES``)."""
    from .checkpoint import STORED_DTYPES

    return next(name for name, t in STORED_DTYPES.items() if t == dtype)


def parse_size(text: str | int) -> int:
    """``"5GB"``, ``"500MB"``, ``"2GiB"`` or a number of bytes -> bytes (decimal units, as transformers reads them)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", str(text).upper())
        if not m:
            raise HfExpandError(f"--max-shard-size {text!r} is not a size; use a number with a unit, like 5GB or 500MB")
        value = int(float(m.group(1)) * _UNITS[m.group(2) or "B"])
    if value < 1:
        raise HfExpandError(f"--max-shard-size {text!r} must be at least 1 byte; use a size like 5GB")
    return value


@dataclass
class OutTensor:
    """One tensor of the output: stored name, dtype, shape, the unit that produces it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    unit: str  # model tensor whose computation yields this stored tensor (MoE: one model tensor, many stored)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def assign_shards(tensors: list[OutTensor], max_shard_size: int) -> list[list[OutTensor]]:
    """Consecutive groups of whole units (a model tensor's stored tensors stay together), each at most
    ``max_shard_size`` bytes; a unit bigger than that gets a shard of its own. Greedy in write order, so the
    grouping can differ from ``save_pretrained``'s (which fills shards by its own order); both load the same."""
    units: list[list[OutTensor]] = []
    for t in tensors:
        if units and units[-1][0].unit == t.unit:
            units[-1].append(t)
        else:
            units.append([t])
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for unit in units:
        n = sum(t.nbytes for t in unit)
        if shards[-1] and size + n > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].extend(unit)
        size += n
    return shards


def shard_names(n: int) -> list[str]:
    return ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _header(tensors: list[OutTensor]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_shards(folder: Path, shards: list[list[OutTensor]],
                 produce: Callable[[str], Iterable[tuple[str, "torch.Tensor | Callable"]]],
                 total_parameters: int, progress: bool = False) -> list[str]:
    """Write ``shards`` into ``folder``. ``produce(unit)`` yields ``(stored name, tensor)`` for a unit's tensors in
    their layout order, or ``(stored name, writer)`` where ``writer(file)`` copies the bytes itself (a tensor
    that passes through unchanged). Returns the file names written (index included)."""
    names = shard_names(len(shards))
    total = sum(t.nbytes for shard in shards for t in shard)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="writing", disable=not progress, leave=False)
    weight_map = {}
    try:
        for shard, fname in zip(shards, names):
            expected = {t.name: t for t in shard}
            order = [t.name for t in shard]
            with open(folder / fname, "wb") as f:
                f.write(_header(shard))
                done: list[str] = []
                for unit in dict.fromkeys(t.unit for t in shard):
                    for name, value in produce(unit):
                        if name not in expected or order[len(done)] != name:
                            raise RuntimeError(f"writer: {name} came out of order (expected {order[len(done)]})")
                        t = expected[name]
                        if callable(value):
                            value(f)
                        else:
                            if value.dtype != t.dtype or tuple(value.shape) != t.shape:
                                raise RuntimeError(f"writer: {name} is {value.dtype} {tuple(value.shape)}, "
                                                   f"the layout says {t.dtype} {t.shape}")
                            value = value.contiguous().reshape(-1)
                            f.write(value.view(torch.uint8).numpy().data if value.numel() else b"")
                        done.append(name)
                        bar.update(t.nbytes)
                        weight_map[name] = fname
                if len(done) != len(order):
                    raise RuntimeError(f"writer: {fname} got {len(done)} of {len(order)} tensors")
    finally:
        bar.close()
    if len(names) > 1:
        index = {"metadata": {"total_parameters": total_parameters, "total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        names = names + ["model.safetensors.index.json"]
    return names


def copy_bytes(path: Path, offset: int, nbytes: int, chunk: int = 64 << 20) -> Callable:
    """A writer that copies ``nbytes`` at ``offset`` of ``path`` (a stored tensor, unchanged) into a file: in the
    kernel (``copy_file_range``: no user-space copy, a reflink on filesystems that share extents) when it can,
    by reading and writing otherwise."""
    import os

    def write(f):
        with open(path, "rb") as src:
            left, pos = nbytes, offset
            if hasattr(os, "copy_file_range"):
                f.flush()
                try:
                    while left:
                        n = os.copy_file_range(src.fileno(), f.fileno(), left, pos)
                        if n == 0:
                            break
                        left, pos = left - n, pos + n
                except OSError:  # another filesystem or kernel without support: copy by hand below
                    pass
                f.seek(0, os.SEEK_END)
            src.seek(pos)
            while left:
                data = src.read(min(chunk, left))
                if not data:
                    raise HfExpandError(f"{path} ended early while copying a tensor; it is truncated: re-download it")
                f.write(data)
                left -= len(data)
    return write
