"""``hf-expand evaluate``: metrics of one checkpoint on one dataset, offline."""

from __future__ import annotations

from .loop import TrainArgs, load_for_training


def evaluate_checkpoint(model_path: str, data: str, text_column: str = "text", label_column: str | None = None,
                        task: str | None = None, batch_size: int = 16, max_length: int = 128, seed: int = 0) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from . import data as D
    from .metrics import evaluate_model

    torch.manual_seed(seed)
    a = TrainArgs(model=model_path, data=data, out="", text_column=text_column, label_column=label_column, task=task)
    model, tokenizer, _, task, _ = load_for_training(a)
    if task == "classification" and not label_column:
        from ..errors import HfExpandError

        raise HfExpandError("evaluating a classifier needs --label-column (the column with the true labels)")
    ds, _ = D.load_splits(data, None, None, seed)
    D.check_columns(ds, text_column, label_column if task == "classification" else None, data)
    tokens = D.tokenize(ds, tokenizer, task, text_column, label_column, model.config, max_length)
    loader = DataLoader(tokens, batch_size=batch_size, collate_fn=D.collator(task, tokenizer, seed))
    return evaluate_model(model, loader, task)
