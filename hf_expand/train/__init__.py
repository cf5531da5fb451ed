"""Train grown models: policies from the growth record (``new`` / ``all`` / ``lora``), an Accelerate loop,
a ``transformers.Trainer`` helper and offline ``evaluate`` metrics.

    from hf_expand.train import TrainArgs, train
    train(TrainArgs(model="grown", data="train.jsonl", out="trained", trainable="new", max_steps=100))
"""

from .loop import TrainArgs, train  # noqa: F401
from .metrics import evaluate_model, load_metric  # noqa: F401
from .policy import MaskedAdamW, apply_masks, build_optimizer, plan_trainable  # noqa: F401
