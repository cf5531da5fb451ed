"""Streamed growth (issue 15): a safetensors checkpoint is grown tensor by tensor into size-bounded shards, and
the result is the in-memory path's result, byte for byte.

* the acceptance matrix: every family x every case (preserving and not), from a bfloat16 checkpoint, grown with
  ``streamed=True`` and ``streamed=False``: the same stored tensors (names, dtypes, shapes, bytes), the same
  config.json and side files, both folders load in stock transformers and match the base on probes (two worker
  processes grow the pairs while this process checks them: ~50 s for the whole matrix on two cores);
* sharding: ``max_shard_size`` bounds every shard (a tensor bigger than the limit gets a shard of its own), the
  index names exactly the stored tensors, and the shards hold what the single file holds;
* the growth record: ``streamed: true`` and a block-by-block certificate;
* a killed streamed run leaves no output folder, and the next run cleans up and succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from matrix import ALL_CASES, EXPECTED_UNSUPPORTED, FAMILY_CONFIGS, NON_PRESERVING_CASES, tiny_config, tiny_tokenizer
from hf_expand import AddLayers, WidenFFN, grow_checkpoint
from hf_expand.cli import main
from hf_expand.grow import RECORD_FILE
from hf_expand.model_io import auto_class_for
from hf_expand.verify import make_probes, max_abs_diff, outputs

# Every cell growth supports (the refused ones are test_preservation's, which checks their error).
MATRIX = [(family, case) for family in FAMILY_CONFIGS for case in ALL_CASES
          if (family, case) not in EXPECTED_UNSUPPORTED]
BF16_TOL = 5e-2  # the grown bf16 checkpoint vs the bf16 base, both run in fp32
# config.json keys that may differ between the two paths: none do today. A key added here must say why.
CONFIG_KEYS_ALLOWED_TO_DIFFER: frozenset[str] = frozenset()
# files whose content names the path that wrote them (record: "streamed", certificate; card: the record's numbers)
FILES_ALLOWED_TO_DIFFER = {RECORD_FILE, "README.md"}



def _load(path: Path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return auto_class_for(config).from_pretrained(path, dtype=torch.float32).eval()


def _stored(folder: Path) -> dict[str, tuple[str, torch.Tensor]]:
    """Every tensor stored in ``folder``'s ``*.safetensors`` files: name -> (file name, tensor as stored)."""
    from safetensors import safe_open

    out: dict[str, tuple[str, torch.Tensor]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for key in h.keys():
                assert key not in out, f"{key} is stored twice ({out[key][0]} and {f.name})"
                out[key] = (f.name, h.get_tensor(key))
    return out


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _tensor_differences(a: Path, b: Path) -> list[str]:
    """What differs between the tensors stored in ``a`` and ``b`` (empty: same names, dtypes, shapes, bytes)."""
    ta, tb = _stored(a), _stored(b)
    problems = []
    if ta.keys() != tb.keys():
        problems.append(f"only in {a.name}: {sorted(ta.keys() - tb.keys())[:5]}; "
                        f"only in {b.name}: {sorted(tb.keys() - ta.keys())[:5]}")
    for name in sorted(ta.keys() & tb.keys()):
        x, y = ta[name][1], tb[name][1]
        if x.dtype != y.dtype or x.shape != y.shape:
            problems.append(f"{name}: {x.dtype} {tuple(x.shape)} vs {y.dtype} {tuple(y.shape)}")
        elif not torch.equal(_raw(x), _raw(y)):
            d = (x.double() - y.double()).abs().max().item() if x.is_floating_point() else "n/a"
            problems.append(f"{name}: bytes differ (max |Δ| {d})")
    return problems


def _dict_differences(a: dict, b: dict, ignore=frozenset()) -> dict:
    missing = object()
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(a.keys() | b.keys())
            if k not in ignore and a.get(k, missing) != b.get(k, missing)}


