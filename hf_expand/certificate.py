"""The preservation certificate: base and grown run on the same probes, one block at a time.

Each model is built on the meta device with its own stock transformers classes; a hook gives a unit (one
block, or one module outside the block list such as the embeddings or the head) its weights, in fp32, just
before it runs and takes them away just after. Memory is about one unit plus the activations, whatever
the model's size, and the attention, norms and heads are transformers' own code.

The certificate records, for every block of the grown model that has a counterpart in the reference (an
identity block's counterpart is the block below it), the max |Δ| of the hidden state after it; the final
outputs' max |Δ|; and the KL divergence of the reference's next-token (or label) distribution from the
grown one's, over the probe positions.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .verify import Probes, _main_output, _mask_of, max_abs_diff


@dataclass
class Run:
    """One model's outputs on the probes: main output and the hidden state after every block, per batch.

    ``calls[i][b]``: when recorded, block i's call on batch b as ``(fingerprint of its inputs, its output)``
    (:mod:`hf_expand.reuse`); ``unit_calls[name][b]``: the same for a streamed module outside the blocks
    (embeddings, head); ``reused``: the blocks whose output was taken from a reference run (``reused_units``:
    the modules outside the blocks)."""

    outputs: list[torch.Tensor]
    hidden: list[list[torch.Tensor]]  # [block][batch]
    calls: list[list[tuple]] | None = None
    reused: set[int] = field(default_factory=set)
    unit_calls: dict[str, list[tuple]] | None = None
    reused_units: set[str] = field(default_factory=set)


def _block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The block list the certificate compares block by block (an encoder-decoder's decoder; its encoder runs as
    one unit)."""
    from .architectures import _find_block_list, main_blocks

    name = _find_block_list(model, *main_blocks(model.config))
    return name, model.get_submodule(name)


def _units(model: nn.Module, blocks_name: str) -> list[tuple[str, nn.Module]]:
    """The modules that get their weights as one piece: every block, and every module outside the block list
    that holds parameters but does not contain the block list (walked from the root)."""
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module):
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if full == blocks_name:
                out.extend((f"{full}.{i}", block) for i, block in enumerate(child))
            elif blocks_name.startswith(full + "."):
                walk(full + ".", child)
            elif any(True for _ in child.parameters(recurse=True)):
                out.append((full, child))
        if module._parameters and any(p is not None for p in module._parameters.values()):
            out.append((prefix.rstrip("."), module))  # parameters held by an ancestor of the block list itself

    walk("", model)
    return out


def _params_of(unit_name: str, unit: nn.Module, own_only: bool):
    prefix = f"{unit_name}." if unit_name else ""
    modules = [("", unit)] if own_only else list(unit.named_modules(remove_duplicate=False))
    for mod_name, mod in modules:
        for pname, p in mod._parameters.items():
            if p is not None:
                yield mod, pname, prefix + (f"{mod_name}." if mod_name else "") + pname


