"""``hf-expand evaluate`` and the recipe's ``evaluate`` stage: metrics of checkpoints on held-out data, offline."""

from __future__ import annotations

from ..errors import HfExpandError
from .loop import TrainArgs, load_for_training


def check_eval_args(batch_size: int, max_length: int, seed: int) -> None:
    for flag, value in (("--batch-size", batch_size), ("--max-length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HfExpandError(f"{flag} must be a whole number >= 1, got {value}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise HfExpandError(f"--seed must be a whole number between 0 and 2**63 - 1, got {seed}")


def evaluate_dataset(model_path: str, ds, text_column: str = "text", label_column: str | None = None,
                     task: str | None = None, batch_size: int = 16, max_length: int = 128, seed: int = 0,
                     num_labels=None, where: str = "the data", progress: str | None = None) -> tuple[dict, bool]:
    """(metrics, whether a fresh untrained head was created) of ``model_path`` on the dataset ``ds``.

    ``num_labels``: labels of a fresh head on a bare encoder (an int, or label names), as training would
    create it; a seeded random head is what "the base model" means for a classification task.
    ``progress``: a progress bar over the batches, with this description."""
    import torch
    from tqdm.auto import tqdm
    from torch.utils.data import DataLoader

    from . import data as D
    from .metrics import evaluate_model

    check_eval_args(batch_size, max_length, seed)
    torch.manual_seed(seed)
    a = TrainArgs(model=model_path, data="", out="", text_column=text_column, label_column=label_column, task=task)
    model, tokenizer, _, task, head = load_for_training(a, num_labels or D.count_labels(ds, label_column))
    if task == "classification" and not label_column:
        raise HfExpandError("evaluating a classifier needs --label-column (the column with the true labels)")
    D.check_columns(ds, text_column, label_column if task == "classification" else None, where)
    tokens = D.tokenize(ds, tokenizer, task, text_column, label_column, model.config, max_length)
    loader = DataLoader(tokens, batch_size=batch_size, collate_fn=D.collator(task, tokenizer, seed))
    batches = tqdm(loader, desc=progress, leave=False) if progress else loader
    return evaluate_model(model, batches, task), bool(head)


def evaluate_checkpoint(model_path: str, data: str, text_column: str = "text", label_column: str | None = None,
                        task: str | None = None, batch_size: int = 16, max_length: int = 128, seed: int = 0,
                        split: str | None = None) -> dict:
    """Metrics of ``model_path`` on ``data``: its ``split``, else its test, then validation split (a
    single file is all evaluation data; a DatasetDict with neither is refused, never the train split)."""
    from ..augment.data_io import load_data
    from . import data as D

    check_eval_args(batch_size, max_length, seed)
    ds, split = D.held_out_split(load_data(data), data, split, what="--data")
    if len(ds) == 0:
        raise HfExpandError(f"{data} has no rows to evaluate")
    where = f"{data} ({split} split)" if split else data
    return evaluate_dataset(model_path, ds, text_column, label_column, task, batch_size, max_length, seed, where=where)[0]
