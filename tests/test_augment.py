"""Augmentation API: every augmenter on real sentences (columns, order, reproducibility across seeds, workers
and batch sizes), WordNet offline, duplicates, DatasetDict splits, non-text cells, leakage-safe splitting,
fork safety with torch, input validation and fingerprints."""

from __future__ import annotations

import os
import signal
import string
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.register_assert_rewrite("augment_fixtures")  # it is also a plugin (pytest_plugins below)
from augment_fixtures import COPIES, sentences, source_columns, source_dataset  # noqa: E402
from hf_expand.augment import AUGMENTERS, AugmentSummary, augment_dataset, split_by_source, summarize  # noqa: E402
from hf_expand.augment import wordnet as hf_wordnet  # noqa: E402
from hf_expand.errors import HfExpandError  # noqa: E402

ALL_AUGMENTERS = [
    "synonym", "random_swap", "random_delete", "random_crop", "random_substitute",
    "spelling", "keyboard", "ocr", "random_char", "contextual", "back_translation",
]
# the session fixtures (registered once, so both test files share one WordNet folder and one set of models)
pytest_plugins = ["augment_fixtures"]
N = 48


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny models run on one torch thread here: on a 2-core machine two threads mostly wait on each
    other (back_translation's many small generate steps get 10x slower). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows(ds) -> dict[str, list]:
    """Column -> values: what two datasets must agree on to be 'identical'."""
    return ds.to_dict()


def test_every_augmenter_is_covered():
    """The parametrize list is exactly the registry (11 augmenters), so a new augmenter must be added here."""
    assert len(ALL_AUGMENTERS) == 11
    assert set(ALL_AUGMENTERS) == set(AUGMENTERS)


# ---------------------------------------------------------------------------------------------------------
# 1. every augmenter on the real sentences


@pytest.mark.parametrize("name", ALL_AUGMENTERS)
def test_rows_columns_and_order(name, augment_run):
    """n x (1 + copies) rows: each original then its copies; every column kept, non-text values equal."""
    src = source_columns()
    out = augment_run(name)
    assert len(out) == N * (1 + COPIES)
    assert out.column_names == ["text", "label", "id", "source_index", "is_augmented"]
    data = rows(out)
    for k in range(len(out)):
        i, c = divmod(k, 1 + COPIES)
        assert data["source_index"][k] == i
        assert data["is_augmented"][k] is (c != 0)
        assert data["label"][k] == src["label"][i]
        assert data["id"][k] == src["id"][i]
        assert isinstance(data["text"][k], str) and data["text"][k].strip()
        if c == 0:
            assert data["text"][k] == src["text"][i]
    assert str(out.features["source_index"].dtype) == "int64"
    assert str(out.features["is_augmented"].dtype) == "bool"


@pytest.mark.parametrize("name", ALL_AUGMENTERS)
def test_augmented_rows_differ(name, augment_run):
    """At least a quarter of the augmented rows differ from their source (back_translation: all, as nonsense)."""
    src = sentences()
    out = augment_run(name)
    changed = [t != src[i] for t, i, a in zip(out["text"], out["source_index"], out["is_augmented"]) if a]
    assert len(changed) == N * COPIES
    assert sum(changed) >= len(changed) // 4, f"{name}: only {sum(changed)} of {len(changed)} rows changed"
    if name == "back_translation":
        assert all(changed)
    summary = summarize(augment_run.source, out, "text", COPIES)
    assert summary.changed == sum(changed)
    assert (summary.rows_in, summary.rows_out, summary.augmented, summary.dropped) == (N, N * 3, N * 2, 0)


@pytest.mark.parametrize("name", ALL_AUGMENTERS)
def test_same_seed_same_output(name, augment_run, aug_specs):
    """A second, independent call with the same seed gives the same rows."""
    again = augment_dataset(source_dataset(), aug_specs[name], "text", copies=COPIES, seed=0, progress=False)
    assert rows(again) == rows(augment_run(name))
    assert again.features == augment_run(name).features


@pytest.mark.parametrize("name", ALL_AUGMENTERS)
def test_two_workers_same_output(name, augment_run):
    """num_proc=2 (forked datasets.map workers) gives the same rows as num_proc=1."""
    one = augment_run(name, num_proc=1)
    two = augment_run(name, num_proc=2)
    assert rows(two) == rows(one)
    assert rows(one) == rows(augment_run(name))


@pytest.mark.parametrize("name", ALL_AUGMENTERS)
def test_batch_size_does_not_matter(name, augment_run):
    """batch_size 8 and 64 give the same rows (every text has its own seed)."""
    assert rows(augment_run(name, batch_size=8)) == rows(augment_run(name, batch_size=64))


@pytest.mark.parametrize("name", ALL_AUGMENTERS)
def test_seed_changes_output(name, augment_run):
    """Another seed gives other text; back_translation is greedy and must instead ignore the seed."""
    base, other = rows(augment_run(name)), rows(augment_run(name, seed=1))
    assert other["source_index"] == base["source_index"]
    if name == "back_translation":
        assert other == base
    else:
        assert other["text"] != base["text"]
        differing = sum(a != b for a, b in zip(base["text"], other["text"]))
        assert differing >= N // 4, f"{name}: only {differing} rows differ between seeds"


# ---------------------------------------------------------------------------------------------------------
# 2-3. WordNet: synonyms offline, install into NLTK's layout, POS tags


def _wordnet_synonyms(wn, word: str) -> set[str]:
    return {lemma.name().replace("_", " ").lower() for s in wn.synsets(word) for lemma in s.lemmas()}


def test_synonyms_come_from_wordnet(augment_run, nltk_data_dir):
    """Replaced words (aligned by position where the word count is unchanged) are WordNet synonyms of the
    word they replace; WordNet was installed into $HF_EXPAND_NLTK_DATA on first use."""
    out = augment_run("synonym")
    folder = nltk_data_dir / "corpora" / "wordnet"
    assert (folder / "lexnames").is_file() and (folder / "data.noun").is_file()
    assert not (folder / "data.noun").is_symlink()
    wn = hf_wordnet.ensure_wordnet()
    src = sentences()
    good, bad = [], []
    for text, i, is_aug in zip(out["text"], out["source_index"], out["is_augmented"]):
        before, after = src[i].split(), text.split()
        if not is_aug or len(before) != len(after):
            continue
        for old, new in zip(before, after):
            old, new = old.strip(string.punctuation), new.strip(string.punctuation)
            if old.lower() != new.lower():
                (good if new.lower() in _wordnet_synonyms(wn, old) else bad).append((old, new))
    assert len(good) >= 20, (good, bad)
    assert len(good) >= 0.9 * (len(good) + len(bad)), bad


def test_synonym_needs_no_network(nltk_data_dir, monkeypatch):
    """Building a new synonym augmenter and running it works with every socket connection refused."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    data = source_dataset().select(range(8))
    out = augment_dataset(data, "synonym:p=0.5,max=4", "text", copies=1, seed=3, progress=False)
    assert len(out) == 16
    assert any(t != s for t, s in zip(out["text"][1::2], data["text"]))


def test_install_wordnet_copies_files(tmp_path):
    """install_wordnet copies (no symlinks) into <target>/corpora/wordnet and writes a 45-line lexnames."""
    root = hf_wordnet.install_wordnet(hf_wordnet.DEBIAN_WORDNET, tmp_path / "nltk")
    assert root == tmp_path / "nltk"
    folder = root / "corpora" / "wordnet"
    names = {p.name for p in folder.iterdir()}
    assert {"index.noun", "data.verb", "adv.exc", "lexnames"} <= names
    assert not [p for p in folder.rglob("*") if p.is_symlink()]
    assert (folder / "data.noun").stat().st_size == (hf_wordnet.DEBIAN_WORDNET / "data.noun").stat().st_size
    lexnames = (folder / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45
    assert lexnames[0].split("\t") == ["00", "adj.all", "3"]
    assert lexnames[3].split("\t") == ["03", "noun.Tops", "1"]
    assert lexnames[44].split("\t") == ["44", "adj.ppl", "3"]
    assert (folder / "lexnames").read_text() == hf_wordnet.lexnames_text()
    assert not [p for p in (root / "corpora").iterdir() if p.name.startswith(".wordnet-")]  # no temp left


def test_install_wordnet_found_by_nltk(tmp_path, monkeypatch):
    """NLTK's resource lookup accepts the installed copy (a symlinked one would be refused)."""
    import nltk

    root = hf_wordnet.install_wordnet(hf_wordnet.DEBIAN_WORDNET, tmp_path / "nltk")
    monkeypatch.setattr(nltk.data, "path", [str(root), *nltk.data.path])
    found = nltk.data.find("corpora/wordnet")
    assert Path(str(found)) == root / "corpora" / "wordnet"
    assert "automobile" in (Path(str(found)) / "index.noun").read_text()


def test_install_wordnet_replaces_existing(tmp_path):
    """A second install replaces the first (stale files go)."""
    root = hf_wordnet.install_wordnet(hf_wordnet.DEBIAN_WORDNET, tmp_path / "nltk")
    stale = root / "corpora" / "wordnet" / "stale.txt"
    stale.write_text("old")
    hf_wordnet.install_wordnet(hf_wordnet.DEBIAN_WORDNET, tmp_path / "nltk")
    assert not stale.exists()
    assert (root / "corpora" / "wordnet" / "lexnames").is_file()


def test_install_wordnet_missing_files(tmp_path):
    """A source folder without the database -> HfExpandError naming the apt-get command; nothing written."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "index.noun").write_text("")
    with pytest.raises(HfExpandError, match="apt-get install wordnet-base wordnet-sense-index") as info:
        hf_wordnet.install_wordnet(tmp_path / "src", tmp_path / "nltk")
    assert "index.verb" in str(info.value)
    assert not (tmp_path / "nltk").exists()


@pytest.mark.parametrize("tokens", [
    ["The", "cat", "sat", "on", "the", "mat", "."],
    ["frustrated", "by", "ambiguous", "instructions", ",", "the", "parents", "were", "unable"],
    ["New York", "is", "big"],
    ["hello"],
    [],
])
def test_pos_tag_one_tag_per_token(tokens):
    """pos_tag returns (token, Penn tag) for every token, in order."""
    tagged = hf_wordnet.pos_tag(tokens)
    assert [t for t, _ in tagged] == tokens
    penn = {"CC", "CD", "DT", "EX", "FW", "IN", "JJ", "JJR", "JJS", "LS", "MD", "NN", "NNS", "NNP", "NNPS", "PDT",
            "POS", "PRP", "PRP$", "RB", "RBR", "RBS", "RP", "SYM", "TO", "UH", "VB", "VBD", "VBG", "VBN", "VBP",
            "VBZ", "WDT", "WP", "WP$", "WRB", ".", ",", ":", "(", ")", "''", "``", "#", "$"}
    assert all(tag in penn for _, tag in tagged), tagged


def test_pos_tag_tags_are_meaningful():
    """Nouns, verbs and determiners get the expected tags (the tagger really tags)."""
    tags = dict(hf_wordnet.pos_tag(["the", "cat", "sat", "quickly"]))
    assert tags["the"] == "DT" and tags["cat"].startswith("NN") and tags["sat"].startswith("VB")
    assert tags["quickly"] == "RB"


# ---------------------------------------------------------------------------------------------------------
# 4. duplicates


def _one_word_data():
    from datasets import Dataset

    return Dataset.from_dict({"text": ["hello", "the cat sat on the warm mat today"], "n": [0, 1]})


def test_duplicates_kept_and_counted():
    """random_swap cannot change a one-word sentence: with duplicates='keep' its copies stay and are counted."""
    data = _one_word_data()
    out = augment_dataset(data, "random_swap", "text", copies=3, progress=False)
    assert len(out) == 8
    assert out["text"][1:4] == ["hello"] * 3
    summary = summarize(data, out, "text", 3)
    assert summary.duplicates >= 3 and summary.dropped == 0


def test_duplicates_dropped():
    """duplicates='drop' removes augmented rows identical to the original (the one-word sentence's copies)."""
    data = _one_word_data()
    out = augment_dataset(data, "random_swap", "text", copies=3, duplicates="drop", progress=False)
    assert out["source_index"].count(0) == 1  # only the original of "hello"
    assert out["is_augmented"][0] is False
    kept = [t for t, i, a in zip(out["text"], out["source_index"], out["is_augmented"]) if a and i == 1]
    assert len(kept) == len(set(kept)) and data["text"][1] not in kept
    summary = summarize(data, out, "text", 3)
    assert summary.dropped == 3 + (3 - len(kept)) and summary.duplicates == 0


def test_back_translation_copies_are_duplicates(augment_run):
    """Greedy back_translation makes identical copies: 'keep' counts 2 per row (copies=3), 'drop' removes them."""
    data = augment_run.source
    kept = augment_run("back_translation", copies=3)
    summary = summarize(data, kept, "text", 3)
    assert (summary.rows_out, summary.duplicates, summary.dropped) == (N * 4, N * 2, 0)
    dropped = augment_run("back_translation", copies=3, duplicates="drop")
    summary = summarize(data, dropped, "text", 3)
    assert (summary.rows_out, summary.augmented, summary.duplicates, summary.dropped) == (N * 2, N, 0, N * 2)
    assert rows(dropped) == rows(augment_run("back_translation", copies=1))


# ---------------------------------------------------------------------------------------------------------
# 5. DatasetDict splits


def _dataset_dict():
    from datasets import Dataset, DatasetDict

    cols = source_columns()
    train = Dataset.from_dict({k: v[:40] for k, v in cols.items()})
    test = Dataset.from_dict({k: v[40:] for k, v in cols.items()})
    return DatasetDict({"train": train, "test": test})


def test_dataset_dict_augments_train_only():
    """By default only 'train' is augmented; 'test' comes back unchanged, without the new columns."""
    data = _dataset_dict()
    out = augment_dataset(data, "random_swap", "text", copies=2, progress=False)
    assert set(out) == {"train", "test"}
    assert len(out["train"]) == 40 * 3 and "source_index" in out["train"].column_names
    assert len(out["test"]) == 8
    assert out["test"].column_names == ["text", "label", "id"]
    assert rows(out["test"]) == rows(data["test"])


def test_dataset_dict_named_splits():
    """splits=('train', 'test') augments both."""
    out = augment_dataset(_dataset_dict(), "random_swap", "text", splits=("train", "test"), progress=False)
    assert (len(out["train"]), len(out["test"])) == (80, 16)
    assert "is_augmented" in out["test"].column_names


def test_dataset_dict_missing_split():
    """A split that does not exist -> HfExpandError listing the splits there are."""
    with pytest.raises(HfExpandError, match=r"'validation' not found; splits: train, test"):
        augment_dataset(_dataset_dict(), "random_swap", "text", splits=("validation",), progress=False)


# ---------------------------------------------------------------------------------------------------------
# 6. None and non-string cells


def test_none_text_passed_through():
    """None text cells stay None in every output row and are counted in summarize().non_text."""
    from datasets import Dataset

    texts = sentences()[:10]
    texts[2] = texts[7] = None
    data = Dataset.from_dict({"text": texts, "n": list(range(10))})
    out = augment_dataset(data, "keyboard", "text", copies=2, progress=False)
    assert len(out) == 30
    for t, i in zip(out["text"], out["source_index"]):
        if i in (2, 7):
            assert t is None
        else:
            assert isinstance(t, str)
    summary = summarize(data, out, "text", 2)
    assert summary.non_text == 2
    assert summary.changed == 8 * 2  # keyboard changes every real sentence; None copies are not 'changed'


def test_non_string_column_passed_through():
    """An int column named as a text column is passed through unchanged and counted as non-text."""
    from datasets import Dataset

    data = Dataset.from_dict({"text": sentences()[:6], "num": [10, 11, 12, 13, 14, 15]})
    out = augment_dataset(data, "random_delete", ["text", "num"], copies=1, progress=False)
    assert out["num"] == [10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15]
    assert summarize(data, out, ["text", "num"], 1).non_text == 6


def test_two_text_columns_both_augmented():
    """Every named text column is augmented (with its own seeds), other columns are copied."""
    from datasets import Dataset

    texts = sentences()[:6]
    data = Dataset.from_dict({"a": texts, "b": texts, "keep": texts})
    out = augment_dataset(data, "random_swap", ["a", "b"], copies=1, progress=False)
    aug = out.filter(lambda r: r["is_augmented"])
    assert aug["keep"] == texts
    assert all(x != t for x, t in zip(aug["a"], texts)) and all(x != t for x, t in zip(aug["b"], texts))
    assert aug["a"] != aug["b"]  # columns are seeded separately


# ---------------------------------------------------------------------------------------------------------
# 7. leakage-safe split


def test_split_by_source_no_leak(augment_run):
    """Every source row's original and copies land on one side; no source_index on both sides."""
    out = augment_run("random_swap")
    parts = split_by_source(out, test_size=0.25, seed=0)
    train, test = set(parts["train"]["source_index"]), set(parts["test"]["source_index"])
    assert train and test and not train & test
    assert train | test == set(range(N))
    assert len(test) == 12
    assert len(parts["train"]) + len(parts["test"]) == len(out)
    for side in ("train", "test"):
        counts = {}
        for i in parts[side]["source_index"]:
            counts[i] = counts.get(i, 0) + 1
        assert set(counts.values()) == {1 + COPIES}
    other = split_by_source(out, test_size=0.25, seed=1)
    assert set(other["test"]["source_index"]) != test  # the seed picks the groups


def test_split_by_source_bad_input():
    """Data without source_index, or a bad test_size, is refused."""
    with pytest.raises(HfExpandError, match="source_index"):
        split_by_source(source_dataset(), 0.1)
    out = augment_dataset(source_dataset().select(range(4)), "random_swap", "text", progress=False)
    for size in (0, 1, 1.5):
        with pytest.raises(HfExpandError, match="test_size"):
            split_by_source(out, size)


# ---------------------------------------------------------------------------------------------------------
# 8. fork safety after torch has used its thread pool

FORK_SCRIPT = textwrap.dedent("""
    import sys
    import torch

    torch.set_num_threads(2)
    a = torch.randn(512, 512)
    (a @ a).sum().item()  # the parent's OpenMP pool is now initialised
    from datasets import Dataset
    from hf_expand.augment import augment_dataset

    texts = open(sys.argv[2], encoding="utf-8").read().splitlines()
    data = Dataset.from_dict({"text": texts})
    spec = "contextual:model=" + sys.argv[1]
    two = augment_dataset(data, spec, "text", copies=2, num_proc=2, progress=False)
    one = augment_dataset(data, spec, "text", copies=2, num_proc=1, progress=False)
    print("rows", len(two), "same", two.to_dict() == one.to_dict())
""")


def test_contextual_workers_after_torch_matmul(tiny_aug_models, tmp_path):
    """contextual with num_proc=2 finishes after the parent ran a torch matmul (no OpenMP hang in workers)."""
    script = tmp_path / "fork_check.py"
    script.write_text(FORK_SCRIPT)
    data_file = Path(__file__).parent / "data" / "sentences.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_aug_models["masked_lm"]), str(data_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and its forked map workers
        proc.communicate()
        pytest.fail("contextual with num_proc=2 hung after torch initialised its thread pool")
    assert proc.returncode == 0, err[-3000:]
    assert f"rows {N * 3} same True" in out, (out, err[-3000:])


# ---------------------------------------------------------------------------------------------------------
# 9 (API). bad arguments


@pytest.mark.parametrize("kwargs, message", [
    ({"copies": 0}, "copies must be"),
    ({"copies": -1}, "copies must be"),
    ({"copies": 1.5}, "copies must be"),
    ({"copies": True}, "copies must be"),
    ({"duplicates": "x"}, "duplicates must be one of keep, drop"),
    ({"num_proc": 0}, "num_proc must be"),
    ({"seed": -1}, "seed must be"),
])
def test_bad_arguments(kwargs, message):
    """Bad copies / duplicates / num_proc / seed -> HfExpandError before any work."""
    with pytest.raises(HfExpandError, match=message):
        augment_dataset(source_dataset(), "random_swap", "text", progress=False, **kwargs)


@pytest.mark.parametrize("augmenters, message", [
    ("nope", "unknown augmenter 'nope'; valid: synonym, random_swap"),
    ("random_swap:p=2", r"random_swap:p must be a share in \(0, 1\], got 2.0"),
    ("random_swap:p=abc", "random_swap:p='abc' is not a valid float"),
    ("random_swap:q=1", "has no parameter 'q'"),
    ("random_swap:min=5,max=2", "min=5 is larger than max=2"),
    ({"name": "keyboard", "max_words": 0}, "keyboard:max_words must be a whole number >= 1"),
    ({"p": 0.3}, "needs a 'name'"),
    ("contextual", "needs model="),
    ([], "no augmenter given"),
])
def test_bad_augmenter_specs(augmenters, message):
    """Unknown names, out-of-range / unparsable / unknown parameters are refused with a clear message."""
    with pytest.raises(HfExpandError, match=message):
        augment_dataset(source_dataset(), augmenters, "text", progress=False)


def test_bad_data():
    """Missing text column (columns listed), an empty dataset, already-augmented data, a non-dataset."""
    from datasets import Dataset

    with pytest.raises(HfExpandError, match="text column 'body' not found; columns: text, label, id"):
        augment_dataset(source_dataset(), "random_swap", "body", progress=False)
    empty = Dataset.from_dict({"text": []})
    with pytest.raises(HfExpandError, match="empty"):
        augment_dataset(empty, "random_swap", "text", progress=False)
    done = augment_dataset(source_dataset().select(range(2)), "random_swap", "text", progress=False)
    with pytest.raises(HfExpandError, match="already exists"):
        augment_dataset(done, "random_swap", "text", progress=False)
    with pytest.raises(HfExpandError, match="expected a datasets.Dataset"):
        augment_dataset({"text": ["a b"]}, "random_swap", "text", progress=False)


def test_dict_and_string_specs_agree():
    """A recipe dict and the equivalent spec string give the same rows."""
    data = source_dataset().select(range(10))
    a = augment_dataset(data, {"name": "keyboard", "p": 0.5, "max_words": 3}, "text", progress=False)
    b = augment_dataset(data, "keyboard:max_words=3,p=0.5", "text", progress=False)
    assert rows(a) == rows(b)


def test_chained_augmenters_and_no_original():
    """Two augmenters apply in order; keep_original=False leaves only the copies."""
    data = source_dataset().select(range(10))
    out = augment_dataset(data, ["random_substitute:word=ZZZ,p=0.2", "random_swap"], "text", copies=2,
                          keep_original=False, progress=False)
    assert len(out) == 20 and all(out["is_augmented"])
    assert out["source_index"] == [i for i in range(10) for _ in range(2)]
    assert all("ZZZ" in t for t in out["text"])


# ---------------------------------------------------------------------------------------------------------
# 11. fingerprints


def test_fingerprint_deterministic():
    """The same inputs give the same fingerprint; another seed / spec / copies gives another one."""
    data = source_dataset()
    a = augment_dataset(data, "random_swap", "text", seed=0, progress=False)
    b = augment_dataset(data, "random_swap", "text", seed=0, progress=False)
    assert a._fingerprint == b._fingerprint
    assert a._fingerprint != data._fingerprint
    others = [
        augment_dataset(data, "random_swap", "text", seed=1, progress=False),
        augment_dataset(data, "random_swap:p=0.5", "text", seed=0, progress=False),
        augment_dataset(data, "random_delete", "text", seed=0, progress=False),
        augment_dataset(data, "random_swap", "text", seed=0, copies=2, progress=False),
    ]
    prints = {a._fingerprint, *(o._fingerprint for o in others)}
    assert len(prints) == 1 + len(others)


def test_summary_str():
    """AugmentSummary prints the rows in / out line the CLI shows."""
    s = AugmentSummary(48, 144, 96, 90, 6, 0, 0, 1.25)
    assert str(s).startswith("rows in 48, rows out 144 (96 augmented, 90 changed, 6 duplicates kept, 0 dropped)")


# --- regressions from review -------------------------------------------------------------------------


def test_resaved_model_changes_output_and_fingerprint(tmp_path, tiny_aug_models):
    """Re-saving a model under the same path must not reuse the old backend or cached output."""
    from transformers import AutoTokenizer

    from augment_fixtures import minilm_path
    from hf_expand.augment.tiny_models import save_tiny_masked_lm

    folder = tmp_path / "mlm"
    ds = source_dataset()
    save_tiny_masked_lm(AutoTokenizer.from_pretrained(minilm_path()), folder, seed=0)
    first = augment_dataset(ds, [f"contextual:model={folder},p=0.5"], "text", progress=False)
    save_tiny_masked_lm(AutoTokenizer.from_pretrained(minilm_path()), folder, seed=1)
    second = augment_dataset(ds, [f"contextual:model={folder},p=0.5"], "text", progress=False)
    assert first._fingerprint != second._fingerprint
    assert first["text"] != second["text"]


def test_callers_random_state_is_restored(nltk_data_dir):
    """Augmenting reseeds per row internally but leaves the caller's random / numpy streams where they were."""
    import random

    import numpy as np

    random.seed(1)
    np.random.seed(1)
    expected = random.random(), np.random.random()
    random.seed(1)
    np.random.seed(1)
    augment_dataset(source_dataset(), ["random_swap"], "text", progress=False)
    assert (random.random(), np.random.random()) == expected


def test_literal_mask_token_leaves_text_unchanged(tiny_aug_models):
    """A sentence that already contains the mask token is not touched by contextual (masks would be ambiguous)."""
    from datasets import Dataset

    text = "[MASK] is a literal token here , said the manual"
    ds = Dataset.from_dict({"text": [text] * 4, "other": ["The quick brown fox jumps over the lazy dog"] * 4})
    out = augment_dataset(ds, [f"contextual:model={tiny_aug_models['masked_lm']},p=0.5"], ["text", "other"],
                          progress=False)
    aug = out.filter(lambda r: r["is_augmented"])
    assert set(aug["text"]) == {text}
    assert any(t != "The quick brown fox jumps over the lazy dog" for t in aug["other"])


def test_pos_tag_keeps_alignment_with_odd_tokens():
    """Empty tokens or tokens with spaces are tagged one by one, so tags never shift."""
    tags = hf_wordnet.pos_tag(["a b", "", "dog"])
    assert [t for t, _ in tags] == ["a b", "", "dog"]
    assert tags[2][1] == "NN"


def test_forked_worker_gets_its_own_wordnet_files(nltk_data_dir):
    """Parent and forked map workers must not share NLTK's open WordNet files (one shared offset gave
    garbage synsets with num_proc=2 on 10k rows): the child starts with no open handles."""
    wn = hf_wordnet.ensure_wordnet()
    assert wn.synsets("dog")  # opens the noun data file in the parent
    assert wn._data_file_map
    pid = os.fork()
    if pid == 0:  # child
        import nltk.corpus

        os._exit(0 if nltk.corpus.wordnet._data_file_map == {} else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert wn._data_file_map  # the parent keeps its own


def test_random_crop_never_raises_on_short_sentences(nltk_data_dir):
    """nlpaug's crop raises for a one-word cut 'to the right'; every seed on 1-3 word rows must work."""
    from datasets import Dataset

    ds = Dataset.from_dict({"text": ["hello", "two words", "three short words"] * 20})
    out = augment_dataset(ds, ["random_crop", "random_crop:max=1"], "text", copies=3, progress=False)
    assert len(out) == 60 * 4


def test_back_translation_leaves_blank_cells(tiny_aug_models):
    from datasets import Dataset

    ds = Dataset.from_dict({"text": ["", "   ", "The quick brown fox jumps over the lazy dog"]})
    spec = (f"back_translation:from_model={tiny_aug_models['forward']},"
            f"to_model={tiny_aug_models['backward']},max_length=8")
    out = augment_dataset(ds, [spec], "text", keep_original=False, progress=False)
    assert out["text"][:2] == ["", "   "]


def test_max_length_beyond_positions_is_refused(tiny_aug_models):
    with pytest.raises(HfExpandError, match="exceeds the model's 256 positions"):
        augment_dataset(source_dataset(), [f"contextual:model={tiny_aug_models['masked_lm']},max_length=300"], "text",
                        progress=False)


def test_contextual_replaces_non_ascii_words(tiny_aug_models):
    from datasets import Dataset

    ds = Dataset.from_dict({"text": ["Ünïcödé café naïve résumé façade"] * 6})
    out = augment_dataset(ds, [f"contextual:model={tiny_aug_models['masked_lm']},p=1"], "text", keep_original=False,
                          progress=False)
    assert any(t != ds["text"][0] for t in out["text"])


def test_summary_warns_when_a_source_row_loses_every_row(nltk_data_dir):
    from datasets import Dataset

    ds = Dataset.from_dict({"text": ["hello", "two words here now"], "y": [0, 1]})
    out = augment_dataset(ds, ["random_swap"], "text", copies=2, keep_original=False, duplicates="drop", progress=False)
    summary = summarize(ds, out, "text", copies=2)
    assert summary.sources_without_rows == 1 and "1 source rows have no output row" in str(summary)


def test_setup_wordnet_keeps_foreign_folders(tmp_path):
    foreign = tmp_path / "nd" / "corpora" / "wordnet"
    foreign.mkdir(parents=True)
    (foreign / "MYNOTES.txt").write_text("mine")
    with pytest.raises(HfExpandError, match="not written by hf-expand"):
        hf_wordnet.install_wordnet(target=tmp_path / "nd", overwrite=True)
    assert (foreign / "MYNOTES.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(HfExpandError, match="is a file"):
        hf_wordnet.install_wordnet(target=tmp_path / "afile")
    ours = hf_wordnet.install_wordnet(target=tmp_path / "fresh")
    assert hf_wordnet.install_wordnet(target=ours) == ours  # our own install may be replaced
