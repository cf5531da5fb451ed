"""Grow a model: plan each operation, execute it, verify it, and write the result with its growth record."""

from __future__ import annotations

import copy

import dataclasses
import logging
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers
from transformers.initialization import no_init_weights

from . import __version__
from .architectures import describe, encoder_decoder_problem, layout_is_inferred
from .errors import HfExpandError, NonFiniteOutputs, PreservationError, UnsupportedArchitecture
from .execute import execute
from .model_io import (
    atomic_output_dir,
    load_probe_tokenizer,
    auto_class_for,
    check_output_dir,
    copy_tokenizer_and_generation_config,
    load_config,
    load_model,
    source_dtype,
)
from .ops import sort_operations
from .ops.common import param_count
from .plan import WHOLE, Plan, compose_slices
from .record import inherit_lineage, write_record as write_growth_record
from .record import read_record as read_growth_record
from .shards import DEFAULT_MAX_SHARD_SIZE, parse_size
from .verify import Probes, default_tolerance, make_probes, max_abs_diff, new_output_measures, outputs, require_finite

log = logging.getLogger(__name__)

from .record import RECORD_FILE  # noqa: E402,F401  (re-exported: hf_expand.grow.RECORD_FILE)


@dataclass
class OpReport:
    op: str
    params: dict[str, Any]
    summary: str
    config_updates: dict[str, Any]
    params_before: int
    params_after: int
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)
    measures: dict[str, Any] = field(default_factory=dict)
    preserving: bool = True  # False: the difference is recorded, not enforced (depth_upscale)


@dataclass
class GrowthReport:
    """What growth did and what it measured; ``to_record()`` is the JSON written beside the weights."""

    operations: list[OpReport]
    seed: int
    tolerance: float
    probes: str = ""
    new_slices: dict[str, list[dict]] = field(default_factory=dict)
    modified: dict[str, list[dict]] = field(default_factory=dict)
    reloaded_max_abs_diff: float | None = None
    excluded_outputs: list[tuple[int, int]] = field(default_factory=list)  # reassigned output columns
    # What the grown model is held to: the base, or the model right after the last non-preserving operation
    reference: str = "base"
    tokenizer: Any = None  # the grown tokenizer when tokens were added (not part of the record)
    reference_outputs: Any = None  # outputs of the reference on the probes (not part of the record)
    certificate: dict | None = None  # the streamed block-by-block comparison (certificate.Certificate.to_record)

    @property
    def preserving(self) -> bool:
        return all(o.preserving for o in self.operations)

    @property
    def max_abs_diff(self) -> float:
        """The largest difference that preservation was checked against (non-preserving operations'
        recorded differences are in ``recorded_differences``)."""
        diffs = [o.max_abs_diff for o in self.operations if o.max_abs_diff is not None and o.preserving]
        if self.reloaded_max_abs_diff is not None:
            diffs.append(self.reloaded_max_abs_diff)
        return max(diffs, default=0.0)

    @property
    def recorded_differences(self) -> list[dict[str, Any]]:
        """Non-preserving operations and how much each changed the outputs (recorded, not enforced)."""
        return [{"op": o.op, "max_abs_diff": o.max_abs_diff} for o in self.operations if not o.preserving]

    def to_record(self, **extra) -> dict[str, Any]:
        return {
            "hf_expand_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra,
            "seed": self.seed,
            "tolerance": self.tolerance,
            "probes": self.probes,
            "operations": [asdict(o) for o in self.operations],
            "verification": {
                "max_abs_diff": self.max_abs_diff,
                "reloaded_max_abs_diff": self.reloaded_max_abs_diff,
                "compared_with": self.reference,
                "function_preserving": self.preserving,
                "recorded_differences": self.recorded_differences,
                **({"certificate": self.certificate} if self.certificate is not None else {}),
            },
            "new_slices": self.new_slices,
            "modified": self.modified,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        }


NEVER_PRESERVED = "a model that computes NaN or inf is never function-preserving; --accept-difference does not apply"


def _reference_name(reference: str) -> str:
    """``GrowthReport.reference`` as the subject of a sentence ("base" -> "the base model")."""
    return "the base model" if reference == "base" else reference


