"""Train grown models: policies from the growth record (``new`` / ``all`` / ``lora``, a registry:
:mod:`.policies`), an Accelerate loop, a ``transformers.Trainer`` helper and offline ``evaluate`` metrics.

    from hf_expand.train import TrainArgs, train
    train(TrainArgs(model="grown", data="train.jsonl", out="trained", trainable="new", max_steps=100))

The names below are imported on first use: building the command line (``train.args``, ``train.policies``)
must not load torch.
"""

import importlib

_EXPORTS = {"TrainArgs": ".args", "train": ".loop", "evaluate_model": ".metrics", "load_metric": ".metrics",
            "MaskedAdamW": ".policy", "apply_masks": ".policy", "build_optimizer": ".policy",
            "plan_trainable": ".policy", "get_policy": ".policies", "register_policy": ".policies",
            "Policy": ".policies"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
