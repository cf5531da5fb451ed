"""Shared data and session fixtures for the augmentation tests (tests/test_augment*.py).

Test modules register this file once with ``pytest_plugins = ["augment_fixtures"]``: importing the fixture
functions into each module instead would give every module its own "session" instance (two WordNet folders,
two sets of models).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import minilm_path

SENTENCES_FILE = Path(__file__).parent / "data" / "sentences.txt"
COPIES = 2


def sentences() -> list[str]:
    """The 48 real English sentences, one per line."""
    lines = [line.strip() for line in SENTENCES_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) == 48, len(lines)
    return lines


def source_columns() -> dict[str, list]:
    """text + an int ``label`` + a string ``id`` column: what every augmenter test runs on."""
    texts = sentences()
    return {"text": texts, "label": [i % 3 for i in range(len(texts))], "id": [f"s{i:03d}" for i in range(len(texts))]}


def source_dataset():
    from datasets import Dataset

    return Dataset.from_dict(source_columns())


@pytest.fixture(scope="session")
def nltk_data_dir(tmp_path_factory):
    """``HF_EXPAND_NLTK_DATA`` -> an empty session folder, so the synonym augmenter installs WordNet there."""
    folder = tmp_path_factory.mktemp("nltk_data")
    old = os.environ.get("HF_EXPAND_NLTK_DATA")
    os.environ["HF_EXPAND_NLTK_DATA"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("HF_EXPAND_NLTK_DATA", None)
    else:
        os.environ["HF_EXPAND_NLTK_DATA"] = old
    try:
        import nltk

        while str(folder) in nltk.data.path:
            nltk.data.path.remove(str(folder))
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def datasets_cache(tmp_path_factory):
    """``load_dataset`` caches into a session folder instead of ~/.cache/huggingface/datasets."""
    import datasets

    folder = tmp_path_factory.mktemp("hf_datasets_cache")
    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = folder
    yield folder
    datasets.config.HF_DATASETS_CACHE = old


@pytest.fixture(scope="session")
def tiny_aug_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny random BERT masked LM and two tiny random BART translators, all with the MiniLM tokenizer."""
    from transformers import AutoTokenizer

    from hf_expand.augment.tiny_models import save_tiny_masked_lm, save_tiny_translator

    root = tmp_path_factory.mktemp("tiny_aug_models")

    def tokenizer():  # a fresh object per save: save_tiny_translator edits the one it gets
        return AutoTokenizer.from_pretrained(minilm_path())

    return {
        "masked_lm": save_tiny_masked_lm(tokenizer(), root / "masked_lm"),
        "forward": save_tiny_translator(tokenizer(), root / "forward", seed=1),
        "backward": save_tiny_translator(tokenizer(), root / "backward", seed=2),
    }


def spec_for(name: str, models: dict[str, Path]) -> str:
    """The spec string each augmenter is tested with (torch ones pointed at the tiny models)."""
    if name == "contextual":
        return f"contextual:model={models['masked_lm']}"
    if name == "back_translation":
        return f"back_translation:from_model={models['forward']},to_model={models['backward']},max_length=8"
    return name


@pytest.fixture(scope="session")
def aug_specs(tiny_aug_models, nltk_data_dir) -> dict[str, str]:
    """augmenter name -> spec string, for every registered augmenter."""
    from hf_expand.augment import AUGMENTERS

    return {name: spec_for(name, tiny_aug_models) for name in AUGMENTERS}


@pytest.fixture(scope="session")
def augment_run(aug_specs):
    """``run(name, **kwargs)`` -> ``augment_dataset`` of the source data, memoised per (name, kwargs).

    Defaults: copies=2, seed=0, progress off. Tests that check reproducibility call ``augment_dataset``
    themselves for the second run, so a memoised result is never compared with itself.
    """
    from hf_expand.augment import augment_dataset

    data = source_dataset()
    cache = {}

    def run(name: str, **kwargs):
        kwargs = {"copies": COPIES, "seed": 0, "progress": False, **kwargs}
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = augment_dataset(data, aug_specs[name], "text", **kwargs)
        return cache[key]

    run.source = data
    return run
