"""Fault injection (issue 14): SIGKILL grow, augment, train and run at seeded random moments, and fill the
disk under every writing command.

After every kill, ``--out`` is absent or complete (for ``train``: absent, a resumable run, or complete;
for ``run``: each stage folder absent or complete), and running the same command again (``train``: with
``--resume`` when the run folder exists) gives the result of an uninterrupted run. Under a file-size limit
(``RLIMIT_FSIZE``; writes past it fail with EFBIG) every writing command prints one line, exits 2 and
leaves nothing half-written.

The default suite kills grow and train once each and fills the disk under grow and train; ``-m slow``
runs the rest: one kill and a full disk for augment and run, and 6 kills of each command (24 kills).
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
MARKERS = {"grow": "hf_expand_growth.json", "augment": "hf_expand_augmentation.json"}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _argv(command: str, src: dict[str, Path], out: Path) -> list[str]:
    if command == "grow":
        return ["grow", str(src["model"]), "--out", str(out), "--widen-ffn", "1.5", "--add-layers", "1", "-q"]
    if command == "augment":
        return ["augment", str(SENTENCES), "--out", str(out), "--text-column", "text", "--augment", "random_swap:p=0.3",
                "--copies", "2", "-q"]
    if command == "train":
        return ["train", str(src["grown"]), "--data", str(SENTENCES), "--out", str(out), "--max-steps", "12",
                "--save-every", "3", "--lr", "1e-2", "-q"]
    if command == "run":
        return ["run", str(src["recipe"]), "--out", str(out), "-q"]
    raise ValueError(command)


def _cli(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_expand", *argv], env=_env(), capture_output=True, text=True,
                          timeout=600, **kw)


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _same_weights(a: Path, b: Path, atol: float = 0.0) -> bool:
    import torch

    ta, tb = _tensors(a), _tensors(b)
    return ta.keys() == tb.keys() and len(ta) > 0 and all(
        torch.equal(ta[k], tb[k]) if atol == 0 else torch.allclose(ta[k], tb[k], atol=atol, rtol=0) for k in ta)


def _augmented_rows(folder: Path):
    from datasets import load_from_disk

    data = load_from_disk(str(folder))
    return {k: v.to_list() for k, v in data.items()} if hasattr(data, "keys") else data.to_list()


def _model_complete(folder: Path) -> bool:
    """config, weights that load, and the record: what a finished grow/train leaves."""
    if not (folder / "config.json").is_file() or not (folder / "hf_expand_growth.json").is_file():
        return False
    json.loads((folder / "hf_expand_growth.json").read_text())
    return len(_tensors(folder)) > 0


def _state_after_kill(command: str, out: Path) -> str:
    """'absent', 'complete', or (train/run) 'resumable'; anything else fails the test."""
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and not p.name.endswith(".lock")]
    if not out.exists():
        return "absent"
    assert not out.is_symlink()
    if command == "grow":
        assert _model_complete(out), sorted(p.name for p in out.iterdir())
        return "complete"
    if command == "augment":
        assert (out / MARKERS["augment"]).is_file() and _augmented_rows(out), sorted(p.name for p in out.iterdir())
        return "complete"
    if command == "train":
        record = out / "hf_expand_growth.json"
        if record.is_file() and "training" in json.loads(record.read_text()):
            assert _model_complete(out)
            return "complete"
        # an unfinished run: its arguments and (maybe) finished checkpoints, no final record
        assert (out / "train_args.json").is_file() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
        for ckpt in (out / "checkpoints").glob("step-*"):
            assert any(ckpt.iterdir()), ckpt
        return "resumable"
    if command == "run":
        state = json.loads((out / "stages.json").read_text()) if (out / "stages.json").is_file() else {}
        for name, done in state.items():  # every stage the run says is done is there and complete
            folder = Path(done["output"])
            assert folder.exists(), (name, folder)
            if name in ("grow", "train"):
                assert _model_complete(folder), name
        return "resumable"
    raise ValueError(command, leftovers)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_checkpoints) -> dict[str, Path]:
    from hf_expand import AddLayers, grow_checkpoint

    root = tmp_path_factory.mktemp("faults")
    grown = root / "grown"
    grow_checkpoint(str(tiny_checkpoints("llama")), grown, [AddLayers(count=1)], progress=False)
    recipe = root / "r.yaml"
    recipe.write_text(f"""
model: {{id: {tiny_checkpoints('llama')}, base_model: org/tiny}}
grow:
  operations: [{{add_layers: {{count: 1}}}}]
