"""Training data: load (same sources as ``hf-expand augment``), split, tokenize per task, collate."""

from __future__ import annotations

import math

from ..errors import HfExpandError

TASKS = ("causal-lm", "masked-lm", "classification")


def seq2seq_refusal(config) -> str:
    """Why ``hf-expand train`` does not take an encoder-decoder, and what to use instead."""
    arch = (getattr(config, "architectures", None) or [config.model_type])[0]
    return (f"{arch} is an encoder-decoder (sequence-to-sequence) model; hf-expand train takes causal LMs, masked LMs "
            f"and classifiers. Train it with transformers' Seq2SeqTrainer after "
            f"hf_expand.train.trainer.prepare_for_trainer(model, folder)")


def task_of(config, label_column: str | None) -> str:
    """The task a model's head implies (a bare encoder + --label-column means classification)."""
    arch = (getattr(config, "architectures", None) or [""])[0]
    if label_column and arch.endswith(("ForCausalLM", "ForMaskedLM")):
        raise HfExpandError(f"--label-column given, but {arch} is a language model; pass --task classification to "
                            f"train a classification head on it, or drop --label-column")
    if arch.endswith("ForCausalLM"):
        return "causal-lm"
    if arch.endswith("ForMaskedLM"):
        return "masked-lm"
    if arch.endswith("ForSequenceClassification") or label_column:
        return "classification"
    from ..architectures import is_encoder_decoder

    if is_encoder_decoder(config):
        raise HfExpandError(seq2seq_refusal(config))
    raise HfExpandError(f"cannot tell the task of a {arch or config.model_type} checkpoint; pass --task "
                        f"({', '.join(TASKS)}) or --label-column for classification")


def _one_split(data, what: str, split: str | None = None):
    from datasets import DatasetDict

    if split is not None:
        if not isinstance(data, DatasetDict):
            raise HfExpandError(f"{what} has no splits (a single dataset); drop --split")
        if split not in data:
            raise HfExpandError(f"{what} has no split {split!r}; splits: {', '.join(data)}")
        return data[split]
    if isinstance(data, DatasetDict):
        if "train" in data:
            return data["train"]
        if len(data) == 1:
            return next(iter(data.values()))
        raise HfExpandError(f"{what} has splits {', '.join(data)} but no 'train'; save the split you want alone")
    return data


def held_out_split(data, source: str, split: str | None = None, what: str = "--eval-data"):
    """(dataset, split name or None): ``split`` when given, else the ``test``, then the ``validation`` split
    of a dataset with splits; a single file or split is all evaluation data. Never the training split by
    accident: a DatasetDict without test/validation is refused with its splits listed."""
    from datasets import DatasetDict

    if not isinstance(data, DatasetDict):
        if split is not None:
            raise HfExpandError(f"{what} {source} has no splits (a single dataset); drop the split option")
        return data, None
    if split is not None:
        if split not in data:
            raise HfExpandError(f"{what} {source} has no split {split!r}; splits: {', '.join(data)}")
        return data[split], split
    for name in ("test", "validation"):
        if name in data:
            return data[name], name
    if len(data) == 1:
        return next(iter(data.values())), next(iter(data))
    raise HfExpandError(f"{what} {source} has splits {', '.join(data)} but no test or validation split; "
                        f"name the one to evaluate on (--eval-split / the recipe's split key)")