def _hidden_entries(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# ------------------------------------------------------------------ the acceptance matrix


@dataclass
class Bf16Base:
    path: Path
    config: object  # AutoConfig of the saved bf16 copy
    model_type: type
    probes: object
    outputs: list  # the bf16 base (run in fp32) on ``probes``


@pytest.fixture(scope="module")
def bf16_bases(tiny_checkpoints, tiny_classifier_checkpoints, tmp_path_factory):
    """(family, kind) -> the fixture's checkpoint cast to bfloat16 and saved with its tokenizer (once per module),
    with the base's outputs on the probes the test compares on."""
    from transformers import AutoConfig, AutoTokenizer

    root = tmp_path_factory.mktemp("bf16")
    cache: dict[tuple[str, str], Bf16Base] = {}

    def get(family: str, kind: str) -> Bf16Base:
        if (family, kind) not in cache:
            src = (tiny_classifier_checkpoints if kind == "classifier" else tiny_checkpoints)(family)
            path = root / f"{family}-{kind}"
            _load(src).to(torch.bfloat16).save_pretrained(path)
            AutoTokenizer.from_pretrained(src).save_pretrained(path)
            config = AutoConfig.from_pretrained(path)
            assert str(config.dtype).removeprefix("torch.") == "bfloat16", config.dtype
            base = _load(path)
            probes = make_probes(base.config, seed=11)  # not the probes growth verified with
            cache[(family, kind)] = Bf16Base(path, config, type(base), probes, outputs(base, probes))
        return cache[(family, kind)]

    return get


def _quiet_worker() -> None:
    """Pool worker setup: one intra-op thread (the tiny models gain nothing from two, and two threads per process
    spin against each other and against the other processes), no log lines or progress bars on the test's stderr."""
    import logging

    import transformers

    torch.set_num_threads(1)
    logging.getLogger("hf_expand").setLevel(logging.ERROR)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _grow_both(base: str, case: str, streamed: str, in_memory: str) -> None:
    """Grow ``base`` by ``case`` twice, streamed and in memory (same operations, built fresh for each run, and
    the same seed). Runs in a pool worker: a pair takes ~0.5 s, the checks after it ~0.15 s."""
    from transformers import AutoConfig, AutoTokenizer

    _, make = ALL_CASES[case]
    config = AutoConfig.from_pretrained(base)
    for out, mode in ((streamed, True), (in_memory, False)):
        ops = make(config, AutoTokenizer.from_pretrained(base))
        grow_checkpoint(base, out, ops, seed=3, streamed=mode)


class _Pairs:
    """The cells' grows, running in a pool; ``take`` waits for one cell's folders (the pool closes after the last)."""

    def __init__(self, pool, futures: dict):
        self.pool, self.futures = pool, futures

    def take(self, family: str, case: str) -> tuple[Path, Path]:
        future, outs = self.futures.pop((family, case))
        try:
            future.result()  # the grows' own errors surface here, with the worker's traceback
        finally:
            if not self.futures:
                self.pool.shutdown(wait=False)
        return outs


@pytest.fixture(scope="module")
def grown_pairs(request, one_thread, bf16_bases, tmp_path_factory):
    """The (streamed, in-memory) folders of every selected cell, grown by two worker processes.

    The ~190 pairs of grows are most of the matrix's cost (~85 s in one process), so two worker processes grow
    them while the tests check finished pairs in this process: the cheapest way found to run the whole matrix
    (about 55 s on two cores). Only the cells selected for this session are grown, in test order; the bf16
    bases are made here while the workers start and grow the first cells."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    root = tmp_path_factory.mktemp("pairs")
    wanted = [item.callspec.params for item in request.session.items
              if getattr(item, "originalname", None) == "test_streamed_equals_in_memory_bf16"
              and Path(str(item.path)) == Path(__file__)]
    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_quiet_worker)
    futures = {}
    try:
        for params in wanted:
            family, case = params["family"], params["case"]
            base = bf16_bases(family, ALL_CASES[case][0])
            outs = (root / f"{family}-{case}-streamed", root / f"{family}-{case}-in_memory")
            futures[(family, case)] = (pool.submit(_grow_both, str(base.path), case, *map(str, outs)), outs)
        yield _Pairs(pool, futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("family,case", MATRIX)
def test_streamed_equals_in_memory_bf16(family, case, one_thread, bf16_bases, grown_pairs):
    """The same operations and seed, streamed and in memory, from a bf16 checkpoint: the same bytes."""
    import shutil

    base = bf16_bases(family, ALL_CASES[case][0])
    streamed, in_memory = grown_pairs.take(family, case)
    _check_pair(family, case, base, streamed, in_memory)
    shutil.rmtree(streamed)  # ~0.5 MB a cell; a failing cell's folders stay for a look
    shutil.rmtree(in_memory)


def _check_pair(family: str, case: str, base: Bf16Base, streamed: Path, in_memory: Path) -> None:
    # the records say which path wrote them; the streamed one carries the certificate
    rec_s = json.loads((streamed / RECORD_FILE).read_text())
    rec_m = json.loads((in_memory / RECORD_FILE).read_text())
    assert rec_s["streamed"] is True and rec_m["streamed"] is False
    assert "certificate" in rec_s["verification"] and "certificate" not in rec_m["verification"]
    cert = rec_s["verification"]["certificate"]
    assert cert["final_max_abs_diff"] == rec_s["verification"]["reloaded_max_abs_diff"]
    # same bytes, same probes (growth's own, from the seed): the same measured difference
    assert rec_s["verification"]["reloaded_max_abs_diff"] == pytest.approx(
        rec_m["verification"]["reloaded_max_abs_diff"], rel=1e-5, abs=1e-7)
    assert rec_s["dtype"] == rec_m["dtype"] == "bfloat16"

    # the stored tensors: same names, dtypes, shapes and bytes, spread over the same files
    problems = _tensor_differences(streamed, in_memory)
    assert not problems, f"{family}/{case}: streamed vs in-memory tensors differ:\n" + "\n".join(problems[:20])
    assert sorted(p.name for p in streamed.glob("*.safetensors")) == sorted(p.name for p in in_memory.glob("*.safetensors"))
    floats = {t.dtype for _, t in _stored(streamed).values() if t.is_floating_point()}
    assert floats == {torch.bfloat16}, floats

    # config.json and the side files (tokenizer, generation config)
    cs, cm = (json.loads((d / "config.json").read_text()) for d in (streamed, in_memory))
    differ = _dict_differences(cs, cm, CONFIG_KEYS_ALLOWED_TO_DIFFER)
    assert not differ, f"{family}/{case}: config.json differs (streamed, in-memory): {differ}"
    names_s = {p.name for p in streamed.iterdir()}
    assert names_s == {p.name for p in in_memory.iterdir()}
    for name in sorted(names_s - FILES_ALLOWED_TO_DIFFER):
        if not name.endswith(".safetensors") and (streamed / name).is_file():
            assert (streamed / name).read_bytes() == (in_memory / name).read_bytes(), f"{family}/{case}: {name} differs"

    # both load in stock transformers and compute the base's outputs (bf16 rounding aside)
    grown_s, grown_m = _load(streamed), _load(in_memory)
    assert type(grown_s) is type(grown_m) is base.model_type
    out_s, out_m = outputs(grown_s, base.probes), outputs(grown_m, base.probes)
    assert all(torch.equal(a, b) for a, b in zip(out_s, out_m)), "same bytes, different outputs"
    assert all(t.isfinite().all() for t in out_s)
    if case not in NON_PRESERVING_CASES:
        diff = max_abs_diff(base.outputs, out_s, base.probes)
        assert diff <= BF16_TOL, f"{family}/{case}: max |base - grown| = {diff:.3g} > {BF16_TOL}"


def test_matrix_covers_moe_and_tied_families():
    """The table the matrix runs covers MoE families, tied models and every case."""
    supported = MATRIX  # a refused cell would fail its grow; test_preservation checks EXPECTED_UNSUPPORTED
    families = {f for f, _ in supported}
    assert len(supported) >= 150, len(supported)
    assert {"mixtral", "qwen2_moe"} <= families  # experts stored per expert, fused in memory (conversions)
    tied = {f for f in families if tiny_config(f).tie_word_embeddings}
    assert {"gemma", "gpt2"} <= tied, tied  # the tied head is not stored
    assert {c for _, c in supported} == set(ALL_CASES)  # every case runs on some family


# ------------------------------------------------------------------ sharding

SHARD_LIMIT = 20_000  # bytes: the tiny grown llama (~0.8 MB fp32) takes dozens of shards; its head (25 KB) is bigger


def _shard_tensors(path: Path) -> dict[str, int]:
    """name -> stored byte size, from a shard's header."""
    n = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8: 8 + n])
    header.pop("__metadata__", None)
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()}