def plan_growth(config, operations: Sequence, model_cls=None) -> list[Plan]:
    """Plans for ``operations`` applied in order to ``config``; reads no weights (used by ``--dry-run``).
    A multimodal wrapper's plans are its text model's, lifted onto it (see :mod:`hf_expand.multimodal`)."""
    from .multimodal import TextTower, is_wrapper

    if is_wrapper(config):
        return TextTower(config, model_cls).plans(operations)
    problem = encoder_decoder_problem(config)
    if problem:  # before any operation's own checks: no operation applies
        raise UnsupportedArchitecture(problem)
    plans = []
    for op in sort_operations(operations):
        layout = describe(config, model_cls)
        plan = op.plan(config, layout)
        if layout.family.inferred:
            _check_plan_fits(plan, layout)
        plans.append(plan)
        config = plan.new_config
    return plans


def _check_plan_fits(plan: Plan, layout) -> None:
    """An inferred layout's plan must produce exactly the tensors, and shapes, that the model class builds for
    the grown config (a hybrid block whose kind depends on its index, an FFN size another field also sets):
    refused in one line before any weight is read."""
    from .architectures import meta_model

    meta = {n: tuple(p.shape) for n, p in meta_model(plan.new_config, layout.model_cls).named_parameters()}
    made = {s.target: tuple(s.shape_after) for s in plan.steps}
    wrong = next(((n, made.get(n), shape) for n, shape in meta.items() if made.get(n) != shape), None)
    if wrong is not None:
        name, planned, built = wrong
        what = "no tensor" if planned is None else f"shape {list(planned)}"
        raise UnsupportedArchitecture(
            f"{plan.op} is not supported for {layout.model_type} with a layout inferred from transformers: the plan gives "
            f"{name} {what}, the grown {layout.model_cls.__name__} has {list(built)}; add "
            f"hf_expand/architectures/data/{layout.model_type}.json to describe it (or refuse {plan.op} there)")


def render_plans(config, plans: list[Plan], verbose: bool = True) -> str:
    from .multimodal import is_wrapper

    lines = []
    for plan, before in zip(plans, [config] + [p.new_config for p in plans[:-1]]):
        n0, n1 = (meta_model_for_count(auto_class_for(c), c) if is_wrapper(c) else param_count(describe(c))
                  for c in (before, plan.new_config))
        lines.append(plan.render(verbose))
        lines.append(f"  parameters: {n0:,} -> {n1:,}")
    return "\n".join(lines)


def _build(cls, config, state_dict: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor] | None = None):
    """Instantiate ``cls`` for ``config`` without random init and load ``state_dict`` into it. ``buffers``: the
    previous model's persistent buffers that no plan step lists (DeepSeek-V3's trained selection bias): kept where
    the new model has a buffer of that name and shape, instead of the value its __init__ computes."""
    with no_init_weights():
        model = cls(config)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # as from_pretrained does: tied tensors are one parameter in the grown model too
    own = dict(model.named_buffers())
    state_dict = {**{n: v for n, v in (buffers or {}).items() if n in own and own[n].shape == v.shape},
                  **state_dict}
    result = model.load_state_dict(state_dict, strict=False)
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    missing = [k for k in result.missing_keys if k in params]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"grown state dict does not fit {cls.__name__}: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model.eval()


def grow_model(
    model,
    operations: Sequence,
    seed: int = 0,
    tolerance: float | None = None,
    probes: Probes | None = None,
    accept_difference: bool = False,
    progress: bool = False,
    base_outputs: list[torch.Tensor] | None = None,
):
    """Apply ``operations`` to an in-memory ``PreTrainedModel``; return ``(grown_model, GrowthReport)``.

    Each operation is planned from the current config, executed on the state dict, and verified
    against the base model's outputs on ``probes`` (fp32). Above ``tolerance`` it raises
    :class:`PreservationError` unless ``accept_difference``. A non-preserving operation
    (``depth_upscale``) has its difference recorded instead, and the operations after it are held to
    the model it produced (``report.reference``). ``base_outputs`` (the base model's
    ``outputs`` on ``probes``) may be passed when the caller already has them.

    The caller's model is left as it was (dtype, device, values, train/eval mode). The maths runs in fp32 on
    the CPU (on an fp32 copy when the model is in another dtype or on another device); the grown model comes
    back in the model's dtype, on its device, with its generation config and its non-persistent buffers
    (a rotary ``inv_freq`` rounded by ``.to(bfloat16)`` stays as the base has it).
    """
    # The maths runs in fp32 whatever the model's dtype, so the in-memory check uses the fp32 tolerance;
    # rounding to the checkpoint's dtype is judged after saving (grow_checkpoint's reload check).
    tolerance = default_tolerance(torch.float32) if tolerance is None else tolerance
    problem = _model_problem(model)
    if problem:
        raise HfExpandError(problem)
    problem = encoder_decoder_problem(model.config)
    if problem:  # refused before the base model runs (its forward wants decoder inputs too)
        raise UnsupportedArchitecture(problem)
    caller, was_training = model, model.training
    dtype, device = _dtype_and_device(model)
    model = fp32_cpu(model).eval()
    try:
        grown, report = _grow_in_fp32(model, operations, seed, tolerance, probes, accept_difference, progress,
                                      base_outputs)
    finally:
        caller.train(was_training)
    if dtype != torch.float32 or device.type != "cpu":
        grown = grown.to(device=device, dtype=dtype)
    return grown, report