def load_train_eval(data: str, eval_data: str | None, eval_ratio: float | None, seed: int,
                    eval_split: str | None = None, config: str | None = None, revision: str | None = None,
                    split: str | None = None):
    """(train, eval or None, eval dataset {name, type, split} or None). ``config``/``revision``: of a Hub
    ``data``; ``split``: the one to train on (default: train, or the only one). An eval ratio carves by
    ``source_index`` when the data is augmented; ``--eval-data`` follows ``held_out_split``."""
    from ..augment.data_io import load_data
    from ..augment.pipeline import SOURCE_INDEX, split_by_source
    from ..lineage import public_source

    train = _one_split(load_data(data, config, revision), data, split)
    if len(train) == 0:
        raise HfExpandError(f"{data} has no rows")
    if eval_data and eval_ratio is not None:
        raise HfExpandError("give --eval-data or --eval-ratio, not both")
    if eval_split and not eval_data:
        raise HfExpandError("--eval-split names a split of --eval-data; give --eval-data too")
    if eval_data:
        ds, split = held_out_split(load_data(eval_data), eval_data, eval_split)
        name = public_source(eval_data)
        return train, ds, {"name": name, "type": name, "split": split}
    if eval_ratio is not None:
        check_eval_ratio(eval_ratio)
        if SOURCE_INDEX in train.column_names:
            parts = split_by_source(train, test_size=eval_ratio, seed=seed)
        else:
            if len(train) < 2:
                raise HfExpandError("need at least two rows to carve an eval split")
            n_test = math.ceil(eval_ratio * len(train))  # as datasets' train_test_split counts
            if n_test < 1 or len(train) - n_test < 1:
                raise HfExpandError(f"--eval-ratio {eval_ratio:g} of {len(train)} rows leaves {len(train) - n_test} for "
                                    f"training and {n_test} for evaluation; both need at least one: choose a ratio "
                                    f"between {1 / len(train):.3g} and {1 - 1 / len(train):.3g}")
            parts = train.train_test_split(test_size=eval_ratio, seed=seed)
        name = public_source(data)
        return parts["train"], parts["test"], {"name": name, "type": name,
                                               "split": f"held-out {eval_ratio:g} of the training data (seed {seed})"}
    return train, None, None


def check_eval_ratio(eval_ratio) -> None:
    """A share in (0, 1): 0 would silently mean "no evaluation", NaN and 1 leave nothing to train on."""
    if isinstance(eval_ratio, bool) or not isinstance(eval_ratio, (int, float)) or not 0 < eval_ratio < 1:
        raise HfExpandError(f"--eval-ratio must be in (0, 1), got {eval_ratio}")


def load_splits(data: str, eval_data: str | None, eval_ratio: float | None, seed: int, eval_split: str | None = None,
                config: str | None = None, revision: str | None = None, split: str | None = None):
    """(train, eval or None): ``load_train_eval`` without the description."""
    return load_train_eval(data, eval_data, eval_ratio, seed, eval_split, config, revision, split)[:2]


def check_columns(ds, text_column: str, label_column: str | None, where: str) -> None:
    for col in [text_column] + ([label_column] if label_column else []):
        if col not in ds.column_names:
            raise HfExpandError(f"column {col!r} not found in {where}; columns: {', '.join(ds.column_names)}")


def count_labels(ds, label_column: str | None):
    """Labels a fresh head needs for this data: a ``ClassLabel`` column's names, max int label + 1, or the
    sorted distinct strings."""
    if not label_column or label_column not in ds.column_names:
        return None
    from datasets import ClassLabel

    feature = ds.features.get(label_column)
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = [v for v in ds[label_column] if v is not None]
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return max(values) + 1 if min(values) >= 0 else None
    names = sorted(set(map(str, values)))
    return names or None


def label_ids(ds, label_column: str, config) -> list[int]:
    """Labels as ids in [0, num_labels): ints checked, strings mapped through ``config.label2id``."""
    values = ds[label_column]
    label2id = {str(k): int(v) for k, v in (config.label2id or {}).items()}
    out = []
    for v in values:
        if isinstance(v, str):
            if v not in label2id:
                raise HfExpandError(f"label {v!r} is not one of the model's labels ({', '.join(label2id)}); "
                                    f"add it first: hf-expand grow --add-labels {v}")
            v = label2id[v]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < config.num_labels:
            raise HfExpandError(f"label {v!r} is outside the model's {config.num_labels} labels (0..{config.num_labels - 1}); "
                                f"grow the head with hf-expand grow --add-labels")
        out.append(v)
    return out


