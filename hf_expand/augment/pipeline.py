"""Augment a ``datasets.Dataset`` / ``DatasetDict`` through a batched ``Dataset.map``.

Every source row yields its original (unless ``keep_original=False``) followed by ``copies`` augmented rows;
each output row keeps all the source columns and gains ``source_index`` and ``is_augmented``. The text of
row ``i``, copy ``c``, column ``col`` through augmenter ``k`` is driven by one seed derived from
``(seed, i, c, col, k)``, so the bytes depend on (input, specs, seed) only: not on ``num_proc``, batch size
or the cache. The dataset fingerprint is derived from the same things instead of hashing the augmenters
(which costs seconds per call for WordNet).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import sys

from .. import __version__
from ..errors import HfExpandError
from .registry import AUGMENTERS, resolve
from ..signature import path_signature
from .specs import AugmenterSpec

SOURCE_INDEX, IS_AUGMENTED = "source_index", "is_augmented"
DUPLICATE_POLICIES = ("keep", "drop")

# Size bounds (issue 14): a billion copies was OOM-killed, a hundred thousand workers is a fork bomb.
MAX_COPIES = 1000
MAX_NUM_PROC = 256
MAX_OUTPUT_ROWS = 10_000_000  # rows written per split (originals + copies); summarize() holds their text

_BACKENDS: dict[str, object] = {}  # spec string -> backend; forked map workers inherit the parent's
_MAIN_PID = os.getpid()
_threads_limited = False


def model_signature(spec: AugmenterSpec) -> str:
    """What the spec's local model folders hold, so that re-saving a model under the same path changes the
    cache key and the dataset fingerprint. Hub ids are taken as given."""
    return "".join(path_signature(value) for _, value in spec.params if isinstance(value, str) and os.path.isdir(value))


def backend(spec: AugmenterSpec, signature: str | None = None, trust_remote_code: bool = False):
    """The augmenter for ``spec`` (cached per process). ``trust_remote_code`` reaches the model loaders of
    augmenters that load models; without it a model that names custom code is refused."""
    kind = AUGMENTERS[spec.name]
    trust = bool(trust_remote_code) and kind.loads_models
    key = f"{spec}#{model_signature(spec) if signature is None else signature}#trust={trust}"
    if key not in _BACKENDS:
        _BACKENDS[key] = kind.build(spec.kwargs, trust_remote_code=trust) if kind.loads_models else kind.build(spec.kwargs)
    return _BACKENDS[key]


def check_augmenter_models(augmenters, trust_remote_code: bool = False) -> None:
    """Without ``trust_remote_code``, refuse in one line any augmenter model whose config names custom code
    (``auto_map``): configs only, before data is read or weights are loaded, and none of that code is run.
    Models that cannot be found are left to the loader (which says so in one line)."""
    if trust_remote_code:
        return
    from ..model_io import check_no_custom_code

    for spec in resolve(augmenters):
        if not AUGMENTERS[spec.name].loads_models:
            continue
        for name, value in spec.params:
            if (name == "model" or name.endswith("_model")) and isinstance(value, str):
                try:
                    check_no_custom_code(value, f"{spec.name}:{name}")
                except HfExpandError:
                    raise
                except Exception:  # noqa: BLE001 - missing/broken models: the loader reports them
                    pass


def _limit_threads_in_worker() -> None:
    """A forked worker that enters an OpenMP region the parent already used hangs; one thread each avoids it."""
    global _threads_limited
    if not _threads_limited and os.getpid() != _MAIN_PID:
        _threads_limited = True
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)


def _count(maximum: int):
    def check(value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"must be >= 1, got {value}"
        if value > maximum:
            return f"must be at most {maximum:,}, got {value}"
        return None

    return check


# the rules of the counts, shared by the command line (--copies, --num-proc) and recipes (augment.copies)
COUNT_RULES = {"copies": _count(MAX_COPIES), "num_proc": _count(MAX_NUM_PROC)}


def check_output_rows(rows: int, copies: int, keep_original: bool = True, where: str = "") -> None:
    """Refuse an output above :data:`MAX_OUTPUT_ROWS` rows, once the input's size is known (before any work)."""
    total = rows * (copies + (1 if keep_original else 0))
    if total > MAX_OUTPUT_ROWS:
        raise HfExpandError(f"{rows:,} rows{where} x ({'1 original + ' if keep_original else ''}{copies:,} copies) = "
                            f"{total:,} output rows, above the limit of {MAX_OUTPUT_ROWS:,}; use fewer copies or "
                            f"augment the data in parts")


