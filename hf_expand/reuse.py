"""Blocks of a grown model whose output on the probes is known without running them.

A block computes a function of its weights, its buffers, its module attributes, the config values its code
reads, and its inputs. When all of these are bit-identical to those of a block in the reference run, its
output is bit-identical to that block's recorded output (same stock code, same shapes, same machine: CPU
kernels are deterministic), so the certificate takes the recorded output instead of reading and running
the block again. Depth growth (LLaMA Pro, ``add_layers``) leaves most blocks byte-identical copies whose
inputs are unchanged, so the grown model's pass costs about the new blocks only. The modules outside the
block list that are streamed (embeddings, head) follow the same rules against the reference's module of the
same name: a real model's embeddings and head are each as large as a block or two.

What is checked, block by block (any doubt means the block runs):

- weights: every parameter stored as the same bytes in both checkpoints (read in place, not converted);
- structure: the same module classes under the same names, the same parameter shapes, buffers bit-equal;
- attributes: every public attribute of every submodule equal (``layer_idx`` aside, see below); a config
  held as an attribute is covered by the next rule;
- code: the modules' methods other than ``__init__`` (their classes and transformers base classes) never
  read ``layer_idx`` outside a cache call, nor any config field whose value differs between the two
  models (``num_hidden_layers``, ``layer_types``, ...). Values derived from them in ``__init__`` are
  attributes, checked above;
- inputs: every positional and keyword argument of the call bit-equal to the reference call's (tensors
  byte for byte, other values by ``==``; an object that is neither is a difference).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import textwrap
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class Reuse:
    """How a grown run may take block outputs from a recorded reference run.

    ``ref``: the reference :class:`certificate.Run`, recorded with its calls; ``ref_model``: the reference
    meta model (its blocks give the structure to compare); ``candidates[j]``: the reference block grown
    block j may equal (a copy of it), or None; ``same_weights(name, ref_name)``: whether the two stored
    tensors hold the same bytes."""

    ref: object
    ref_model: nn.Module
    candidates: list[int | None]
    same_weights: Callable[[str, str], bool]

    @property
    def ref_blocks_name(self) -> str:
        from .certificate import _block_list

        return _block_list(self.ref_model)[0]


def reusable_blocks(reuse: Reuse, model: nn.Module, blocks_name: str) -> dict[int, int]:
    """Grown block index -> reference block index, for the blocks whose weights, structure, attributes and
    code are the same (inputs are compared per call, at run time)."""
    ref_blocks_name = reuse.ref_blocks_name
    blocks = model.get_submodule(blocks_name)
    ref_blocks = reuse.ref_model.get_submodule(ref_blocks_name)
    differing = _differing_config_fields(model.config, reuse.ref_model.config)
    out = {}
    for j, i in enumerate(reuse.candidates):
        if i is None or j >= len(blocks) or i >= len(ref_blocks) or reuse.ref.calls is None or not reuse.ref.calls[i]:
            continue
        a, b = blocks[j], ref_blocks[i]
        if not same_structure(a, b, differing):
            continue
        if all(reuse.same_weights(f"{blocks_name}.{j}.{n}", f"{ref_blocks_name}.{i}.{n}") for n, _ in a.named_parameters()):
            out[j] = i
    return out


def reusable_units(reuse: Reuse, model: nn.Module, names: list[str]) -> set[str]:
    """The modules outside the block list (embeddings, head) that are the reference's module of the same name:
    same structure, attributes and code, every parameter stored as the same bytes (inputs compared per call)."""
    if reuse.ref.unit_calls is None:
        return set()
    differing = _differing_config_fields(model.config, reuse.ref_model.config)
    out = set()
    for name in names:
        if not reuse.ref.unit_calls.get(name):
            continue
        try:
            a, b = model.get_submodule(name), reuse.ref_model.get_submodule(name)
        except AttributeError:
            continue
        if same_structure(a, b, differing) and all(
                reuse.same_weights(f"{name}.{n}", f"{name}.{n}") for n, _ in a.named_parameters()):
            out.add(name)
    return out


def fingerprint(value):
    """A comparable summary of a call's inputs: tensors by dtype, shape and a hash of their bytes; plain values
    as they are; containers element-wise; any other object as a token equal to nothing else."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "meta":
            return _Opaque()
        data = value.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
        return ("tensor", str(value.dtype), tuple(value.shape), hashlib.blake2b(data.data, digest_size=32).digest())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(fingerprint(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, fingerprint(v)) for k, v in value.items()))
    if isinstance(value, (type(None), bool, int, float, str, bytes, torch.dtype, torch.device)):
        return (type(value).__name__, value)
    if callable(value) and not isinstance(value, nn.Module):
        return ("callable", value)
    return _Opaque()


class _Opaque:
    """Equal only to itself: an input that cannot be compared, so the block runs."""