def test_max_shard_size_bounds_every_shard(llama_dir, tmp_path):
    from safetensors.torch import load_file

    ops = [WidenFFN(factor=1.5), AddLayers(count=2)]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    grow_checkpoint(str(llama_dir), single, ops, seed=3, streamed=True)
    grow_checkpoint(str(llama_dir), sharded, ops, seed=3, streamed=True, max_shard_size=SHARD_LIMIT)

    assert (single / "model.safetensors").is_file() and not (single / "model.safetensors.index.json").exists()
    index_path = sharded / "model.safetensors.index.json"
    assert index_path.is_file() and not (sharded / "model.safetensors").exists()
    index = json.loads(index_path.read_text())
    shards = sorted(sharded.glob("*.safetensors"))
    n = len(shards)
    assert n >= 3, [p.name for p in shards]
    assert [p.name for p in shards] == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    stored: dict[str, str] = {}
    oversized = 0
    for shard in shards:
        sizes = _shard_tensors(shard)
        assert sizes, f"{shard.name} is empty"
        if sum(sizes.values()) > SHARD_LIMIT:  # only a single tensor bigger than the limit may overflow it
            assert len(sizes) == 1 and max(sizes.values()) > SHARD_LIMIT, (shard.name, sizes)
            oversized += 1
        for name in sizes:
            assert name not in stored, f"{name} in {stored.get(name)} and {shard.name}"
            stored[name] = shard.name
    assert oversized >= 1  # the head (99 x 64 fp32 = 25 KB) exercises the exception
    assert index["weight_map"] == stored  # exactly the stored tensors, each where it is
    assert index["metadata"]["total_size"] == sum(sum(_shard_tensors(s).values()) for s in shards)

    one = load_file(single / "model.safetensors")
    assert one.keys() == stored.keys()
    for shard in shards:
        for name, t in load_file(shard).items():
            assert t.dtype == one[name].dtype and t.shape == one[name].shape and torch.equal(_raw(t), _raw(one[name])), name
    a, b = _load(sharded), _load(single)
    probes = make_probes(a.config, seed=11)
    assert all(torch.equal(x, y) for x, y in zip(outputs(a, probes), outputs(b, probes)))
    assert json.loads((sharded / RECORD_FILE).read_text())["streamed"] is True


