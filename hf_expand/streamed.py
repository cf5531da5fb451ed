"""Streamed growth of a safetensors checkpoint: read -> compose -> write -> verify, about one block in memory.

* read: :class:`~hf_expand.checkpoint.CheckpointReader` (memory-mapped, the model's in-memory layout);
* compose: :class:`~hf_expand.compose.Chain` (one chain of plan steps per output tensor, fp32, rounded once);
* write: :func:`~hf_expand.shards.write_shards` (the stored layout stock ``from_pretrained`` loads: conversions
  reverted with transformers' own code, tied tensors left out), unchanged tensors copied byte for byte;
* verify: :mod:`~hf_expand.certificate` (base and the written folder, block by block).

:func:`predict` tells a dry run the peak memory, disk space and shards from the config alone.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import HfExpandError
from .multimodal import text_of

log = logging.getLogger(__name__)

GIB = 2**30
# Resident memory of the interpreter with torch and transformers imported, before any tensor (measured here).
BASE_RSS = int(0.3 * GIB)
DISK_MARGIN = 64 * 2**20  # config, tokenizer, card, record


@contextlib.contextmanager
def bounded_heap():
    """Give freed tensor memory back to the system at once while streaming (glibc).

    glibc raises its mmap threshold after large frees, up to 32 MiB, so the block-sized tensors that streaming
    allocates and frees over and over land in the heap, which fragments and keeps growing (measured: 1.9 GB
    resident for a 1.1B model instead of 0.55 GB). Inside the block the threshold is fixed at 64 KiB, so every
    tensor buffer has its own mapping, returned when the tensor is freed. On exit the threshold is set to
    32 MiB (where glibc's dynamic threshold ends up anyway): a fixed small threshold would slow later work in
    the same process (training after growth in ``hf-expand run``) by mapping every buffer afresh."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
            libc.mallopt(M_TRIM_THRESHOLD, 64 * 2**20)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:  # pragma: no cover
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


def meta_model(cls, config):
    """``cls(config)`` with parameters on the meta device (buffers real: rotary tables are computed at init)."""
    from accelerate import init_empty_weights
    from transformers.initialization import no_init_weights

    with init_empty_weights(include_buffers=False), no_init_weights():
        model = cls(config)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def reverter(model):
    """``revert_weight_conversion`` for ``model`` (what save_pretrained applies: the model's conversions reversed,
    without legacy renamings or prefix changes), with the conversion list looked up once instead of per call."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange, revert_weight_conversion

    conversions = [c for c in get_model_conversion_mapping(model, add_legacy=False) if not isinstance(c, PrefixChange)]
    if not conversions:
        return lambda state: state
    model._weight_conversions = conversions
    return lambda state: revert_weight_conversion(model, state)


def tied_targets(model) -> set[str]:
    """State-dict names save_pretrained leaves out: tied to another parameter that is saved."""
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    params = dict(model.named_parameters(remove_duplicate=False))
    return {t for t, s in tied.items() if t in params and s in params and params[t] is params[s]}


def out_dtype(t_dtype: torch.dtype, dtype: torch.dtype) -> torch.dtype:
    """What ``model.to(dtype)`` makes of a tensor: floating point tensors take ``dtype``, others keep theirs."""
    return dtype if t_dtype.is_floating_point else t_dtype


@dataclass
class Layout:
    """The output as stored: tensors in write order, grouped into shards."""

    tensors: list  # [shards.OutTensor]
    shards: list  # [[shards.OutTensor]]
    units: dict  # model tensor -> [stored names]
    total_parameters: int

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def output_layout(grown_meta, dtype: torch.dtype, max_shard_size: int) -> Layout:
    """The stored names, dtypes and shapes of the grown model (conversions reverted on meta tensors, as
    ``save_pretrained`` reverts them), assigned to shards."""
    from transformers.core_model_loading import dot_natural_key

    from .shards import OutTensor, assign_shards

    revert = reverter(grown_meta)
    skip = tied_targets(grown_meta)
    state = grown_meta.state_dict()
    tensors, units = [], {}
    for name in sorted(state, key=dot_natural_key):
        if name in skip:
            continue
        t = state[name]
        stored = revert({name: t})
        units[name] = list(stored)
        tensors.extend(OutTensor(k, out_dtype(v.dtype, dtype), tuple(v.shape), name) for k, v in stored.items())
    total = sum(p.numel() for p in grown_meta.parameters())
    return Layout(tensors, assign_shards(tensors, max_shard_size), units, total)


def write_grown(folder: Path, layout: Layout, chain, reader, grown_meta, dtype: torch.dtype,
                progress: bool = False, cancelled=lambda: False) -> list[str]:
    """Compute and write every output tensor (see module doc); returns the files written."""
    from .shards import copy_bytes, dtype_name, write_shards

    revert = reverter(grown_meta)
    state = grown_meta.state_dict()
    buffers = {n for n, _ in grown_meta.named_buffers()}
    by_name = {t.name: t for t in layout.tensors}

    def own_buffer(unit: str) -> torch.Tensor:
        """The grown model's buffer as its config computes it at init (as the in-memory path's rebuilt model has it)."""
        if state[unit].device.type == "meta":
            raise HfExpandError(f"the grown model's buffer {unit} has no value; please report this")
        return state[unit]

    def produce(unit: str):
        if cancelled():
            raise HfExpandError("writing was cancelled")
        names = layout.units[unit]
        planned = chain.has_step(unit)  # persistent buffers inside blocks (apertus's xIELU beta/eps) are in no plan
        base = chain.base_name(unit) if planned else None
        disk = reader.stored(base) if base is not None else None
        if disk is not None and len(names) == 1 and by_name[names[0]].shape == disk.shape \
                and dtype_name(by_name[names[0]].dtype) == disk.dtype:
            yield names[0], copy_bytes(disk.file, disk.offset, disk.nbytes)  # unchanged: bytes as stored
            return
        if unit in buffers and not planned:
            # a buffer no plan lists: the base's stored value when it stores one of this shape (DeepSeek-V3's trained
            # selection bias), else the grown model's own
            value = reader.get_float(unit) if reader.has(unit) else None
            if value is None or tuple(value.shape) != tuple(state[unit].shape):
                value = own_buffer(unit)
        elif unit in buffers and not reader.has(base or unit):
            value = own_buffer(unit)
        else:
            value = chain.get(unit)
        value = value.to(out_dtype(value.dtype, dtype))
        stored = revert({unit: value})
        for name in names:
            yield name, stored[name].contiguous()

    return write_shards(folder, layout.shards, produce, layout.total_parameters, progress)


def check_disk(out: Path, needed: int) -> None:
    """Refuse (one line) when the output's filesystem has less free space than ``needed`` bytes."""
    probe = Path(out).absolute()
    while not probe.exists():
        probe = probe.parent
    free = disk_free(probe)
    if free < needed + DISK_MARGIN:
        raise HfExpandError(f"not enough disk space for {out}: the grown model needs {_gib(needed + DISK_MARGIN)}, "
                            f"{probe} has {_gib(free)} free; free some space or write elsewhere (--out)")


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def _unit_sizes(model, blocks_name: str) -> tuple[int, int]:
    """(largest block, largest other unit) in parameters, as :class:`certificate.StreamedModel` loads them."""
    from .certificate import _units

    block = other = 0
    for name, unit in _units(model, blocks_name):
        if unit is model:
            n = sum(p.numel() for p in unit._parameters.values() if p is not None)
        else:
            n = sum(p.numel() for p in unit.parameters())
        if name.startswith(blocks_name + "."):
            block = max(block, n)
        else:
            other = max(other, n)
    return block, other


