"""``save_grown``: write a model grown in memory (``grow_model``) as hf-expand's checkpoint path would, with
its growth record and model card, so ``hf-expand train --trainable new`` and ``push`` work on it."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("hf_expand")


def save_grown(model, report, out: str | Path, tokenizer=None, base_model: str | None = None,
               overwrite: bool = False) -> Path:
    """Save ``model`` (the first value ``grow_model`` returned) with ``report`` (the second) into ``out``: the
    weights (``save_pretrained``, the model's dtype), the tokenizer (``report.tokenizer`` when tokens were
    added, else ``tokenizer``), the growth record and the card. The folder is written atomically, and an
    existing ``out`` is replaced only with ``overwrite`` (and only if hf-expand wrote it).

    The saved folder is reloaded by its stock Auto class in fp32 and compared with ``model`` on probe inputs:
    the record keeps that difference (``saved_vs_in_memory_max_abs_diff``: 0 in fp32, the rounding in bf16),
    and ``reloaded_max_abs_diff`` bounds the saved model's difference from the base by the sum of it and the
    difference growth measured. ``base_model``: the Hub id the base was loaded from (the card's lineage)."""
    import torch

    from .card import write_card
    from .errors import HfExpandError
    from .grow import _dtype_and_device, fp32_cpu
    from .lineage import is_repo_id
    from .model_io import auto_class_for
    from .output import atomic_output_dir, check_output_dir
    from .record import write_record
    from .verify import make_probes, max_abs_diff, outputs

    if base_model is not None and not is_repo_id(base_model):
        raise HfExpandError(f"base_model {base_model!r} is not a Hub model id; use org/name")
    if not report.operations:
        raise HfExpandError("save_grown needs the report grow_model returned with the model (it lists no operation)")
    check_output_dir(out, overwrite)
    dtype, _ = _dtype_and_device(model)
    with atomic_output_dir(out, overwrite) as tmp:
        model.save_pretrained(tmp)
        tok = report.tokenizer if report.tokenizer is not None else tokenizer
        if tok is not None:
            tok.save_pretrained(tmp)
        cls = auto_class_for(model.config)
        reloaded = cls.from_pretrained(tmp, dtype=torch.float32)
        probes = make_probes(model.config, seed=report.seed)
        saved = max_abs_diff(outputs(fp32_cpu(model), probes), outputs(reloaded, probes), probes, report.excluded_outputs,
                             names=("the grown model in memory", "the saved model"))
        record = report.to_record(source=base_model or "a model in memory (grow_model)", auto_class=cls.__name__,
                                  dtype=str(dtype).removeprefix("torch."), copied=["tokenizer"] if tok else [],
                                  command="hf_expand.save_grown (Python API)")
        record["verification"]["saved_vs_in_memory_max_abs_diff"] = saved
        record["verification"]["reloaded_max_abs_diff"] = report.max_abs_diff + saved  # triangle inequality
        record.update(streamed=False, model_type=model.config.model_type, base_model=base_model)
        write_record(tmp, record)
        write_card(tmp, name=Path(out).name)
    log.info("saved %s (saved vs in memory: max |diff| %.3g)", out, saved)
    return Path(out)