def fp32_cpu(model):
    """``model`` itself when it is fp32 on the CPU, else an fp32 CPU copy (the caller's model is never cast)."""
    dtype, device = _dtype_and_device(model)
    if dtype == torch.float32 and device.type == "cpu":
        return model
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32)


def _model_problem(model) -> str | None:
    """Why ``grow_model`` cannot take this object (a wrapper, a quantised or dispatched model), or None."""
    name = type(model).__name__
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        return (f"grow_model got a peft {name}: growing it would drop or misplace its adapters; merge them first "
                f"(model = model.merge_and_unload()) or grow model.get_base_model() before adding adapters")
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return f"grow_model takes a transformers PreTrainedModel (from_pretrained / from_config), got {name}"
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        return (f"{name} is quantised: quantised weights cannot be grown exactly; grow the unquantised checkpoint "
                f"(grow_checkpoint on its folder or Hub id), then quantise the grown model")
    places = set(map(str, (getattr(model, "hf_device_map", None) or {}).values()))
    if len(places) > 1 or places & {"disk", "meta"}:  # one device ({"": "cuda:0"}) is an ordinary model
        return (f"{name} is dispatched across devices or offloaded (device_map places: {', '.join(sorted(places))}); "
                f"load it without device_map, or grow its checkpoint with grow_checkpoint, which streams it")
    return None


def _dtype_and_device(model) -> tuple[torch.dtype, torch.device]:
    """The dtype of the model's floating-point parameters (fp32 when mixed or none) and their device."""
    params = list(model.parameters())
    floats = {p.dtype for p in params if p.is_floating_point()}
    dtype = floats.pop() if len(floats) == 1 else torch.float32
    return dtype, params[0].device if params else torch.device("cpu")


def _carry_over(base, grown) -> None:
    """What a rebuilt model would otherwise take from its config: the base's non-persistent buffers (same name
    and shape; a rotary ``inv_freq`` keeps the base's rounding) and its generation config."""
    persistent = set(base.state_dict())
    grown_buffers = dict(grown.named_buffers())
    for name, value in base.named_buffers():
        target = grown_buffers.get(name)
        if name in persistent or target is None or target.shape != value.shape or not target.is_floating_point():
            continue
        # the same buffer up to the base's rounding (bf16: 4e-3 relative): take the base's bits. A value growth
        # changes on purpose (Gemma's embedding scale sqrt(hidden) after widen_hidden) stays the grown model's.
        if torch.allclose(target.float(), value.float(), rtol=1e-2, atol=0.0):
            target.data = value.detach().clone().to(target.dtype)
    if getattr(base, "generation_config", None) is not None and hasattr(grown, "generation_config"):
        grown.generation_config = copy.deepcopy(base.generation_config)


