"""Read a checkpoint's tensors lazily, in the layout the model has in memory.

The safetensors files are memory-mapped and each tensor is read when it is asked for, so reading costs
about one tensor of memory. transformers 5 converts some checkpoints on load (Mixtral's per-expert ``w1``/
``w3`` become one fused 3-D ``gate_up_proj``, GPT-NeoX's ``embed_out`` becomes ``lm_head``); the reader
applies the same conversions, with transformers' own conversion objects, one model tensor at a time.
Tied parameters the files do not store are read from the parameter they are tied to.

Damaged checkpoints are refused up front, in one line, before anything is written: a shard the index
names but the folder lacks, a truncated or corrupt file, an index naming a tensor its shard does not hold.
"""

from __future__ import annotations

import json
import logging
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .errors import HfExpandError

log = logging.getLogger(__name__)

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"


def has_safetensors(folder: Path) -> bool:
    return (folder / SAFE_INDEX).is_file() or (folder / SAFE_SINGLE).is_file()


def _read_header(path: Path) -> dict:
    """The safetensors header of ``path`` (tensor name -> {dtype, shape, data_offsets}), checked against the
    file size: a truncated file is refused here, before any tensor is read."""
    fix = "re-download or re-save the model"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            n = int.from_bytes(raw, "little")
            if n <= 0 or 8 + n > size:
                raise ValueError(f"its header claims {n:,} bytes, the file has {size:,}")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise HfExpandError(f"{path} is missing; {fix}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise HfExpandError(f"{path} is truncated or corrupt ({exc}); {fix}") from None
    header.pop("__metadata__", None)
    header = {k: {**v, "start": 8 + n} for k, v in header.items()}
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + n + end > size:
        raise HfExpandError(f"{path} is truncated or corrupt (its tensors need {8 + n + end:,} bytes, the file has "
                            f"{size:,}); {fix}")
    return header


@dataclass
class DiskTensor:
    """One tensor as stored: file, dtype name (safetensors'), shape, byte size."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int = 0  # of the first byte in the file


def scan(folder: Path) -> dict[str, DiskTensor]:
    """Every stored tensor of the safetensors checkpoint in ``folder``, after checking the index against the
    shards (missing shard, tensor missing from its shard, truncated file: one-line errors)."""
    index_path = folder / SAFE_INDEX
    if index_path.is_file():
        from .jsonfile import read_object

        index = read_object(index_path, "re-download or re-save the model")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HfExpandError(f"{index_path} has no weight_map; re-download or re-save the model")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise HfExpandError(f"{index_path} names shard {missing[0]}, which is not in {folder}"
                                f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                                f"download the missing shard(s) again")
    else:
        files, weight_map = [SAFE_SINGLE], None
    tensors: dict[str, DiskTensor] = {}
    for name in files:
        path = folder / name
        for key, meta in _read_header(path).items():
            shape = tuple(int(s) for s in meta["shape"])
            start, stop = (int(o) for o in meta["data_offsets"])
            tensors[key] = DiskTensor(path, meta["dtype"], shape, stop - start, meta["start"] + start)
    if weight_map is not None:
        for key, name in weight_map.items():
            if key not in tensors or tensors[key].file.name != name:
                raise HfExpandError(f"{index_path} says {key} is in {name}, but that shard does not hold it; "
                                    f"the index and the shards are from different saves: re-download the model")
    return tensors


# safetensors' dtype names (the one table: shards.py writes the same names back)
STORED_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool}


class _Files:
    """Memory maps of the shards, one per file, opened on first use. Reading a tensor touches its pages, and
    ``madvise(MADV_DONTNEED)`` drops them from this process right after: the data stays in the page cache, but
    resident memory never accumulates the files (a 16 GB checkpoint would otherwise count 16 GB of mapped
    pages by the end of the run)."""

    def __init__(self):
        self.maps: dict[Path, object] = {}

    def _map(self, path: Path):
        import mmap

        mm = self.maps.get(path)
        if mm is None:
            with open(path, "rb") as f:
                mm = self.maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return mm

    def read(self, disk: DiskTensor, out: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The stored tensor as a new tensor (converted to ``dtype``, or written into ``out``)."""
        stored = STORED_DTYPES.get(disk.dtype)
        if stored is None:
            raise HfExpandError(f"{disk.file} stores a tensor as {disk.dtype}, which hf-expand cannot grow; convert "
                                f"the checkpoint to float32, float16 or bfloat16")
        if out is not None and tuple(out.shape) != disk.shape:
            raise ValueError(f"buffer of shape {tuple(out.shape)} for a stored tensor of shape {disk.shape}")
        dtype = out.dtype if out is not None else (dtype or stored)
        if not disk.nbytes:
            return out if out is not None else torch.empty(disk.shape, dtype=dtype)
        mm = self._map(disk.file)
        if disk.offset + disk.nbytes > len(mm):
            raise HfExpandError(f"{disk.file} ended early while reading a tensor; it is truncated: re-download it")
        view = torch.frombuffer(mm, dtype=stored, count=disk.nbytes // stored.itemsize, offset=disk.offset)
        view = view.reshape(disk.shape)
        if out is not None:
            value = out.copy_(view)
        else:
            value = view.to(dtype, copy=True)
        del view
        _drop(mm, disk.offset, disk.nbytes)
        return value

    def get(self, disk: DiskTensor, key: str) -> torch.Tensor:
        return self.read(disk)

    def same_bytes(self, a: DiskTensor, other: "_Files", b: DiskTensor, chunk: int = 64 << 20) -> bool:
        """Whether stored tensors ``a`` (in these files) and ``b`` (in ``other``'s) hold the same bytes, compared
        in place on the maps a chunk at a time (nothing is copied; the pages are dropped after)."""
        if a.dtype != b.dtype or a.shape != b.shape or a.nbytes != b.nbytes:
            return False
        ma, mb = self._map(a.file), other._map(b.file)
        if a.offset + a.nbytes > len(ma) or b.offset + b.nbytes > len(mb):
            return False
        for start in range(0, a.nbytes, chunk):
            n = min(chunk, a.nbytes - start)
            wide = n // 8  # compared 8 bytes at a time (several times faster than bytes), then the rest
            x = torch.frombuffer(ma, dtype=torch.int64, count=wide, offset=a.offset + start) if wide else None
            y = torch.frombuffer(mb, dtype=torch.int64, count=wide, offset=b.offset + start) if wide else None
            same = wide == 0 or torch.equal(x, y)
            if same and n % 8:
                rest = a.offset + start + 8 * wide, b.offset + start + 8 * wide
                same = ma[rest[0]:rest[0] + n % 8] == mb[rest[1]:rest[1] + n % 8]
            del x, y
            if not same:
                return False
        _drop(ma, a.offset, a.nbytes)
        _drop(mb, b.offset, b.nbytes)
        return True


def _drop(mm, offset: int, nbytes: int) -> None:
    """Give the mapped pages of ``[offset, offset + nbytes)`` back (whole pages inside the range only)."""
    import mmap

    page = mmap.PAGESIZE
    start = -(-offset // page) * page
    stop = (offset + nbytes) // page * page
    if stop > start and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED, start, stop - start)


@dataclass
class _Group:
    """The stored tensors that make one model tensor, and how (None: a plain rename)."""

    keys: list[tuple[str, str]] = field(default_factory=list)  # (stored key, source pattern)
    converter: object = None


class CheckpointReader:
    """Model-layout tensors of a safetensors checkpoint, read on demand.

    ``get(name)`` returns the tensor as stored (its own dtype); ``stored(name)`` says whether ``name`` is
    one stored tensor under the same name (so it can be copied byte for byte)."""

    def __init__(self, folder: str | Path, model):
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

        self.folder = Path(folder)
        self.disk = scan(self.folder)
        self.model = model
        mapping = get_model_conversion_mapping(model)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
        pattern_to_converter = {p: c for c in converters for p in c.source_patterns}
        meta = model.state_dict()
        prefix = getattr(model, "base_model_prefix", None)
        self.groups: dict[str, _Group] = {}
        for key in sorted(self.disk, key=dot_natural_key):
            renamed, pattern = rename_source_key(key, renamings, converters, prefix, meta)
            if renamed not in meta and key in meta:
                renamed, pattern = rename_source_key(key, [], [], prefix, meta)
            if renamed not in meta:  # not the model's (from_pretrained reports these; growth ignores them)
                continue
            group = self.groups.setdefault(renamed, _Group())
            if pattern is not None and group.converter is None:
                group.converter = pattern_to_converter[pattern]
            group.keys.append((key, pattern or key))
        self.tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
        self._files = _Files()
        self._cache: tuple[str, dict[str, torch.Tensor]] | None = None

    def stored(self, name: str) -> DiskTensor | None:
        """The stored tensor ``name`` when it is read as is (same key, no conversion), else None."""
        group = self.groups.get(name)
        if group is None or group.converter is not None or group.keys != [(name, name)]:
            return None
        return self.disk[name]

    def same_bytes(self, name: str, other: "CheckpointReader", other_name: str) -> bool:
        """Whether model tensor ``name`` here and ``other_name`` in ``other`` are stored as the same bytes (the
        same stored tensors, part by part, for a tensor converted on load; a tied tensor by what it is tied to)."""
        a, b = self._parts(name), other._parts(other_name)
        return (a is not None and b is not None and len(a) == len(b)
                and all(self._files.same_bytes(x, other._files, y) for x, y in zip(a, b)))

    def _parts(self, name: str) -> list[DiskTensor] | None:
        group = self.groups.get(name)
        if group is None and name in self.tied:
            group = self.groups.get(self.tied[name])
        return None if group is None else [self.disk[key] for key, _ in group.keys]

    def has(self, name: str) -> bool:
        return name in self.groups or (name in self.tied and self.tied[name] in self.groups)

    def get(self, name: str) -> torch.Tensor:
        group = self.groups.get(name)
        if group is None:
            if name in self.tied and self.tied[name] in self.groups:
                return self.get(self.tied[name])
            raise HfExpandError(f"{self.folder} does not hold {name}, which the model needs; re-download or re-save "
                                f"the model (or use the config saved with these weights)")
        if group.converter is None:
            (key, _), = group.keys
            return self._files.get(self.disk[key], key)
        cache = self._cache  # one read: another thread may replace it
        if cache is not None and name in cache[1]:
            return cache[1][name]
        conv = deepcopy(group.converter)
        for key, pattern in group.keys:
            conv.add_tensor(name, key, pattern, self._loader(key))
        out = conv.convert(name, model=self.model, config=self.model.config)
        out = {k: (v[0] if isinstance(v, list) else v) for k, v in out.items()}
        self._cache = (name, out)
        if name not in out:  # pragma: no cover - transformers' converters name their first target
            raise HfExpandError(f"converting {self.folder}'s tensors to {name} failed; please report this")
        return out[name]

    def get_float(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """``name`` in fp32, converted while reading (into ``out`` when given)."""
        group = self.groups.get(name)
        if group is not None and group.converter is None:
            (key, _), = group.keys
            return self._files.read(self.disk[key], out, torch.float32)
        value = self.get(name)
        return value.float() if out is None else out.copy_(value)

    def _loader(self, key: str) -> Callable[[], torch.Tensor]:
        return lambda: self._files.get(self.disk[key], key)


def resolve_folder(src: str) -> Path:
    """A local folder as is; a Hub id downloaded into the Hugging Face cache (weights, config, tokenizer)."""
    path = Path(src)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(src, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja",
                                                         "*.tiktoken", "*.md", "LICENSE*"]))
