"""Grow a model: plan each operation, execute it, verify it, and write the result with its growth record."""

from __future__ import annotations

import dataclasses
import json
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
from .architectures import describe
from .errors import HfExpandError, NonFiniteOutputs, PreservationError
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
from .verify import Probes, default_tolerance, make_probes, max_abs_diff, new_output_measures, outputs, require_finite

log = logging.getLogger(__name__)

RECORD_FILE = "hf_expand_growth.json"


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


def plan_growth(config, operations: Sequence) -> list[Plan]:
    """Plans for ``operations`` applied in order to ``config``; reads no weights (used by ``--dry-run``)."""
    plans = []
    for op in sort_operations(operations):
        plan = op.plan(config, describe(config))
        plans.append(plan)
        config = plan.new_config
    return plans


def render_plans(config, plans: list[Plan], verbose: bool = True) -> str:
    lines = []
    for plan, before in zip(plans, [config] + [p.new_config for p in plans[:-1]]):
        n0, n1 = param_count(describe(before)), param_count(describe(plan.new_config))
        lines.append(plan.render(verbose))
        lines.append(f"  parameters: {n0:,} -> {n1:,}")
    return "\n".join(lines)


def _build(cls, config, state_dict: dict[str, torch.Tensor]):
    """Instantiate ``cls`` for ``config`` without random init and load ``state_dict`` into it."""
    with no_init_weights():
        model = cls(config)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # as from_pretrained does: tied tensors are one parameter in the grown model too
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
    ``outputs`` on ``probes``) may be passed when the caller already has them. The input model is cast to float32 in
    place (growth maths runs in fp32); its values are not changed.
    """
    # The maths runs in fp32 whatever the model's dtype, so the in-memory check uses the fp32 tolerance;
    # rounding to the checkpoint's dtype is judged after saving (grow_checkpoint's reload check).
    tolerance = default_tolerance(torch.float32) if tolerance is None else tolerance
    model = model.float().eval()
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
        layout = describe(current.config, type(model))
        plan = op.plan(current.config, layout)
        state = current.state_dict()
        grown_state = dict(execute(plan, state.__getitem__, seed, progress=progress))
        grown = _build(type(model), plan.new_config, grown_state)
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
            op_report.measures = new_output_measures(ref_out, grown_out, probes, plan.new_outputs)
            op_report.notes.append(
                f"new outputs take {op_report.measures['new_probability_mass']:.3%} of the probability mass on the probe "
                f"inputs; predictions changed at {op_report.measures['predictions_changed']} of "
                f"{op_report.measures['positions']} positions"
            )
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
) -> GrowthReport:
    """Load ``src`` (folder or Hub id), grow it, verify it reloaded from disk, write ``out`` atomically.

    ``base_model``: the Hub id the card names as lineage when ``src`` is a local folder (see ``lineage``).
    """
    from .lineage import is_hub_id, is_repo_id, no_lineage_hint

    check_output_dir(out, overwrite, src)
    if base_model is not None and not is_repo_id(base_model):
        raise HfExpandError(f"--base-model {base_model!r} is not a Hub model id; use org/name")
    config = load_config(src, trust_remote_code)
    operations = with_tokenizer(operations, src, trust_remote_code)
    plan_growth(config, operations)  # fail on bad input before reading any weight
    tokenizer = load_probe_tokenizer(src, trust_remote_code) if probe_texts else None
    model = load_model(src, config, trust_remote_code)
    probes = make_probes(model.config, tokenizer, list(probe_texts or []), seed=seed,
                         vocab_limit=probe_vocab_limit(operations))
    dtype = source_dtype(config)  # the checkpoint's dtype (the model itself was loaded in fp32)
    user_tolerance = tolerance
    tolerance = default_tolerance(dtype) if tolerance is None else tolerance
    base_out = outputs(model.eval(), probes)
    in_memory_tolerance = default_tolerance(torch.float32) if user_tolerance is None else user_tolerance
    grown, report = grow_model(model, operations, seed, in_memory_tolerance, probes, accept_difference, progress, base_out)
    report.tolerance = tolerance
    del model  # free the base weights before saving

    with atomic_output_dir(out, overwrite, src) as tmp:
        grown.to(dtype).save_pretrained(tmp)
        copied = copy_tokenizer_and_generation_config(src, tmp, trust_remote_code)
        if report.tokenizer is not None:
            report.tokenizer.save_pretrained(tmp)  # the grown tokenizer replaces the copied one
            copied = sorted(set(copied) | {"tokenizer"})
        # The evidence that counts: the folder as written, loaded by stock transformers.
        reloaded = auto_class_for(grown.config).from_pretrained(tmp, dtype=torch.float32)
        try:
            report.reloaded_max_abs_diff = max_abs_diff(report.reference_outputs, outputs(reloaded, probes), probes,
                                                        report.excluded_outputs,
                                                        names=(_reference_name(report.reference), "the saved model"))
        except NonFiniteOutputs as exc:
            raise NonFiniteOutputs(f"{exc}; nothing was written ({NEVER_PRESERVED})", exc.where) from None
        log.info("reloaded from disk: max |%s - saved| = %.3g", report.reference, report.reloaded_max_abs_diff)
        if report.reloaded_max_abs_diff > report.tolerance and not accept_difference:
            raise PreservationError(
                f"the saved model's outputs differ from {report.reference} by {report.reloaded_max_abs_diff:.3g} "
                f"(> tolerance {report.tolerance:g}); nothing was written"
            )
        from .lineage import public_source, write_local

        record = report.to_record(
            source=public_source(src),
            auto_class=auto_class_for(grown.config).__name__,
            dtype=str(dtype).removeprefix("torch."),
            copied=copied,
            command=command,
        )
        from .card import base_license, write_card

        record["license"] = base_license(src)
        parent_record = Path(src) / RECORD_FILE
        parent = json.loads(parent_record.read_text()) if parent_record.is_file() else {}
        if parent.get("pushed_to"):  # growing a grown folder that was pushed: that repo is the parent
            record["parent_repo"] = parent["pushed_to"]
        record["base_model"] = base_model or (src if is_hub_id(src) else parent.get("base_model"))
        if not (record["base_model"] or record.get("parent_repo")):
            log.warning(no_lineage_hint(src, "--base-model ORG/NAME (recipe: model.base_model)"))
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        write_local(tmp, source=src)
        write_card(tmp, name=Path(out).name)
    return report


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
    return json.loads((Path(folder) / RECORD_FILE).read_text())