def _grow_in_fp32(model, operations, seed, tolerance, probes, accept_difference, progress, base_outputs):
    probes = probes or make_probes(model.config, seed=seed, vocab_limit=probe_vocab_limit(operations))
    base_out = base_outputs if base_outputs is not None else outputs(model, probes)
    try:  # nothing can be held to a base that computes NaN/inf
        require_finite(base_out, probes, "the base model", "base")
    except NonFiniteOutputs as exc:
        raise NonFiniteOutputs(f"{exc}: growth cannot be verified against it; nothing was written", exc.where) from None
    report = GrowthReport([], seed, tolerance, probes.description)
    ref_out = base_out  # what the next operation must reproduce
    current = model
    for op in sort_operations(operations):
        plan, = plan_growth(current.config, [op], type(model))
        state = current.state_dict()
        grown_state = dict(execute(plan, state.__getitem__, seed, progress=progress))
        params = {n for n, _ in current.named_parameters(remove_duplicate=False)}
        kept = {n: v for n, v in state.items() if n not in grown_state and n not in params}
        grown = _build(_class_after(type(current), plan.new_config), plan.new_config, grown_state, kept)
        _carry_over(current, grown)
        grown_out = outputs(grown, probes)
        if plan.new_outputs is not None and plan.new_outputs[0] < base_out[0].shape[-1]:
            report.excluded_outputs.append(plan.new_outputs)  # old (unused) columns given a new meaning
        try:  # NaN/inf is a failure whatever the tolerance, accept_difference or preserving flag
            diff = max_abs_diff(ref_out, grown_out, probes, report.excluded_outputs,
                                names=(_reference_name(report.reference), "the grown model"))
        except NonFiniteOutputs as exc:
            raise NonFiniteOutputs(f"{plan.op}: {exc}; nothing was written ({NEVER_PRESERVED})", exc.where) from None
        op_report = OpReport(plan.op, plan.params, plan.summary, plan.config_updates,
                             current.num_parameters(), grown.num_parameters(), diff, list(plan.notes),
                             preserving=plan.preserving)
        if plan.new_outputs is not None:
            _measure_new_outputs(op_report, ref_out, grown_out, probes, plan.new_outputs)
        report.operations.append(op_report)
        if "tokenizer" in plan.extra_files:
            report.tokenizer = plan.extra_files["tokenizer"]
        log.info("%s: %s; max |before - after| = %.3g%s", plan.op, plan.summary, diff,
                 "" if plan.preserving else " (recorded: not function-preserving)")
        for note in op_report.notes:
            log.info("  %s", note)
        if not plan.preserving:
            ref_out, report.reference = grown_out, f"the model right after {plan.op}"
        elif diff > tolerance and not accept_difference:
            raise PreservationError(
                f"{plan.op} changed the outputs by {diff:.3g} (> tolerance {tolerance:g}); nothing was written. "
                "Pass --accept-difference to keep it anyway, or report this as a bug"
            )
        report.new_slices = compose_slices(report.new_slices, plan, "new_slices")
        report.modified = compose_slices(report.modified, plan, "modified")
        current = grown
    # A tensor that is new as a whole is not "modified": it had no old values.
    report.modified = {k: v for k, v in report.modified.items() if report.new_slices.get(k) != [WHOLE]}
    report.reference_outputs = ref_out
    return current, report


def _measure_new_outputs(report: OpReport, ref_out, grown_out, probes: Probes, new: tuple[int, int]) -> None:
    """What appended outputs (new labels, new tokens) take on the probes, in ``report.measures`` and a note."""
    m = report.measures = new_output_measures(ref_out, grown_out, probes, new)
    report.notes.append(f"new outputs take {m['new_probability_mass']:.3%} of the probability mass on the probe "
                        f"inputs; predictions changed at {m['predictions_changed']} of {m['positions']} positions")


def grow_checkpoint(
    src: str,
    out: str | Path,
    operations: Sequence,
    seed: int = 0,
    tolerance: float | None = None,
    probe_texts: Sequence[str] | None = None,
    accept_difference: bool = False,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    command: str | None = None,
    progress: bool = False,
    base_model: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    streamed: bool | None = None,
) -> GrowthReport:
    """Grow ``src`` (folder or Hub id) into ``out``: read -> plan -> compose -> write -> verify -> record.

    A safetensors checkpoint is streamed (see :mod:`hf_expand.streamed`): tensors are read one at a time,
    each output tensor is computed by its composed chain of plan steps and written into size-bounded shards
    (``max_shard_size``), and the certificate compares the base with the folder as written, block by block,
    in stock transformers modules. Memory is about one block whatever the model's size. A checkpoint with
    only pickled ``.bin`` weights (or ``streamed=False``) takes the in-memory path (``grow_model``, then
    ``save_pretrained``), which holds the whole model in fp32 more than once.
    ``base_model``: the Hub id the card names as lineage when ``src`` is a local folder (see ``lineage``).
    """
    from .lineage import is_repo_id

    check_output_dir(out, overwrite, src)
    if base_model is not None and not is_repo_id(base_model):
        raise HfExpandError(f"--base-model {base_model!r} is not a Hub model id; use org/name")
    config = load_config(src, trust_remote_code)
    operations = with_tokenizer(operations, src, trust_remote_code)
    plans = plan_growth(config, operations)  # fail on bad input before reading any weight
    from .multimodal import text_of

    if layout_is_inferred(text_of(config).model_type):
        log.warning("no architecture data for %s: its layout is inferred from transformers (tp plan, module shapes); "
                    "the verification of this run is what vouches for it", text_of(config).model_type)
    limit = parse_size(max_shard_size)
    setup = GrowSetup(src, out, operations, seed, tolerance, probe_texts, accept_difference, overwrite,
                      trust_remote_code, command, progress, base_model, config, limit)
    from .checkpoint import has_safetensors, resolve_folder
    from .side_files import sentence_transformers_problem

    setup.folder = folder = resolve_folder(src)
    problem = sentence_transformers_problem(folder, _hidden(config), _hidden(plans[-1].new_config if plans else config))
    if problem:
        raise HfExpandError(problem)
    if streamed is not False:
        if has_safetensors(folder):
            from .streamed import bounded_heap

            with bounded_heap():
                return _grow_streamed(setup, plans, folder)
        setup.fallback = (f"{src} has no safetensors weights (only pickled .bin files): growing in memory, which holds "
                          f"the whole model in fp32 about three times; convert it to safetensors to stream it")
    return _grow_in_memory(setup)