data: {{source: {SENTENCES}, eval_ratio: 0.25}}
augment: {{augmenters: ["random_swap:p=0.2"], copies: 1}}
train: {{max_steps: 6, batch_size: 8, lr: 1.0e-3, save_every: 2}}
""")
    return {"model": tiny_checkpoints("llama"), "grown": grown, "recipe": recipe, "root": root}


@pytest.fixture(scope="module")
def references(sources):
    """``references(command)``: that command run once, uninterrupted: (output, wall seconds); cached."""
    refs: dict[str, tuple[Path, float]] = {}

    def get(command: str) -> tuple[Path, float]:
        if command not in refs:
            out = sources["root"] / f"ref-{command}"
            start = time.perf_counter()
            proc = _cli(_argv(command, sources, out))
            assert proc.returncode == 0, (command, proc.stderr[-2000:])
            refs[command] = (out, time.perf_counter() - start)
        return refs[command]
    return get


def _result(command: str, out: Path) -> Path:
    return out / "trained" if command == "run" else out


def _same_result(command: str, out: Path, ref: Path) -> bool:
    if command == "augment":
        return _augmented_rows(out) == _augmented_rows(ref)
    # grow is deterministic to the bit; training resumes exactly (README) up to float summation order
    return _same_weights(_result(command, out), _result(command, ref), atol=0.0 if command == "grow" else 1e-6)


def _rerun(command: str, src: dict, out: Path) -> subprocess.CompletedProcess:
    argv = _argv(command, src, out)
    if command == "train" and out.exists():
        argv.append("--resume")
    return _cli(argv)


def _kill_and_rerun(command: str, sources, references, kills: int, seed: int):
    rng = random.Random(f"{seed}:{command}")
    ref, seconds = references(command)
    states = []
    for i in range(kills):
        out = sources["root"] / f"kill-{command}-{seed}-{i}"
        proc = subprocess.Popen([sys.executable, "-m", "hf_expand", *_argv(command, sources, out)], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # a moment within the uninterrupted run's wall time (imports included), seeded
        time.sleep(rng.uniform(0.3, 0.95) * seconds)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        states.append(_state_after_kill(command, out))
        if states[-1] != "complete":  # a complete --out is the result (rerunning would refuse to replace it)
            rerun = _rerun(command, sources, out)
            assert rerun.returncode == 0, (command, i, states[-1], rerun.stderr[-2000:])
        assert _same_result(command, out, ref), (command, i, states[-1])
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]
        assert not leftovers, leftovers  # the rerun cleaned what the kill left
    return states


# One kill of each kind runs by default (train: the run folder and --resume; grow: the atomic folder);
# augment and run are killed in the slow set, with the many-kill test.
# The default suite kills a (streamed) grow; training's kill + resume is test_train's
# test_killed_run_resumes_to_the_uninterrupted_result, so this one is slow with the rest (suite time, issue 15).
DEFAULT_KILLS = ["grow", pytest.param("train", marks=pytest.mark.slow), pytest.param("augment", marks=pytest.mark.slow),
                 pytest.param("run", marks=pytest.mark.slow)]


@pytest.mark.parametrize("command", DEFAULT_KILLS)
def test_one_kill_then_rerun(command, sources, references):
    assert _kill_and_rerun(command, sources, references, kills=1, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["grow", "augment", "train", "run"])
def test_many_kills_then_rerun(command, sources, references):
    states = _kill_and_rerun(command, sources, references, kills=6, seed=1)
    assert len(states) == 6


def _limited(limit_bytes: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


DISK_FULL = {
    "grow": 200_000,  # the tiny grown llama's weights are ~0.7 MB
    "augment": 2_000,
    "train": 200_000,
    "run": 200_000,
}


@pytest.mark.parametrize("command", [c if c in ("grow", "train") else pytest.param(c, marks=pytest.mark.slow)
                                     for c in sorted(DISK_FULL)])
def test_disk_full_is_one_line_and_nothing_half_written(command, sources, tmp_path):
    assert DISK_FULL
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "hf_expand", *_argv(command, sources, out)], env=_env(),
                          capture_output=True, text=True, timeout=600, preexec_fn=_limited(DISK_FULL[command]))
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(err) == 1 and err[0].startswith("hf-expand: error: "), err
    assert "File too large" in err[0] or "no space" in err[0].lower() or "too large" in err[0].lower(), err[0]
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
    assert not hidden, hidden
    if command in ("grow", "augment"):
        assert not out.exists()
    else:  # train/run: a run folder may stay (arguments, finished stages), never a model without its record
        for folder in [out, out / "trained", out / "grown"]:
            if (folder / "config.json").exists():
                assert _model_complete(folder), folder