# ------------------------------------------------------------------ the growth record's certificate


def test_record_has_a_certificate_row_for_every_grown_block(llama_dir, tmp_path):
    out = tmp_path / "grown"
    report = grow_checkpoint(str(llama_dir), out, [AddLayers(count=2)], seed=3)  # streamed by default
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["streamed"] is True
    verification = record["verification"]
    cert = verification["certificate"]
    assert set(cert) == {"final_max_abs_diff", "kl", "blocks"}
    assert cert["final_max_abs_diff"] == verification["reloaded_max_abs_diff"] == report.reloaded_max_abs_diff
    assert set(cert["kl"]) == {"kl_mean", "kl_max"} and 0 <= cert["kl"]["kl_mean"] <= cert["kl"]["kl_max"] < 1e-6

    # 3 layers + 2 identity layers: 5 rows, in order; which blocks are new, from the record itself
    new = set(record["operations"][0]["params"]["positions"])
    new_by_slices = {int(k.split(".")[2]) for k, v in record["new_slices"].items()
                     if k.startswith("model.layers.") and v == [{"axis": None}]}
    assert new == new_by_slices and len(new) == 2, (new, new_by_slices)
    rows = cert["blocks"]
    assert [r["block"] for r in rows] == list(range(5))
    old = iter(range(3))
    for j, row in enumerate(rows):
        if j in new:  # an identity block reproduces the block below it
            assert j > 0 and row["counterpart"] == rows[j - 1]["counterpart"], rows
            assert row["max_abs_diff"] == rows[j - 1]["max_abs_diff"], rows  # it adds exact zeros
        else:
            assert row["counterpart"] == next(old), rows
        assert 0 <= row["max_abs_diff"] <= record["tolerance"], row
    assert next(old, None) is None, rows  # every base block has its grown counterpart


# ------------------------------------------------------------------ a killed streamed run


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory) -> Path:
    """A tiny-vocabulary llama with wide layers (12 MB fp32), so that writing its shard takes a while."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = 256, 688, 4
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wide") / "llama"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _kill_while_writing(argv: list[str], parent: Path, name: str, timeout: float = 300.0) -> str:
    """Start ``hf-expand argv`` and SIGKILL it as soon as a shard exists in its hidden work folder (the writer has
    started); returns what was in that folder."""
    proc = subprocess.Popen([sys.executable, "-m", "hf_expand", *argv], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    seen = ""
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            tmps = [p for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-")]
            shards = [f for t in tmps for f in t.glob("*.safetensors")] if tmps else []
            if shards:
                seen = ", ".join(sorted(f"{f.name} ({f.stat().st_size:,} B)" for f in shards))
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None and not seen:
            proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (f"not killed while writing (exit {proc.returncode}): "
                                                f"{err.decode(errors='replace')[-2000:]}")
    return seen


def test_killed_streamed_run_leaves_no_output(wide_llama, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "out"
    argv = ["grow", str(wide_llama), "--out", str(out), "--widen-ffn", "1.5", "--add-layers", "1",
            "--base-model", "org/tiny", "-q"]
    seen = _kill_while_writing(argv, tmp_path, "out")
    assert seen
    assert not out.exists(), f"killed while writing ({seen}), yet {out} exists"

    assert main(argv) == 0  # run again (in this process: the kill was the real process's)
    assert json.loads((out / RECORD_FILE).read_text())["streamed"] is True
    assert not _hidden_entries(tmp_path, "out"), _hidden_entries(tmp_path, "out")  # the kill's leftovers are gone
    ref = tmp_path / "ref"  # and the result is an uninterrupted run's
    grow_checkpoint(str(wide_llama), ref, [WidenFFN(factor=1.5), AddLayers(count=1)], seed=0, base_model="org/tiny")
    a, b = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
