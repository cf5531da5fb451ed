"""Execute a :class:`~hf_expand.plan.Plan` on tensors.

Randomness is seeded per (seed, tensor name), and the Net2Net split mapping per (seed, unit space), so
the result never depends on the order in which steps run (or on which shard a tensor sits in).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from .plan import Experts, Fill, Fresh, Grow, Plan, Remap, Scale, SetRows, TensorStep

# Net2Net split: a small noise that moves weight between a unit and its copy (added to one, subtracted
# from the other) so their sum, hence the function, is unchanged while the copies can diverge in training.
SPLIT_NOISE = 1e-2


def generator_for(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def split_mapping(seed: int, scope: str, old: int, new: int) -> torch.Tensor:
    """Which existing unit each of the ``new`` units duplicates: a seeded permutation, cycled."""
    perm = torch.randperm(old, generator=generator_for(seed, f"split:{scope}"))
    return perm[torch.arange(new) % old]


def _grow(t: torch.Tensor, g: Grow, seed: int, name: str) -> torch.Tensor:
    axis = g.axis % t.ndim
    chunks = t.chunk(g.parts, dim=axis) if g.parts > 1 else (t,)
    out = []
    for k, chunk in enumerate(chunks):
        if chunk.shape[axis] != g.old:
            raise ValueError(f"{name}: expected {g.old} entries per chunk on axis {axis}, found {chunk.shape[axis]}")
        out.append(_grow_chunk(chunk, axis, g, seed, f"{name}#{k}"))
    return torch.cat(out, dim=axis)


def _grow_chunk(chunk: torch.Tensor, axis: int, g: Grow, seed: int, key: str) -> torch.Tensor:
    shape = list(chunk.shape)
    shape[axis] = g.new
    if g.init == "zero":
        extra = torch.zeros(shape, dtype=chunk.dtype)
        if g.noise:  # zero:noise=S: new units already write a little (not function-preserving, recorded)
            extra = torch.randn(shape, generator=generator_for(seed, key)).mul_(g.noise * _std(chunk)).to(chunk.dtype)
    elif g.init == "normal":
        # "At the scale of the existing rows": the std of the existing values, so new units' activations
        # have the same magnitude as old ones and receive useful gradient.
        extra = torch.randn(shape, generator=generator_for(seed, key)).mul_(_std(chunk)).to(chunk.dtype)
    elif g.init in ("split_in", "split_out"):
        src = split_mapping(seed, g.scope, g.old, g.new)
        extra = chunk.index_select(axis, src).clone()
        if g.init == "split_out":
            # Net2Net: unit j now exists c_j times with identical activations, so each copy's outgoing
            # weights are divided by c_j; their sum equals the original column and outputs are unchanged.
            counts = torch.bincount(src, minlength=g.old).to(chunk.dtype) + 1
            view = [1] * chunk.ndim
            view[axis] = -1
            chunk = chunk / counts.view(view)
            extra = extra / counts[src].view(view)
            noise = torch.randn(extra.shape, generator=generator_for(seed, key)) * SPLIT_NOISE * chunk.float().std()
            noise = noise.to(chunk.dtype)
            extra = extra + noise
            chunk = chunk.index_add(axis, src, -noise)
    else:
        raise ValueError(f"unknown init {g.init!r}")
    return torch.cat([chunk, extra], dim=axis)


def _remap(t: torch.Tensor, r: Remap, seed: int, key: str) -> torch.Tensor:
    axis = r.axis % t.ndim
    idx = torch.tensor(r.element_index(), dtype=torch.long)
    old_len = sum(space.old * unit for space, unit in r.segments)
    if t.shape[axis] != old_len:
        raise ValueError(f"{key}: expected {old_len} entries on axis {axis}, found {t.shape[axis]}")
    view = [1] * t.ndim
    view[axis] = -1
    is_new = (idx < 0).view(view)
    src = idx.clamp(min=0)
    out = t.index_select(axis, src)
    if r.reads:
        # x is replicated: sum_j W_j x = W x when the copies W_j of a column sum to W.
        counts = torch.bincount(idx[idx >= 0], minlength=old_len).clamp(min=1).to(t.dtype)
        out = out / counts[src].view(view)
        if r.noise:
            # Zero-sum noise within each group of copies: the sum over copies, hence the output, is unchanged.
            noise = torch.randn(out.shape, generator=generator_for(seed, key)) * (r.noise * _std(t))
            noise = noise.to(t.dtype).masked_fill(is_new, 0)
            sums = torch.zeros_like(t).index_add(axis, src, noise)
            noise = noise - (sums / counts.view(view)).index_select(axis, src)
            out = out + noise
        return out.masked_fill(is_new, 0)
    if r.new_init == "zero":
        return out.masked_fill(is_new, 0)
    if r.new_init == "below_min":  # a selection bias that never lets the new entries win (see ops.add_experts)
        return out.masked_fill(is_new, t.min().item() - 1.0)
    fresh = (torch.randn(out.shape, generator=generator_for(seed, key)) * _std(t)).to(t.dtype)
    return torch.where(is_new, fresh, out)


def _set_rows(t: torch.Tensor, a: SetRows) -> torch.Tensor:
    axis = a.axis % t.ndim
    old = t.shape[axis]
    shape = list(t.shape)
    shape[axis] = max(a.size, old)
    out = torch.zeros(shape, dtype=t.dtype)
    out.narrow(axis, 0, old).copy_(t)
    overall = t.mean(dim=axis, keepdim=True)
    for i, sources in a.rows:
        value = t.index_select(axis, torch.tensor(sources)).mean(dim=axis, keepdim=True) if sources else overall
        out.narrow(axis, i, 1).copy_(value + a.offset)
    return out.narrow(axis, 0, a.size)


def _std(t: torch.Tensor) -> float:
    """The std of a tensor's values (0.02 when it has one value or all are equal): the scale of new values."""
    std = t.float().std().item() if t.numel() > 1 else 0.02
    return std if std > 0 else 0.02