def _hidden(config) -> int | None:
    from .multimodal import text_of

    return getattr(text_of(config), "hidden_size", None)


@dataclass
class GrowSetup:
    """The arguments of one ``grow_checkpoint`` call, shared by its stages."""

    src: str
    out: str | Path
    operations: Sequence
    seed: int
    tolerance: float | None
    probe_texts: Sequence[str] | None
    accept_difference: bool
    overwrite: bool
    trust_remote_code: bool
    command: str | None
    progress: bool
    base_model: str | None
    config: Any
    max_shard_size: int
    folder: Path | None = None  # the source's files (a Hub id's snapshot), for the non-weight files
    fallback: str = ""  # why the in-memory path is taken (said once the weights have loaded)

    def probes(self) -> Probes:
        tokenizer = load_probe_tokenizer(self.src, self.trust_remote_code) if self.probe_texts else None
        return make_probes(self.config, tokenizer, list(self.probe_texts or []), seed=self.seed,
                           vocab_limit=probe_vocab_limit(self.operations))


def _grow_in_memory(setup: GrowSetup) -> GrowthReport:
    """The whole model in fp32: ``grow_model``, ``save_pretrained``, reload, compare (pickled checkpoints)."""
    src, config = setup.src, setup.config
    model = load_model(src, config, setup.trust_remote_code)
    if setup.fallback:
        log.warning("%s", setup.fallback)
    probes = setup.probes()
    dtype = source_dtype(config)  # the checkpoint's dtype (the model itself was loaded in fp32)
    tolerance = default_tolerance(dtype) if setup.tolerance is None else setup.tolerance
    base_out = outputs(model.eval(), probes)
    in_memory_tolerance = default_tolerance(torch.float32) if setup.tolerance is None else setup.tolerance
    grown, report = grow_model(model, setup.operations, setup.seed, in_memory_tolerance, probes,
                               setup.accept_difference, setup.progress, base_out)
    report.tolerance = tolerance
    del model  # free the base weights before saving

    with atomic_output_dir(setup.out, setup.overwrite, src) as tmp:
        grown.to(dtype).save_pretrained(tmp, max_shard_size=setup.max_shard_size)
        copied = _copy_side_files(setup, tmp, report)
        # The evidence that counts: the folder as written, loaded by stock transformers.
        reloaded = auto_class_for(grown.config).from_pretrained(tmp, dtype=torch.float32)
        try:
            report.reloaded_max_abs_diff = max_abs_diff(report.reference_outputs, outputs(reloaded, probes), probes,
                                                        report.excluded_outputs,
                                                        names=(_reference_name(report.reference), "the saved model"))
        except NonFiniteOutputs as exc:
            raise NonFiniteOutputs(f"{exc}; nothing was written ({NEVER_PRESERVED})", exc.where) from None
        _check_final(report, setup.accept_difference)
        _write_record(setup, tmp, report, auto_class_for(grown.config).__name__, dtype, copied, streamed=False)
    return report


def _check_final(report: GrowthReport, accept_difference: bool, cert=None) -> None:
    log.info("reloaded from disk: max |%s - saved| = %.3g", report.reference, report.reloaded_max_abs_diff)
    if report.reloaded_max_abs_diff <= report.tolerance or accept_difference:
        return
    if cert is None:
        raise PreservationError(
            f"the saved model's outputs differ from {_reference_name(report.reference)} by "
            f"{report.reloaded_max_abs_diff:.3g} (> tolerance {report.tolerance:g}); nothing was written")
    held = [o.op for o in report.operations if o.preserving and o.max_abs_diff == report.reloaded_max_abs_diff]
    who = " + ".join(held) or "growth"
    block = cert.first_block_over(report.tolerance)
    where = (f"; the first block that differs is block {block['block']} (max |Δ| {block['max_abs_diff']:.3g} after it, "
             f"vs block {block['counterpart']} of {_reference_name(report.reference)})" if block else "")
    raise PreservationError(
        f"{who} changed the outputs by {report.reloaded_max_abs_diff:.3g} (> tolerance {report.tolerance:g}) "
        f"against {_reference_name(report.reference)}{where}; nothing was written. Pass --accept-difference to keep "
        f"it anyway, or report this as a bug")


