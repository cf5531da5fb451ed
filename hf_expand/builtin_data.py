"""Offline text classification data: WordNet glosses labelled by their lexicographer file.

``builtin:wordnet-lexnames`` in a recipe's ``data.source``: every synset's gloss (its definition, without
the quoted usage examples) from Debian's WordNet files, labelled with the synset's lexicographer file
(``noun.animal``, ``noun.artifact``, ...). Real English, available offline, and a task a sentence
encoder can learn.
"""

from __future__ import annotations

import random
import re

from .augment.wordnet import DEBIAN_WORDNET, SETUP_HINT, _LEXNAMES
from .errors import HfExpandError

BUILTIN = "builtin:wordnet-lexnames"


def check_lexnames(lexnames: list[str]) -> None:
    """At least two known lexicographer file names, no repeats."""
    unknown = [n for n in lexnames if n not in _LEXNAMES]
    if unknown:
        raise HfExpandError(f"data.lexnames: unknown lexicographer file {unknown[0]!r}; e.g. noun.animal, noun.food")
    if len(lexnames) < 2 or len(set(lexnames)) != len(lexnames):
        raise HfExpandError(f"data.lexnames: give two or more distinct lexicographer files (the classes), got {lexnames}")


def wordnet_lexname_glosses(lexnames: list[str], per_class: int, test_per_class: int, seed: int = 0):
    """(train, test) ``datasets.Dataset`` with ``text`` and ``label`` (index into ``lexnames``)."""
    from datasets import ClassLabel, Dataset, Features, Value

    check_lexnames(lexnames)
    wanted = {_LEXNAMES.index(n): i for i, n in enumerate(lexnames)}
    by_label: dict[int, list[str]] = {i: [] for i in range(len(lexnames))}
    for pos in sorted({n.split(".")[0] for n in lexnames}):
        path = DEBIAN_WORDNET / f"data.{pos}"
        if not path.is_file():
            raise HfExpandError(f"WordNet data not found at {path}; run: {SETUP_HINT}")
        for line in path.open(encoding="latin-1"):
            if line.startswith("  "):
                continue
            fields = line.split(" ", 3)
            lex = int(fields[1])
            if lex in wanted:
                gloss = line.split("|", 1)[-1]
                text = re.sub(r'"[^"]*"', "", gloss).strip(" ;\n")
                if len(text.split()) >= 3:
                    by_label[wanted[lex]].append(text)
    rng = random.Random(seed)
    train, test = [], []
    for label, texts in by_label.items():
        if len(texts) < per_class + test_per_class:
            raise HfExpandError(f"data: {lexnames[label]} has {len(texts)} glosses, fewer than "
                                f"per_class + test_per_class = {per_class + test_per_class}")
        rng.shuffle(texts)
        train += [(t, label) for t in texts[:per_class]]
        test += [(t, label) for t in texts[per_class:per_class + test_per_class]]
    rng.shuffle(train)
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(lexnames))})

    def make(rows):
        return Dataset.from_dict({"text": [t for t, _ in rows], "label": [lab for _, lab in rows]}, features=features)

    return make(train), make(test)