def predict(base_meta, grown_meta, plans, dtype: torch.dtype, max_shard_size: int, probe_tokens: int = 48) -> dict:
    """Peak memory, output bytes and shard count of a streamed grow, from meta models alone.

    Peak memory = the interpreter with torch and transformers (``BASE_RSS``) plus the larger of
    * writing: a changed tensor in fp32 three times over (its source, the result, the rounded copy);
    * verifying: one block's weights in fp32 (a pool every block refills), or the largest module outside the
      blocks (embeddings, head) in fp32, which runs after the pool is released; plus the probes' activations
      (the hidden state after every block and the logits, kept for the comparison).
    Unchanged tensors are copied by the kernel and memory-mapped reads are file pages, not counted."""
    from .certificate import _block_list
    from .compose import Chain

    layout = output_layout(grown_meta, dtype, max_shard_size)
    state = grown_meta.state_dict()
    chain = Chain(lambda n: None, plans, 0)
    changed = [n for n in layout.units if n in state and chain.base_name(n) is None]
    write_peak = max((state[n].numel() * 4 * 3 for n in changed), default=0)
    verify_peak = 0
    for model in (base_meta, grown_meta):
        cfg = model.config
        blocks_name, blocks = _block_list(model)
        layers = len(blocks)
        block, other = _unit_sizes(model, blocks_name)
        hidden = int(getattr(cfg, "hidden_size", 0) or 0)
        vocab = int(getattr(text_of(cfg), "vocab_size", 0) or 0)
        acts = probe_tokens * 4 * (hidden * (2 * layers + 8) + vocab * 3)
        verify_peak = max(verify_peak, max(block, other) * 4 + acts)
    return {
        "peak_memory": BASE_RSS + max(write_peak, verify_peak),
        "disk": layout.nbytes,
        "shards": len(layout.shards),
        "tensors": len(layout.tensors),
        "layout": layout,
    }


def render_prediction(p: dict, out: str | None) -> list[str]:
    return [f"streamed growth: peak memory about {_gib(p['peak_memory'])}; the output needs {_gib(p['disk'])} on disk "
            f"in {p['shards']} shard{'s' if p['shards'] != 1 else ''} ({p['tensors']} tensors)"
            + (f" under {out}" if out else "")]