def row_seed(seed: int, index: int, copy: int, column: str, step: int) -> int:
    digest = hashlib.blake2b(f"{seed}|{index}|{copy}|{column}|{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclasses.dataclass(frozen=True)
class _AugmentBatch:
    """The map function: picklable (specs only; backends come from the per-process cache)."""

    specs: tuple[AugmenterSpec, ...]
    signatures: tuple[str, ...]  # model_signature of each spec, computed once in the parent
    text_columns: tuple[str, ...]
    copies: int
    seed: int
    keep_original: bool
    drop_duplicates: bool
    trust_remote_code: bool = False
    tally: "AugmentSummary | None" = dataclasses.field(default=None, compare=False)  # streaming: running counts

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        _limit_threads_in_worker()
        n = len(indices)
        # augmented[col][(j, c)] for every string cell: all copies of the batch go through each augmenter at once
        augmented = {}
        for col in self.text_columns:
            jobs = [(j, c) for j in range(n) for c in range(1, self.copies + 1) if isinstance(batch[col][j], str)]
            texts = [batch[col][j] for j, _ in jobs]
            for step, spec in enumerate(self.specs):
                if texts:
                    seeds = [row_seed(self.seed, indices[j], c, col, step) for j, c in jobs]
                    texts = backend(spec, self.signatures[step], self.trust_remote_code).augment(texts, seeds)
            augmented[col] = dict(zip(jobs, texts))
        out = {key: [] for key in [*batch, SOURCE_INDEX, IS_AUGMENTED]}

        def emit(j, is_aug, texts):
            for key in batch:
                out[key].append(texts[key] if key in texts else batch[key][j])
            out[SOURCE_INDEX].append(indices[j])
            out[IS_AUGMENTED].append(is_aug)

        for j in range(n):
            seen = {tuple(batch[col][j] for col in self.text_columns)}
            if self.keep_original:
                emit(j, False, {})
            for c in range(1, self.copies + 1):
                texts = {col: augmented[col].get((j, c), batch[col][j]) for col in self.text_columns}
                key = tuple(texts[col] for col in self.text_columns)
                if self.drop_duplicates and key in seen:
                    continue
                seen.add(key)
                emit(j, True, texts)
        if self.tally is not None:  # a stream is read once: count it as it goes (summarize needs both datasets)
            src = {i: tuple(batch[col][j] for col in self.text_columns) for j, i in enumerate(indices)}
            rows = list(zip(*(out[col] for col in self.text_columns)))
            self.tally.add(_counts(src, rows, out[IS_AUGMENTED], out[SOURCE_INDEX], self.copies))
        return out


def _chosen_splits(data, splits) -> tuple[str, ...]:
    """The ``splits`` (a name or names) of a dataset dict, each checked to exist."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    missing = [s for s in splits if s not in data]
    if missing:
        raise HfExpandError(f"split {missing[0]!r} not found; splits: {', '.join(data)} (choose with --split)")
    return splits


def _load_backends(specs, trust_remote_code: bool) -> tuple[str, ...]:
    """Build every augmenter (WordNet, models) once, in this process; returns their model signatures."""
    signatures = tuple(model_signature(spec) for spec in specs)
    for spec, signature in zip(specs, signatures):
        backend(spec, signature, trust_remote_code)
    return signatures


def _check_columns(names: list[str], text_columns: tuple[str, ...], where: str) -> None:
    """The text columns exist and the columns augmentation adds do not (data augmented already)."""
    for col in text_columns:
        if col not in names:
            raise HfExpandError(f"text column {col!r} not found{where}; columns: {', '.join(names)}")
    for col in (SOURCE_INDEX, IS_AUGMENTED):
        if col in names:
            raise HfExpandError(f"column {col!r} already exists{where}: the data looks augmented already; "
                                f"augment the original data (or remove the column)")


def _check_split(ds, text_columns: tuple[str, ...], where: str) -> None:
    _check_columns(ds.column_names, text_columns, where)
    if len(ds) == 0:
        raise HfExpandError(f"the dataset{where} is empty; nothing to augment")


def augment_dataset(data, augmenters, text_columns, *, copies: int = 1, seed: int = 0, num_proc: int | None = None,
                    splits=("train",), keep_original: bool = True, duplicates: str = "keep", batch_size: int = 1000,
                    progress: bool = True, trust_remote_code: bool = False, counts: dict | None = None):
    """Augment ``data`` (a ``Dataset``, or the ``splits`` of a ``DatasetDict``) with ``augmenters`` applied in order.

    ``augmenters``: specs like ``"synonym:p=0.3"`` or dicts ``{"name": "synonym", "p": 0.3}``.
    ``duplicates``: ``"keep"`` (count them, see :func:`summarize`) or ``"drop"`` augmented rows identical to
    their original or to an earlier copy. Other splits of a ``DatasetDict`` are returned untouched, so
    evaluation data is never augmented unless named in ``splits``.
    ``trust_remote_code``: let augmenter models (``contextual``, ``back_translation``) run the custom code
    their config names (``auto_map``); off by default, when such a model is refused in one line.

    Streaming: an ``IterableDataset`` / ``IterableDatasetDict`` gives back the same, mapped lazily; its rows equal
    the non-streaming output row for row (the seeds depend on the row's position in the stream, as they do on its
    index). Pass a dict as ``counts`` to get an :class:`AugmentSummary` per split, filled in as the stream is read
    (``summarize`` would have to read the stream twice). ``num_proc`` does not apply to streams.
    """
    import numpy as np

    saved = random.getstate(), np.random.get_state()  # imports and backends may draw; the caller's streams stay
    try:
        return _augment_dataset(data, augmenters, text_columns, copies=copies, seed=seed, num_proc=num_proc,
                                splits=splits, keep_original=keep_original, duplicates=duplicates,
                                batch_size=batch_size, progress=progress, trust_remote_code=trust_remote_code,
                                counts=counts)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def _augment_dataset(data, augmenters, text_columns, *, copies, seed, num_proc, splits, keep_original, duplicates,
                     batch_size, progress, trust_remote_code, counts):
    import datasets
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, Value

    specs = tuple(resolve(augmenters))
    if not specs:
        raise HfExpandError("no augmenter given; e.g. augmenters=['synonym:p=0.3']")
    text_columns = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    if not text_columns:
        raise HfExpandError("no text column given")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise HfExpandError(f"copies must be a whole number >= 1, got {copies!r}")
    if COUNT_RULES["copies"](copies):
        raise HfExpandError(f"copies {COUNT_RULES['copies'](copies)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise HfExpandError(f"seed must be a whole number in [0, 2**63), got {seed!r}")
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise HfExpandError(f"num_proc must be a whole number >= 1, got {num_proc!r}")
    if num_proc is not None and COUNT_RULES["num_proc"](num_proc):
        raise HfExpandError(f"num_proc {COUNT_RULES['num_proc'](num_proc)}")
    if duplicates not in DUPLICATE_POLICIES:
        raise HfExpandError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {duplicates!r}")
    if not isinstance(trust_remote_code, bool):
        raise HfExpandError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    if isinstance(data, (IterableDataset, IterableDatasetDict)):
        return _augment_stream(data, specs, text_columns, copies=copies, seed=seed, num_proc=num_proc, splits=splits,
                               keep_original=keep_original, duplicates=duplicates, batch_size=batch_size,
                               trust_remote_code=trust_remote_code, counts=counts)
    if isinstance(data, DatasetDict):
        splits = _chosen_splits(data, splits)
        for s in splits:
            _check_split(data[s], text_columns, f" in split {s!r}")
            check_output_rows(len(data[s]), copies, keep_original, f" in split {s!r}")
    elif isinstance(data, Dataset):
        _check_split(data, text_columns, "")
        check_output_rows(len(data), copies, keep_original)
    else:
        raise HfExpandError(f"expected a datasets.Dataset, DatasetDict, IterableDataset or IterableDatasetDict, "
                            f"got {type(data).__name__}")

    signatures = _load_backends(specs, trust_remote_code)  # once, here, before workers fork
    if num_proc == 1:
        num_proc = None  # datasets 5 sends num_proc=1 through its worker pool: same output, ~2x slower
    if num_proc:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    fn = _AugmentBatch(specs, signatures, text_columns, copies, seed, keep_original, duplicates == "drop",
                       trust_remote_code)

    def run(ds, name):
        features = ds.features.copy()
        features[SOURCE_INDEX] = Value("int64")
        features[IS_AUGMENTED] = Value("bool")
        fingerprint = hashlib.blake2b(
            repr((ds._fingerprint, [str(s) for s in specs], signatures, text_columns, copies, seed, keep_original, duplicates,
                  __version__)).encode(), digest_size=16).hexdigest()
        was_enabled = datasets.is_progress_bar_enabled()
        if not progress:
            datasets.disable_progress_bars()
        try:
            return ds.map(fn, batched=True, batch_size=batch_size, with_indices=True, num_proc=num_proc,
                          features=features, new_fingerprint=fingerprint, desc=f"augmenting {name}")
        finally:
            if was_enabled:
                datasets.enable_progress_bars()

    if isinstance(data, Dataset):
        return run(data, "rows")
    return DatasetDict({name: run(ds, name) if name in splits else ds for name, ds in data.items()})


def _stream_features(ds, text_columns: tuple[str, ...], where: str):
    """The features of a stream (read from its first row when the source does not declare them), checked as
    :func:`_check_split` checks a dataset; an empty stream is refused here, before anything is written."""
    if ds.features is None:
        ds = ds._resolve_features()
    if not ds.features:  # None, or no column at all: the stream has no first row
        raise HfExpandError(f"the dataset{where} is empty; nothing to augment")
    _check_columns(list(ds.features), text_columns, where)
    return ds


def _augment_stream(data, specs, text_columns, *, copies, seed, num_proc, splits, keep_original, duplicates,
                    batch_size, trust_remote_code, counts):
    from datasets import IterableDataset, IterableDatasetDict, Value

    if num_proc not in (None, 1):
        raise HfExpandError("num_proc does not apply to a streamed dataset (it is read in one pass); drop --num-proc")
    if counts is not None and not isinstance(counts, dict):
        raise HfExpandError(f"counts must be a dict (it receives one AugmentSummary per split), got {counts!r}")
    if isinstance(data, IterableDatasetDict):
        splits = _chosen_splits(data, splits)
    signatures = _load_backends(specs, trust_remote_code)

    def run(ds, name, where):
        ds = _stream_features(ds, text_columns, where)
        features = ds.features.copy()
        features[SOURCE_INDEX] = Value("int64")
        features[IS_AUGMENTED] = Value("bool")
        tally = AugmentSummary(0, 0, 0, 0, 0, 0, 0)
        if counts is not None:
            counts[name] = tally
        fn = _AugmentBatch(specs, signatures, text_columns, copies, seed, keep_original, duplicates == "drop",
                           trust_remote_code, tally)
        return ds.map(fn, batched=True, batch_size=batch_size, with_indices=True, features=features)

    if isinstance(data, IterableDataset):
        return run(data, "rows", "")
    return IterableDatasetDict({name: run(ds, name, f" in split {name!r}") if name in splits else ds
                                for name, ds in data.items()})


@dataclasses.dataclass
class AugmentSummary:
    rows_in: int
    rows_out: int
    augmented: int  # augmented rows in the output
    changed: int  # augmented rows whose text differs from their source
    duplicates: int  # augmented rows (kept) identical to their source or an earlier copy
    dropped: int  # augmented rows dropped as duplicates
    non_text: int  # source cells that were None / not a string, passed through unchanged
    seconds: float = 0.0
    sources_without_rows: int = 0  # source rows with no output row (no originals + every copy dropped)

    def add(self, other: "AugmentSummary") -> None:
        """Add the counts of ``other`` (a later part of the same split) to these."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def __str__(self) -> str:
        return (f"rows in {self.rows_in:,}, rows out {self.rows_out:,} ({self.augmented:,} augmented, "
                f"{self.changed:,} changed, {self.duplicates:,} duplicates kept, {self.dropped:,} dropped); "
                f"non-text cells passed through: {self.non_text:,}; {self.seconds:.1f}s"
                + (f"; WARNING: {self.sources_without_rows:,} source rows have no output row"
                   if self.sources_without_rows else ""))


def summarize(source, augmented, text_columns, copies: int, seconds: float = 0.0) -> AugmentSummary:
    """Count what an :func:`augment_dataset` call did to one split (``source`` -> ``augmented``)."""
    text_columns = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    src = dict(enumerate(zip(*(source[col] for col in text_columns))))
    out = list(zip(*(augmented[col] for col in text_columns)))
    return _counts(src, out, augmented[IS_AUGMENTED], augmented[SOURCE_INDEX], copies, seconds)


def _counts(src: dict, out: list, flags, index, copies: int, seconds: float = 0.0) -> AugmentSummary:
    """Counts of the output rows ``out`` (text tuples, with their ``is_augmented`` flags and ``source_index``)
    made from the source rows ``src`` ({index: text tuple}); every output row of a source row must be in ``out``."""
    changed = duplicates = 0
    seen: dict[int, set] = {}
    for texts, is_aug, i in zip(out, flags, index):
        if not is_aug:
            continue
        known = seen.setdefault(i, {src[i]})
        changed += texts != src[i]
        duplicates += texts in known
        known.add(texts)
    n_aug = sum(flags)
    non_text = sum(not isinstance(v, str) for row in src.values() for v in row)
    return AugmentSummary(len(src), len(out), n_aug, changed, duplicates,
                          len(src) * copies - n_aug, non_text, seconds, len(src) - len(set(index)))


def split_by_source(dataset, test_size: float = 0.1, seed: int = 0):
    """Split an augmented dataset into ``train``/``test`` by ``source_index``: all rows made from one source
    row land on the same side, so no augmented copy of a test sentence leaks into training."""
    from datasets import DatasetDict

    if SOURCE_INDEX not in dataset.column_names:
        raise HfExpandError(f"no {SOURCE_INDEX!r} column; split_by_source works on augment_dataset output")
    groups = sorted(set(dataset[SOURCE_INDEX]))
    if not 0 < test_size < 1:
        raise HfExpandError(f"test_size must be a share in (0, 1), got {test_size}")
    if len(groups) < 2:
        raise HfExpandError("need at least two source rows to split")
    random.Random(seed).shuffle(groups)
    n_test = min(len(groups) - 1, max(1, round(len(groups) * test_size)))
    test = set(groups[:n_test])
    is_test = [i in test for i in dataset[SOURCE_INDEX]]
    return DatasetDict({
        "train": dataset.select([k for k, t in enumerate(is_test) if not t]),
        "test": dataset.select([k for k, t in enumerate(is_test) if t]),
    })