def _unit_subset(seed: int, scope: str, expert: int, units: int, rate: float) -> torch.Tensor:
    """Drop-Upcycling: which ``round(rate * units)`` units (at least one) expert ``expert`` of the FFN ``scope``
    re-draws; the same for every tensor of that FFN, different per expert."""
    k = max(1, round(rate * units))
    return torch.randperm(units, generator=generator_for(seed, f"drop:{scope}:{expert}"))[:k]


def _experts(t: torch.Tensor, a: Experts, seed: int, key: str) -> torch.Tensor:
    out = t.unsqueeze(0).repeat(a.count, *([1] * t.ndim))
    if a.init == "copy":
        return out
    std = _std(t)  # the scale of the noise and of re-drawn units
    if a.init == "noise":
        return out + torch.randn(out.shape, generator=generator_for(seed, key)).mul_(a.rate * std).to(t.dtype)
    if a.init == "drop":
        axis = a.unit_axis % t.ndim
        per_part = t.shape[axis] // a.parts
        for e in range(a.count):
            units = _unit_subset(seed, a.scope, e, per_part, a.rate)
            rows = torch.cat([units + k * per_part for k in range(a.parts)])
            expert = out[e]
            shape = list(expert.shape)
            shape[axis] = len(rows)
            fresh = torch.randn(shape, generator=generator_for(seed, f"{key}#{e}")).mul_(std).to(t.dtype)
            out[e] = expert.index_copy(axis, rows, fresh)
        return out
    raise ValueError(f"unknown experts init {a.init!r}")


def read_sources(step: TensorStep, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The tensor ``step`` starts from: its source (with its ``extra_sources`` concatenated on axis 0), checked
    against the plan's shape; an empty tensor of that shape when the step makes its values from nothing."""
    if not step.reads_source:
        return torch.empty(step.shape_before, dtype=torch.float32)
    parts = [get(name) for name in (step.source, *step.extra_sources)]
    source = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    if tuple(source.shape) != tuple(step.shape_before):
        raise ValueError(f"{' + '.join((step.source, *step.extra_sources))}: plan expected shape {step.shape_before}, "
                         f"the checkpoint has {tuple(source.shape)}")
    return source


def run_step(step: TensorStep, tensor: torch.Tensor, seed: int) -> torch.Tensor:
    t = tensor
    for k, action in enumerate(step.actions):
        if isinstance(action, Experts):
            t = _experts(t, action, seed, f"{step.target}@{k}")
        elif isinstance(action, Fresh):
            t = torch.randn(t.shape, generator=generator_for(seed, step.target)).mul_(action.std)
        elif isinstance(action, Grow):
            t = _grow(t, action, seed, step.target)
        elif isinstance(action, Fill):
            std = _std(t) if action.noise else 0.0
            t = torch.full_like(t, action.value)
            if action.noise:  # a non-exact start on purpose: the branch writes a little into the residual stream
                t = t + torch.randn(t.shape, generator=generator_for(seed, f"{step.target}@{k}")).mul_(
                    action.noise * std).to(t.dtype)
        elif isinstance(action, Remap):
            t = _remap(t, action, seed, f"{step.target}@{k}")
        elif isinstance(action, Scale):
            t = t * action.mul + action.add
        elif isinstance(action, SetRows):
            t = _set_rows(t, action)
        else:  # pragma: no cover - plans are built by our own operations
            raise TypeError(f"unknown action {action!r}")
    if tuple(t.shape) != tuple(step.shape_after):
        raise ValueError(f"{step.target}: plan expected shape {step.shape_after}, execution produced {tuple(t.shape)}")
    return t


def execute(plan: Plan, get: Callable[[str], torch.Tensor], seed: int, progress: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(target, tensor)`` for every step; ``get(name)`` supplies source tensors on demand."""
    for step in tqdm(plan.steps, desc=plan.op, disable=not progress, leave=False):
        yield step.target, run_step(step, read_sources(step, get), seed)