def _copy_side_files(setup: GrowSetup, tmp: Path, report: GrowthReport) -> list[str]:
    """Every non-weight file of the source (side_files module), then its tokenizer and generation config."""
    from .model_io import TOKENIZER_FILES
    from .side_files import copy_side_files

    files, notes = copy_side_files(setup.folder, tmp) if setup.folder is not None else ([], [])
    for note in notes:
        log.warning("not copied: %s", note)
    copied = copy_tokenizer_and_generation_config(setup.src, tmp, setup.trust_remote_code)
    if report.tokenizer is not None:
        for name in (*TOKENIZER_FILES, "added_tokens.json"):  # the source's vocabulary files are stale now
            (tmp / name).unlink(missing_ok=True)
        report.tokenizer.save_pretrained(tmp)  # the grown tokenizer replaces the copied one
        copied = sorted(set(copied) | {"tokenizer"})
    return sorted(set(copied) | set(files))


def _write_record(setup: GrowSetup, tmp: Path, report: GrowthReport, auto_class: str, dtype, copied: list[str],
                  streamed: bool) -> None:
    from .card import base_license, write_card
    from .lineage import is_hub_id, no_lineage_hint, public_source, write_local

    src = setup.src
    record = report.to_record(
        source=public_source(src),
        auto_class=auto_class,
        dtype=str(dtype).removeprefix("torch."),
        copied=copied,
        command=setup.command,
    )
    record["streamed"] = streamed
    from .multimodal import text_of

    record["model_type"] = setup.config.model_type
    record["layout"] = "inferred" if layout_is_inferred(text_of(setup.config).model_type) else "data"
    record["license"] = base_license(src)
    parent = (read_growth_record(src) if Path(src).is_dir() else None) or {}
    record.update(inherit_lineage(parent))  # growing a pushed grown folder: that repo is the parent
    record["base_model"] = setup.base_model or (src if is_hub_id(src) else parent.get("base_model"))
    if not (record["base_model"] or record.get("parent_repo")):
        log.warning(no_lineage_hint(src, "--base-model ORG/NAME (recipe: model.base_model)"))
    write_growth_record(tmp, record)
    write_local(tmp, source=src)
    write_card(tmp, name=Path(setup.out).name)