def _raised_by_transformers(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the modelling code itself (its innermost Python frame is in transformers), not
    from the streaming around it: hf-expand's hooks, a weight still on the meta device, memory."""
    import traceback

    if isinstance(exc, torch.OutOfMemoryError) or "meta" in str(exc):
        return False
    frames = list(traceback.walk_tb(exc.__traceback__))
    return bool(frames) and "transformers" in frames[-1][0].f_code.co_filename.replace("\\", "/").split("/")


SMALL_UNIT = 1 << 22  # parameters (16 MiB in fp32): a module outside the blocks this small is loaded once per run


def _numel(params) -> int:
    return sum(mod._parameters[pname].numel() for mod, pname, _ in params)


def _recorded_or_run(recorded, key, unit, load, free, call, args, kwargs) -> tuple[object, bool]:
    """``(output, reused)``: the recorded output when the recorded call's input fingerprint is ``key`` (same
    weights, code and inputs: the same output, see :mod:`hf_expand.reuse`), else the unit run with its weights
    loaded just for the call."""
    from .reuse import share

    if recorded is not None and recorded[0] == key:
        return share(recorded[1]), True
    load(unit, args)
    try:
        return call(*args, **kwargs), False
    finally:
        free(unit, args, None)


def _load_stored_buffers(model, get) -> None:
    """Persistent buffers (DeepSeek-V3's selection bias) take the stored values, as ``from_pretrained`` gives
    them; one ``get`` does not have keeps the value the model's __init__ computed. They are small: loaded once."""
    from .errors import HfExpandError

    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    persistent = set(model.state_dict()) - params
    for name, buffer in model.named_buffers():
        if name not in persistent or buffer.device.type == "meta":
            continue
        try:
            value = get(name)
        except (HfExpandError, KeyError):
            continue
        if tuple(value.shape) == tuple(buffer.shape):
            with torch.no_grad():
                buffer.copy_(value.to(buffer.dtype))


class StreamedModel:
    """A stock transformers model whose weights come from ``get(name)`` one unit at a time (see module doc)."""

    def __init__(self, model, get: Callable[..., torch.Tensor], what: str = "model"):
        """``model``: the stock model with its parameters on the meta device (``streamed.meta_model``); its
        parameters are put back on the meta device after each unit runs, so it can be used again.
        ``get(name, out=None)``: the tensor in fp32 (written into ``out`` when given), e.g.
        ``CheckpointReader.get_float`` or ``Chain.getter``."""
        config = model.config
        self.model = model.eval()
        self.get = get
        # fp32 buffers reused by every block (same shapes): no page faults and no heap growth per block
        self.pool: dict = {}
        self.what = what
        self.blocks_name, self.blocks = _block_list(self.model)
        self.num_layers = len(self.blocks)
        self.units = _units(self.model, self.blocks_name)
        self.bar = None
        _load_stored_buffers(self.model, get)

    @contextlib.contextmanager
    def _hooks(self, run: Run, reuse=None):
        from .reuse import fingerprint, reusable_blocks, reusable_units, share

        handles, wrapped, kept = [], [], []
        try:  # hooks come off and kept units are freed even when setting up fails half way
            last_block = f"{self.blocks_name}.{self.num_layers - 1}"
            reusable = {} if reuse is None else reusable_blocks(reuse, self.model, self.blocks_name)
            streamed_units = [name for name, unit in self.units if unit is not self.model
                              and not name.startswith(self.blocks_name + ".")
                              and _numel(_params_of(name, unit, False)) > SMALL_UNIT]
            same_units = set() if reuse is None else reusable_units(reuse, self.model, streamed_units)
            for name, unit in self.units:
                own_only = unit is self.model or (name and self.blocks_name.startswith(name + "."))
                params = list(_params_of(name, unit, bool(own_only)))

                in_block = name.startswith(self.blocks_name + ".")

                def load(module, args, kwargs=None, params=params, in_block=in_block, prefix=len(name) + 1):
                    for mod, pname, full in params:
                        shape = tuple(mod._parameters[pname].shape)
                        if not in_block:  # embeddings, head: used once per batch, not worth keeping
                            value = self.get(full)
                        else:  # blocks: one fp32 buffer per block-relative name, filled again by every block
                            key = (full[prefix:], shape)
                            value = self.pool.get(key)
                            if value is None:
                                value = self.pool[key] = torch.empty(shape, dtype=torch.float32)
                            value = self.get(full, value)
                        mod._parameters[pname] = nn.Parameter(value, requires_grad=False)

                def free(module, args, output, params=params, name=name):
                    for mod, pname, full in params:
                        mod._parameters[pname] = nn.Parameter(torch.empty(mod._parameters[pname].shape, device="meta"),
                                                              requires_grad=False)

                if unit is self.model or (not in_block and _numel(params) <= SMALL_UNIT):
                    # the root's own parameters, and small modules outside the blocks, stay for the whole run: a
                    # module whose weight is read without calling it (DeBERTa's rel_embeddings) is loaded too
                    kept.append((unit, free))
                    load(unit, ())
                    continue
                if not in_block and run.unit_calls is None and name not in same_units:
                    handles.append(unit.register_forward_pre_hook(load))
                    handles.append(unit.register_forward_hook(free))
                    continue
                if not in_block:  # recorded, or possibly the reference's output (the same rule as blocks, below)
                    def forward(*args, _run=unit.forward, _unit=unit, _name=name, _load=load, _free=free, **kwargs):
                        key = fingerprint((args, kwargs))
                        calls = reuse.ref.unit_calls.get(_name) if _name in same_units else None
                        recorded = calls[self._batch] if calls and self._batch < len(calls) else None
                        output, reused = _recorded_or_run(recorded, key, _unit, _load, _free, _run, args, kwargs)
                        if reused:
                            run.reused_units.add(_name)
                        if run.unit_calls is not None:
                            run.unit_calls.setdefault(_name, []).append((key, share(output)))
                        return output

                    unit.forward = forward
                    wrapped.append(unit)
                    continue
                j = int(name[len(self.blocks_name) + 1:])

                def forward(*args, _run=unit.forward, _unit=unit, _j=j, _load=load, _free=free, _last=name == last_block,
                            **kwargs):
                    key = fingerprint((args, kwargs)) if run.calls is not None or _j in reusable else None
                    i = reusable.get(_j)
                    recorded = reuse.ref.calls[i][self._batch] if i is not None else None
                    output, reused = _recorded_or_run(recorded, key, _unit, _load, _free, _run, args, kwargs)
                    if reused:
                        run.reused.add(_j)
                    shared = share(output) if run.calls is not None else None
                    if shared is not None:
                        run.calls[_j].append((key, shared))
                    h = shared if shared is not None else output
                    h = h[0] if isinstance(h, (tuple, list)) else h
                    run.hidden[_j].append(h if shared is not None and h.dtype == torch.float32 else h.detach().float().clone())
                    if self.bar is not None:
                        self.bar.update(1)
                    if _last:
                        self.pool.clear()  # the head comes next: its fp32 copy need not sit beside the pool
                    return output

                unit.forward = forward
                wrapped.append(unit)
            yield
        finally:
            for h in handles:
                h.remove()
            for unit in wrapped:
                del unit.forward
            for unit, free in kept:
                free(unit, (), None)

    @torch.no_grad()
    def run(self, probes: Probes, progress: bool = False, record: bool = False, reuse=None) -> Run:
        """The probes through the model. ``record``: keep each block call's input fingerprint and output, so a
        later run can reuse them; ``reuse``: a :class:`reuse.Reuse` naming the recorded run this one may take
        block outputs from (see :mod:`hf_expand.reuse`)."""
        run = Run([], [[] for _ in range(self.num_layers)], [[] for _ in range(self.num_layers)] if record else None,
                  unit_calls={} if record else None)
        no_cache = {"use_cache": False} if "use_cache" in inspect.signature(self.model.forward).parameters else {}
        self.bar = tqdm(total=self.num_layers * len(probes.batches), desc=f"verifying {self.what}", unit="block",
                        disable=not progress, leave=False)
        try:
            with self._hooks(run, reuse):
                for self._batch, batch in enumerate(probes.batches):
                    try:
                        out = self.model(**batch, **no_cache)
                    except (AttributeError, TypeError, ValueError, IndexError, RuntimeError) as exc:
                        if self.what != "base" or not _raised_by_transformers(exc):
                            raise  # the grown side failing where the base ran, or the streaming itself: ours
                        import transformers

                        from .errors import UnsupportedArchitecture

                        first = (str(exc).strip().splitlines() or [""])[0]
                        raise UnsupportedArchitecture(
                            f"the base model's own forward ({type(self.model).__name__}, transformers "
                            f"{transformers.__version__}) fails on text-only probes ({type(exc).__name__}: {first}); "
                            f"hf-expand verifies growth by running it, so it cannot grow or verify this checkpoint; "
                            f"nothing was written") from None
                    run.outputs.append(_main_output(out).float())
        finally:
            self.bar.close()
            self.bar = None
        return run


def kl_divergence(ref: list[torch.Tensor], grown: list[torch.Tensor], probes: Probes,
                  exclude: list[tuple[int, int]] | None = None) -> dict[str, float]:
    """KL(reference || grown) of the softmax over the reference's outputs (the grown model's probabilities of
    the same entries, not renormalised: mass moved to new outputs counts), mean and max over probe positions."""
    total, worst, n = 0.0, 0.0, 0
    for a, b, batch in zip(ref, grown, probes.batches):
        if a.ndim < 2 or a.shape[-1] < 2:
            return {}
        keep = torch.ones(a.shape[-1], dtype=torch.bool)
        for start, stop in exclude or []:
            keep[start:stop] = False
        p = a.double().log_softmax(-1)[..., keep]
        q = b.double().log_softmax(-1)[..., : a.shape[-1]][..., keep]
        kl = (p.exp() * (p - q)).sum(-1)
        mask = _mask_of(batch, a)
        kl = kl[mask] if mask is not None else kl.reshape(-1)
        kl = kl[kl.isfinite()]
        if kl.numel():
            total, worst, n = total + float(kl.sum()), max(worst, float(kl.max())), n + kl.numel()
    return {"kl_mean": total / n, "kl_max": worst} if n else {}


def _hidden_diff(a: torch.Tensor, b: torch.Tensor, batch) -> float | None:
    """Max |a - b| over non-padded positions, on the reference's hidden units (a widened hidden state's first
    units), or None when the shapes cannot be compared."""
    if a.shape[:-1] != b.shape[:-1] or b.shape[-1] < a.shape[-1]:
        return None
    d = (a.double() - b[..., : a.shape[-1]].double()).abs()
    mask = _mask_of(batch, d)
    if mask is not None:
        d = d[mask]
    return float(d.max()) if d.numel() else 0.0


@dataclass
class Certificate:
    """What the streamed comparison measured (see module doc); ``blocks`` rows are JSON-ready."""

    max_abs_diff: float
    blocks: list[dict] = field(default_factory=list)  # {"block", "counterpart", "max_abs_diff"}
    kl: dict[str, float] = field(default_factory=dict)
    reused_modules: list[str] = field(default_factory=list)  # outside the blocks (embeddings, head)

    def first_block_over(self, tolerance: float) -> dict | None:
        return next((b for b in self.blocks if b["max_abs_diff"] is not None
                     and (math.isnan(b["max_abs_diff"]) or b["max_abs_diff"] > tolerance)), None)

    def to_record(self) -> dict:
        out = {"final_max_abs_diff": self.max_abs_diff, "kl": self.kl, "blocks": self.blocks}
        if self.reused_modules:
            out["reused_modules"] = self.reused_modules
        return out


def compare(ref: Run, grown: Run, probes: Probes, counterparts: list[int | None],
            exclude: list[tuple[int, int]] | None = None, names=("the base model", "the grown model")) -> Certificate:
    """The certificate of ``grown`` against ``ref`` (``counterparts[j]``: the reference block grown block j
    reproduces). Non-finite outputs raise :class:`NonFiniteOutputs` (see :func:`verify.max_abs_diff`)."""
    rows = []
    for j, i in enumerate(counterparts):
        if i is None or i >= len(ref.hidden) or not grown.hidden[j]:
            continue
        diffs = [_hidden_diff(a, b, batch) for a, b, batch in zip(ref.hidden[i], grown.hidden[j], probes.batches)]
        value = None if any(d is None for d in diffs) else max(diffs, default=0.0)
        if value is not None and any(t.isnan().any() for t in grown.hidden[j]):
            value = float("nan")
        row = {"block": j, "counterpart": i, "max_abs_diff": value}
        if j in grown.reused:
            row["reused"] = True  # same stored bytes, code and inputs as its counterpart: its output (reuse module)
        rows.append(row)
    diff = max_abs_diff(ref.outputs, grown.outputs, probes, exclude, names=names)
    return Certificate(diff, rows, kl_divergence(ref.outputs, grown.outputs, probes, exclude), sorted(grown.reused_units))


def render(cert: Certificate, tolerance: float, limit: int = 12) -> list[str]:
    """Short lines for the CLI: the final difference, KL, and the per-block table (largest first when long)."""
    lines = [f"final outputs: max |Δ| = {cert.max_abs_diff:.3g} (tolerance {tolerance:g})"]
    if cert.kl:
        lines.append(f"KL(reference || grown) on the probe positions: mean {cert.kl['kl_mean']:.3g}, "
                     f"max {cert.kl['kl_max']:.3g}")
    rows = [b for b in cert.blocks if b["max_abs_diff"] is not None]
    if rows:
        shown = rows if len(rows) <= limit else sorted(rows, key=lambda b: -b["max_abs_diff"])[:limit]
        lines.append(f"hidden state after each block ({len(rows)} blocks with a counterpart"
                     f"{'' if len(rows) <= limit else f'; {limit} largest shown'}):")
        reused = sum(1 for b in rows if b.get("reused"))
        if reused:
            lines.append(f"  ({reused} of them stored as their counterpart's bytes and fed its exact inputs: "
                         f"its output, not run again)")
        lines.extend(f"  block {b['block']:>3} (vs {b['counterpart']:>3}{', reused' if b.get('reused') else ''}): "
                     f"max |Δ| = {b['max_abs_diff']:.3g}" for b in shown)
    if cert.reused_modules:
        lines.append(f"outside the blocks, stored as the reference's bytes and fed its exact inputs (output reused): "
                     f"{', '.join(cert.reused_modules)}")
    return lines