def tokenize(ds, tokenizer, task: str, text_column: str, label_column: str | None, config, max_length: int,
             packing: bool = False):
    """Tokenized dataset with only model inputs (+ ``labels`` for classification)."""
    if label_column and task == "classification":
        ids = label_ids(ds, label_column, config)
        ds = ds.remove_columns([c for c in ds.column_names if c not in (text_column,)]).add_column("labels", ids)
    else:
        ds = ds.remove_columns([c for c in ds.column_names if c != text_column])
    ds = ds.filter(lambda t: isinstance(t, str) and t.strip() != "", input_columns=text_column)
    if len(ds) == 0:
        raise HfExpandError(f"no non-empty text in column {text_column!r}")
    want_pack = packing and task == "causal-lm"
    limit = model_max_length(config, tokenizer)
    if max_length > limit:
        import logging

        logging.getLogger("hf_expand").info("max_length %d is more than the model takes: inputs are cut at %d tokens",
                                            max_length, limit)
        max_length = limit

    def encode(batch):
        enc = tokenizer(batch[text_column], truncation=not want_pack, max_length=None if want_pack else max_length)
        if want_pack:  # concatenate with EOS between texts, cut into max_length blocks
            eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            flat = [t for ids in enc["input_ids"] for t in ids + eos]
            blocks = [flat[i:i + max_length] for i in range(0, len(flat) - max_length + 1, max_length)]
            return {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks]}
        return dict(enc)

    keep = ["labels"] if "labels" in ds.column_names else []
    return ds.map(encode, batched=True, remove_columns=[c for c in ds.column_names if c not in keep],
                  desc="tokenizing")


def model_max_length(config, tokenizer=None) -> int:
    """Longest input the model takes: the tokenizer's ``model_max_length`` when it is set and fits the
    position table (RoBERTa: 512 of 514 rows), else the table's size less 2 (tables that start after the
    padding index), as the growth probes do; unbounded when the model has no position table."""
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(positions, int) or positions <= 2:
        return 1 << 30
    declared = getattr(tokenizer, "model_max_length", None)
    return declared if isinstance(declared, int) and 0 < declared <= positions else positions - 2


def collator(task: str, tokenizer, seed: int):
    from transformers import DataCollatorWithPadding

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if task == "classification":
        return DataCollatorWithPadding(tokenizer)
    if task == "masked-lm" and tokenizer.mask_token is None:
        raise HfExpandError("masked-lm training needs a tokenizer with a mask token")
    from .lm_collator import SeededLanguageModelingCollator

    return SeededLanguageModelingCollator(tokenizer, mlm=task == "masked-lm", seed=seed)


class PositionSeededCollator:
    """Masked-LM collation whose masks depend only on (seed, process, epoch, position of the batch in its
    epoch), not on how many batches came before: a resumed run (which skips the batches it already trained
    on without collating them) draws exactly the masks of an uninterrupted run. The loop calls
    :meth:`start` before each epoch's batches (``position`` = batches skipped), and before each evaluation."""

    def __init__(self, base, seed: int, rank: int = 0):
        self.base, self.seed, self.rank = base, seed, rank
        self.epoch, self.position = 0, 0

    def start(self, epoch: int, position: int = 0) -> None:
        self.epoch, self.position = epoch, position

    def __call__(self, examples):
        import hashlib
        import os

        import torch

        key = hashlib.blake2b(f"{self.seed}/{self.rank}/{self.epoch}/{self.position}".encode(), digest_size=8).digest()
        self.base.generator = torch.Generator().manual_seed(int.from_bytes(key, "little") >> 1)
        self.base._generator_pid = os.getpid()  # (transformers would otherwise re-create it from the plain seed)
        self.position += 1
        return self.base(examples)


def restart(collate, epoch: int, position: int = 0) -> None:
    """Position a :class:`PositionSeededCollator` (no-op for the others)."""
    if isinstance(collate, PositionSeededCollator):
        collate.start(epoch, position)