def _grow_streamed(setup: GrowSetup, plans: list[Plan], folder: Path) -> GrowthReport:
    from .certificate import StreamedModel, compare
    from .checkpoint import CheckpointReader
    from .compose import Chain, layer_counterparts
    from .reuse import Reuse
    from .streamed import check_disk, meta_model, output_layout, write_grown

    src, config = setup.src, setup.config
    cls = auto_class_for(config)
    base_cls = model_class_for(cls, config)
    dtype = source_dtype(config)
    tolerance = default_tolerance(dtype) if setup.tolerance is None else setup.tolerance
    base_meta = meta_model(base_cls, config)
    reader = CheckpointReader(folder, base_meta)  # read: checks the index and every shard's header first
    _check_fits(reader, base_meta, src)
    grown_config = plans[-1].new_config if plans else config
    grown_config.dtype = dtype
    grown_meta = meta_model(model_class_for(cls, grown_config), grown_config)
    # counted now: running a meta model swaps its parameters, which unties a tied head (counted twice after)
    known = {id(config): base_meta.num_parameters(), id(grown_config): grown_meta.num_parameters()}
    layout = output_layout(grown_meta, dtype, setup.max_shard_size)
    check_disk(Path(setup.out), layout.nbytes)

    probes = setup.probes()
    chain = Chain(reader.get_float, plans, setup.seed)
    report = GrowthReport([], setup.seed, tolerance, probes.description)
    with atomic_output_dir(setup.out, setup.overwrite, src) as tmp:
        # write (in a thread: it is disk-bound) while the base runs (compute-bound)
        with Background(lambda cancelled: write_grown(tmp, layout, chain, reader, grown_meta, dtype, setup.progress,
                                                      cancelled)) as writing:
            base_run = StreamedModel(base_meta, reader.get_float, "base").run(probes, setup.progress, record=True)
            try:  # nothing can be held to a base that computes NaN/inf
                require_finite(base_run.outputs, probes, "the base model", "base")
            except NonFiniteOutputs as exc:
                raise NonFiniteOutputs(f"{exc}: growth cannot be verified against it; nothing was written",
                                       exc.where) from None
            ref_run, ref_level, pending = _references(setup, plans, config, cls, known, chain, probes, base_run,
                                                      report)
            writing.wait()
        grown_config.save_pretrained(tmp)
        _save_generation_config(grown_meta, tmp)
        copied = _copy_side_files(setup, tmp, report)
        # verify: the folder as written, read back through the same stock classes, block by block
        written = CheckpointReader(tmp, grown_meta)
        ref_config = plans[ref_level - 1].new_config if ref_level else config
        from .architectures import main_blocks

        counterparts = layer_counterparts(plans[ref_level:], main_blocks(ref_config)[0])
        # blocks stored as the base's bytes, fed the base's inputs, give the base's outputs (see reuse module)
        reuse = Reuse(base_run, base_meta, counterparts, lambda a, b: written.same_bytes(a, reader, b)) \
            if ref_level == 0 else None
        grown_run = StreamedModel(grown_meta, written.get_float, "grown").run(probes, setup.progress, reuse=reuse)
        try:
            cert = compare(ref_run, grown_run, probes, counterparts, report.excluded_outputs,
                           names=(_reference_name(report.reference), "the saved model"))
        except NonFiniteOutputs as exc:
            who = " + ".join(o.op for o in pending) or "growth"  # the operations held to this reference
            raise NonFiniteOutputs(f"{who}: {exc}; nothing was written ({NEVER_PRESERVED})", exc.where) from None
        report.reloaded_max_abs_diff = cert.max_abs_diff
        report.certificate = cert.to_record()
        for o in pending:
            o.max_abs_diff = cert.max_abs_diff
        for plan, o in zip(plans, report.operations):
            if plan.new_outputs is not None:
                _measure_new_outputs(o, ref_run.outputs, grown_run.outputs, probes, plan.new_outputs)
        for o in report.operations:
            if o.preserving:
                log.info("%s: %s", o.op, o.summary)
            for note in o.notes:
                log.info("  %s", note)
        _check_final(report, setup.accept_difference, cert)
        _write_record(setup, tmp, report, cls.__name__, dtype, copied, streamed=True)
    return report


def _references(setup, plans, config, cls, known, chain, probes, base_run, report):
    """Operation reports, slice records, and the reference the grown model is held to: the base, or the model
    right after the last non-preserving operation (computed on the fly from the composed chain). Returns
    ``(reference run, its plan level, the operation reports still waiting for a measured difference)``."""
    from .certificate import StreamedModel
    from .streamed import meta_model

    n_out = base_run.outputs[0].shape[-1]
    for plan in plans:
        if plan.new_outputs is not None and plan.new_outputs[0] < n_out:
            report.excluded_outputs.append(plan.new_outputs)  # old (unused) columns given a new meaning
    ref_run, ref_level, pending = base_run, 0, []
    for k, plan in enumerate(plans):
        before = plans[k - 1].new_config if k else config
        counts = [_param_count(c, model_class_for(cls, c), known) for c in (before, plan.new_config)]
        op_report = OpReport(plan.op, plan.params, plan.summary, plan.config_updates, *counts,
                             None, list(plan.notes), preserving=plan.preserving)
        report.operations.append(op_report)
        if "tokenizer" in plan.extra_files:
            report.tokenizer = plan.extra_files["tokenizer"]
        pending.append(op_report)
        report.new_slices = compose_slices(report.new_slices, plan, "new_slices")
        report.modified = compose_slices(report.modified, plan, "modified")
        if plan.preserving:
            continue
        run = StreamedModel(meta_model(model_class_for(cls, plan.new_config), plan.new_config), chain.getter(k + 1),
                            f"after {plan.op}").run(probes, setup.progress)
        try:
            diff = max_abs_diff(ref_run.outputs, run.outputs, probes, report.excluded_outputs,
                                names=(_reference_name(report.reference), f"the model after {plan.op}"))
        except NonFiniteOutputs as exc:
            raise NonFiniteOutputs(f"{plan.op}: {exc}; nothing was written ({NEVER_PRESERVED})", exc.where) from None
        for o in pending:
            o.max_abs_diff = diff
        pending = []
        log.info("%s: %s; max |before - after| = %.3g (recorded: not function-preserving)", plan.op, plan.summary, diff)
        ref_run, ref_level, report.reference = run, k + 1, f"the model right after {plan.op}"
    report.modified = {k: v for k, v in report.modified.items() if report.new_slices.get(k) != [WHOLE]}
    return ref_run, ref_level, pending


