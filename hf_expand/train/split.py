"""Partly-new tensors split into a frozen old part and a trained new part (``--trainable new``).

A tensor that growth only partly made (an FFN weight widened by ``widen_ffn``: its new rows or columns) is
re-expressed, for training only, as two parameters: ``old`` (every pre-existing value, ``requires_grad``
off) and ``new`` (the new entries), joined back into the full tensor at every forward by a
``torch.nn.utils.parametrize`` parametrization. So

* gradients and optimizer state exist for the new entries only, whatever optimizer is used (stock AdamW:
  weight decay and momentum never reach an old value, which is never handed to the optimizer);
* old values stay bit-identical by construction, not by masking gradients;
* every piece is an ordinary parameter, so DDP and FSDP2 shard or replicate them like any other.

Joining (the maths): along one axis (the usual case: new rows, new columns, new vocabulary rows) the
tensor is ``cat([old, new], axis)`` with the rows put back in order by one ``index_select`` (skipped when
the new rows come last, as growth appends them); a tensor new along two axes (``widen_hidden``: an L of new
rows and columns) is ``zeros.masked_scatter(old_mask, old).masked_scatter(new_mask, new)``. Both are
differentiable in ``new`` and copy each value once.

The model's ``state_dict`` keeps the plain names and full tensors (a state-dict hook joins the parts, a
load pre-hook splits them again), so training checkpoints (``accelerator.save_state``) hold the model as
stock transformers names it. :func:`join` removes the parametrizations (the values, as trained, become
plain parameters again, ties restored): the saved model is a plain ``save_pretrained`` folder.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils import parametrize


def _single_axis(mask: torch.Tensor) -> tuple[int, torch.Tensor] | None:
    """(axis, 1-D mask along it) when ``mask`` marks whole slices along one axis, else None."""
    for axis in range(mask.ndim):
        line = mask.amax(dim=[d for d in range(mask.ndim) if d != axis]) if mask.ndim > 1 else mask
        shape = [1] * mask.ndim
        shape[axis] = -1
        if torch.equal(mask, line.reshape(shape).expand_as(mask)):
            return axis, line
    return None


class Split(nn.Module):
    """The parametrization: ``forward(old, new)`` is the full tensor; ``right_inverse(full)`` splits it."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.shape = tuple(mask.shape)
        found = _single_axis(mask)
        if found is not None:
            self.axis, line = found
            order = torch.cat([(~line).nonzero().flatten(), line.nonzero().flatten()])  # old rows first, then new
            # put the concatenation back in the original order; None when it already is (new rows last)
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel())
            ordered = torch.equal(inverse, torch.arange(order.numel()))
            self.register_buffer("inverse", None if ordered else inverse, persistent=False)
            self.register_buffer("line", line, persistent=False)
            self.register_buffer("mask", None, persistent=False)
        else:
            self.axis = None
            self.register_buffer("mask", mask, persistent=False)

    def forward(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        new = new.to(old.dtype)  # a no-op unless autocast or a cast changed one part
        if self.axis is None:
            full = torch.zeros(self.shape, dtype=old.dtype, device=old.device)
            return full.masked_scatter(~self.mask, old).masked_scatter(self.mask, new)
        joined = torch.cat([old, new], self.axis)
        return joined if self.inverse is None else joined.index_select(self.axis, self.inverse)

    def right_inverse(self, full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.axis is None:
            return full[~self.mask].clone(), full[self.mask].clone()
        line = self.line.to(full.device)
        keep_old, keep_new = (~line).nonzero().flatten(), line.nonzero().flatten()
        return full.index_select(self.axis, keep_old), full.index_select(self.axis, keep_new)


def split(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, str]:
    """Split every parameter named in ``masks`` (True at new entries) into frozen old and trained new parts.

    A parameter shared by several modules (tied input and output embeddings) is split once and the other
    modules use the same two parts. Returns {parameter name: name of its trained part}."""
    owners: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for leaf, p in list(module._parameters.items()):
            if p is not None:
                full = f"{module_name}.{leaf}" if module_name else leaf
                owners.setdefault(id(p), []).append((module, leaf, full))
    params = dict(model.named_parameters())
    trained: dict[str, str] = {}
    joined: list[tuple[nn.Module, str]] = []  # (module, leaf) of every split tensor's user
    for name, mask in masks.items():
        users = owners[id(params[name])]
        first, leaf, _ = users[0]
        parametrize.register_parametrization(first, leaf, Split(mask.to(params[name].device)), unsafe=True)
        plist = first.parametrizations[leaf]
        plist.original0.requires_grad_(False)
        plist.original1.requires_grad_(True)
        for module, other_leaf, _ in users[1:]:  # tied: the same parts, joined by the same rule
            parametrize.register_parametrization(module, other_leaf, plist[0], unsafe=True)
            mine = module.parametrizations[other_leaf]
            mine.original0, mine.original1 = plist.original0, plist.original1
        module_name = users[0][2].rpartition(".")[0]
        trained[name] = f"{module_name + '.' if module_name else ''}parametrizations.{leaf}.original1"
        joined.extend((module, user_leaf) for module, user_leaf, _ in users)
    if joined:
        _plain_state_dict(model, joined)
    return trained


def _plain_state_dict(model: nn.Module, joined: list[tuple[nn.Module, str]]) -> None:
    """``state_dict`` gives each split tensor whole under its plain name; ``load_state_dict`` of such a dict
    splits it again (so checkpoints saved during training look like the model, and load back). Names come
    from where the modules are now: peft re-parents a split Linear as ``...base_layer``."""

    def names(root: nn.Module, prefix: str):
        paths = {id(m): n for n, m in root.named_modules(remove_duplicate=False)}
        for module, leaf in joined:
            path = paths.get(id(module))
            if path is None:
                continue
            at = f"{prefix}{path + '.' if path else ''}"
            yield module, leaf, f"{at}{leaf}", f"{at}parametrizations.{leaf}.original0", \
                f"{at}parametrizations.{leaf}.original1"

    def save_hook(root, state_dict, prefix, local_metadata):
        if getattr(model, "_split_raw_state", False):
            return
        for module, leaf, plain, old, new in names(root, prefix):
            if old in state_dict:
                del state_dict[old], state_dict[new]
                state_dict[plain] = getattr(module, leaf).detach()

    def load_hook(root, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if getattr(model, "_split_raw_state", False):
            return
        for module, leaf, plain, old, new in names(root, prefix):
            if plain in state_dict:
                state_dict[old], state_dict[new] = module.parametrizations[leaf][0].right_inverse(state_dict.pop(plain))

    model.register_state_dict_post_hook(save_hook)
    model.register_load_state_dict_pre_hook(load_hook)


@contextlib.contextmanager
def raw_state_dict(model: nn.Module):
    """Inside, ``state_dict``/``load_state_dict`` use the parts' own names (``...parametrizations.weight.
    original0/1``), as they are stored: what a sharded (FSDP2) checkpoint saves and loads, shard by shard."""
    model._split_raw_state = True
    try:
        yield
    finally:
        model._split_raw_state = False


def join(model: nn.Module) -> None:
    """Undo :func:`split`: every split tensor becomes one plain parameter with its current values, and tied
    parameters are tied again."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for leaf in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, leaf, leave_parametrized=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