def share(value):
    """A copy of a block's output that later in-place changes cannot reach (tensors cloned, containers rebuilt)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(share(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(share(v) for v in value)
    if isinstance(value, dict):
        try:
            return type(value)(**{k: share(v) for k, v in value.items()})
        except TypeError:  # a mapping that cannot be rebuilt from its items: a plain dict of copies
            return {k: share(v) for k, v in value.items()}
    return value


def same_structure(a: nn.Module, b: nn.Module, differing: frozenset[str]) -> bool:
    """Same classes, parameter shapes, buffers, attributes and config reads (see module doc)."""
    ma, mb = dict(a.named_modules()), dict(b.named_modules())
    if ma.keys() != mb.keys():
        return False
    for name, x in ma.items():
        y = mb[name]
        if type(x) is not type(y) or not _code_is_index_free(type(x), differing):
            return False
        if {k: tuple(v.shape) for k, v in x._parameters.items() if v is not None} != \
                {k: tuple(v.shape) for k, v in y._parameters.items() if v is not None}:
            return False
        if x._buffers.keys() != y._buffers.keys() or not all(
                same_value(x._buffers[k], y._buffers[k]) for k in x._buffers):
            return False
        va, vb = _public(x), _public(y)
        if va.keys() != vb.keys() or not all(same_value(va[k], vb[k]) for k in va):
            return False
    return True


def _public(module: nn.Module) -> dict:
    from transformers import PretrainedConfig

    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and k != "layer_idx" and not isinstance(v, PretrainedConfig)}


def same_value(a, b) -> bool:
    """Bit-equal tensors; equal plain values; element-wise for tuples, lists and dicts; anything else only if it
    is the same object (or a function/class equal to the other)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device or a.device.type == "meta":
            return False
        return torch.equal(a.detach().contiguous().reshape(-1).view(torch.uint8),
                           b.detach().contiguous().reshape(-1).view(torch.uint8))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if a is b:
        return True
    if isinstance(a, (type(None), bool, int, float, str, bytes, torch.dtype, torch.device)) or callable(a):
        return type(a) is type(b) and a == b
    return False


def _differing_config_fields(a, b) -> frozenset[str]:
    """Leaf field names whose values differ between two configs (nested configs flattened by field name)."""
    def leaves(d: dict, out: dict):
        for k, v in d.items():
            if isinstance(v, dict):
                leaves(v, out)
            else:
                out.setdefault(k, []).append(v)
        return out

    la, lb = leaves(a.to_dict(), {}), leaves(b.to_dict(), {})
    return frozenset(k for k in la.keys() | lb.keys() if la.get(k) != lb.get(k))


# names whose reads mean the code may depend on the block's position, whatever the configs say
_INDEX_NAMES = frozenset({"layer_idx", "layer_id", "layer_number", "layer_index"})
_CACHE_WORDS = ("cache", "past")


def _code_is_index_free(cls: type, differing: frozenset[str]) -> bool:
    return not (_names_read(cls) & (_INDEX_NAMES | differing))


@functools.lru_cache(maxsize=None)
def _names_read(cls: type) -> frozenset[str]:
    """Attribute names read by the methods (``__init__`` aside) of ``cls`` and its base classes (torch's aside),
    and by the functions of their own modules that those methods call by name (``eager_attention_forward``),
    leaving out statements about the key/value cache (``past_key_values.update(..., self.layer_idx)``)."""
    names: set[str] = set()
    seen: set[int] = set()
    for klass in cls.__mro__:
        if klass is object or _is_torch(klass):
            continue  # torch's own layers (Linear, Embedding, ...) take nothing but their inputs and weights
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            return frozenset({"<unreadable>"}) | _INDEX_NAMES  # code we cannot read: never reused
        scope = vars(inspect.getmodule(klass) or object)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name != "__init__":
                if not _read_function(fn, scope, names, seen):
                    return frozenset({"<unreadable>"}) | _INDEX_NAMES
    return frozenset(names)


def _is_torch(obj) -> bool:
    return (getattr(obj, "__module__", None) or "").split(".")[0] == "torch"


def _read_function(fn: ast.AST, scope: dict, names: set[str], seen: set[int]) -> bool:
    """Add what ``fn`` reads to ``names``, following calls to plain functions of ``scope`` (False: unreadable)."""
    skipped: set[int] = set()
    for node in ast.walk(fn):
        if isinstance(node, (ast.Call, ast.Subscript)) and id(node) not in skipped:
            text = ast.unparse(node).lower()
            if "layer_idx" in text and any(w in text for w in _CACHE_WORDS):
                skipped.update(id(n) for n in ast.walk(node))
    for node in ast.walk(fn):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Name):
            names.add(node.id)
            helper = scope.get(node.id)
            if inspect.isfunction(helper) and not _is_torch(helper) and id(helper) not in seen:
                seen.add(id(helper))
                try:
                    tree = ast.parse(textwrap.dedent(inspect.getsource(helper)))
                except (OSError, TypeError, SyntaxError):
                    return False
                if not _read_function(tree, vars(inspect.getmodule(helper) or object), names, seen):
                    return False
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # getattr(config, "num_hidden_layers")
    return True