class Background:
    """Run ``work(cancelled)`` in a thread; ``wait()`` joins it and re-raises its error. Leaving the block early
    (an error in the main thread) cancels it: ``cancelled()`` turns true and the work stops at its next tensor."""

    def __init__(self, work):
        import threading

        self._cancel = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)

    def _run(self, work):
        try:
            work(self._cancel.is_set)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by wait()
            self._error = exc

    def __enter__(self):
        self._thread.start()
        return self

    def wait(self):
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._cancel.set()
            self._thread.join()
        return False


def _class_after(model_cls, config):
    """The class of the model after an operation: ``model_cls``, unless the operation changed the family
    (``upcycle``: Llama -> Mixtral), then the class of the same head for the new config."""
    if isinstance(config, getattr(model_cls, "config_class", type(None))):
        return model_cls
    return model_class_for(auto_class_for(config), config)


def model_class_for(cls, config):
    """The model class the Auto class ``cls`` builds for ``config``."""
    mapping = getattr(cls, "_model_mapping", None)
    if mapping is not None and type(config) in mapping:
        return mapping[type(config)]
    with torch.device("meta"):  # pragma: no cover - every stock Auto class has a mapping
        return type(cls.from_config(config))


def _param_count(config, cls, known: dict) -> int:
    """Parameters of ``cls(config)`` (tied counted once), from the meta models already built when possible."""
    if id(config) in known:
        return known[id(config)]
    return meta_model_for_count(cls, config)


def meta_model_for_count(cls, config) -> int:
    from .streamed import meta_model

    return meta_model(cls, config).num_parameters()


def _check_fits(reader, base_meta, src: str) -> None:
    """The stored tensors must have the shapes config.json gives (else: the in-memory path's one-line error)."""
    state = base_meta.state_dict()
    for name, d in reader.disk.items():
        if name in state and tuple(state[name].shape) != d.shape and reader.stored(name) is not None:
            where = f"{Path(src) / 'config.json'}" if Path(src).is_dir() else f"the config.json of {src}"
            raise HfExpandError(f"{where} does not match the weights: {name} is {list(d.shape)} in the checkpoint but "
                                f"{list(state[name].shape)} by the config; use the config saved with these weights")
    params = {n for n, _ in base_meta.named_parameters(remove_duplicate=False)}
    missing = [n for n in state if n in params and not reader.has(n)]
    if missing:
        raise HfExpandError(f"{reader.folder} does not hold {missing[0]} ({len(missing)} parameters missing), which "
                            f"{type(base_meta).__name__} needs; re-download the model or use the config saved with it")


def _save_generation_config(model, folder: Path) -> None:
    """What ``save_pretrained`` writes beside the weights of a model that can generate."""
    try:
        if model.can_generate() and getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(folder)
    except (AttributeError, ValueError):  # pragma: no cover - a generation config transformers refuses to save
        pass


def probe_vocab_limit(operations: Sequence) -> int | None:
    """Probe only ids the tokenizer can produce when tokens are added (a padded vocabulary's unused ids
    become the new tokens, so their rows change on purpose)."""
    limits = [len(op.tokenizer) for op in operations if getattr(op, "tokenizer", None) is not None]
    return min(limits) if limits else None


def with_tokenizer(operations: Sequence, src: str, trust_remote_code: bool = False) -> list:
    """Give operations that need the model's tokenizer (add_tokens) the one of ``src``."""
    ops = list(operations)
    for i, op in enumerate(ops):
        if hasattr(op, "tokenizer") and op.tokenizer is None:
            try:
                tok = transformers.AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
            except (OSError, ValueError, KeyError, TypeError):
                raise HfExpandError(f"--add-tokens needs the model's tokenizer, and none could be loaded from {src}") from None
            ops[i] = dataclasses.replace(op, tokenizer=tok)
    return ops


def read_record(folder: str | Path) -> dict[str, Any]:
    """The growth record of ``folder`` (``FileNotFoundError`` when it has none; see :mod:`hf_expand.record`)."""
    record = read_growth_record(folder)
    if record is None:
        raise FileNotFoundError(Path(folder) / RECORD_FILE)
    return record
