"""Damaged safetensors checkpoints and a full disk, under streamed growth: one line (``hf-expand: error: ...``),
exit 2, nothing written, before any weight is read or written (issue 15). A checkpoint with only pickled
weights still grows, in memory, and says so in one line.

The cases run ``hf_expand.cli.main`` in-process with ``test_bad_input.assert_one_line`` (like test_bad_input.py;
stderr there includes hf_expand's log lines); one case runs the real ``python -m hf_expand`` as well, to show the
process's own exit status and stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_nothing_written
from hf_expand.cli import main
from hf_expand.grow import RECORD_FILE
from test_bad_input import assert_one_line

SHARD_LIMIT = 20_000  # bytes: the tiny llama (fp32) saves into 20 shards
GROW = ["--add-layers", "1"]


@pytest.fixture(scope="module")
def sharded_llama(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny llama saved by stock ``save_pretrained`` into several shards, with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_checkpoints("llama")
    path = tmp_path_factory.mktemp("sharded") / "llama"
    AutoModelForCausalLM.from_pretrained(src).save_pretrained(path, max_shard_size=SHARD_LIMIT)
    AutoTokenizer.from_pretrained(src).save_pretrained(path)
    assert len(list(path.glob("model-*.safetensors"))) >= 3 and (path / "model.safetensors.index.json").is_file()
    return path


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _index(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _damaged(sharded_llama: Path, tmp_path: Path, how: str) -> tuple[Path, str]:
    """A damaged copy of the sharded llama and a fragment its one-line error must contain."""
    model = _copy(sharded_llama, tmp_path / f"model-{how}")
    weight_map = _index(model)["weight_map"]
    shard = weight_map["model.layers.1.mlp.down_proj.weight"]  # a shard in the middle
    if how == "missing_shard":
        (model / shard).unlink()
        return model, shard
    if how == "truncated_shard":
        os.truncate(model / shard, (model / shard).stat().st_size - 100)  # the header intact, the data cut short
        return model, shard
    if how == "index_points_elsewhere":
        index = _index(model)
        name = next(k for k, v in weight_map.items() if v != shard)
        index["weight_map"][name] = shard  # the tensor is in another shard
        (model / "model.safetensors.index.json").write_text(json.dumps(index))
        return model, name
    raise ValueError(how)


@pytest.mark.parametrize("how", ["missing_shard", "truncated_shard", "index_points_elsewhere"])
def test_damaged_sharded_checkpoint_is_one_line(how, sharded_llama, tmp_path, capsys):
    model, fragment = _damaged(sharded_llama, tmp_path, how)
    out = tmp_path / "out"
    line = assert_one_line(capsys, ["grow", str(model), "--out", str(out), *GROW], fragment, out)
    assert str(model) in line, line  # names the folder, so the user knows which download to repair
    assert_nothing_written(tmp_path)


def test_damaged_checkpoint_real_process(sharded_llama, tmp_path):
    """The real command: exit status 2 and exactly one line on stderr (nothing from imports or libraries)."""
    model, shard = _damaged(sharded_llama, tmp_path, "missing_shard")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "hf_expand", "grow", str(model), "--out", str(out), *GROW],
                          env=env, capture_output=True, text=True, timeout=300)
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(err) == 1 and err[0].startswith("hf-expand: error: ") and shard in err[0], err
    assert_nothing_written(tmp_path)


def test_not_enough_disk_is_one_line(monkeypatch, llama_dir, tmp_path, capsys):
    import hf_expand.streamed

    asked = []

    def tiny_disk(path):
        asked.append(Path(path))
        return 1000

    monkeypatch.setattr(hf_expand.streamed, "disk_free", tiny_disk)
    out = tmp_path / "out"
    line = assert_one_line(capsys, ["grow", str(llama_dir), "--out", str(out), *GROW], "disk space", out)
    assert asked and all(tmp_path == p or tmp_path in p.parents for p in asked), asked  # the output's filesystem
    assert str(out) in line, line
    assert_nothing_written(tmp_path)


@pytest.fixture(scope="module")
def pickled_llama(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny llama with its weights in ``pytorch_model.bin`` only (plain tensors; transformers 5 ignores
    ``safe_serialization=False``, so the state dict is saved with ``torch.save``)."""
    import torch
    from safetensors.torch import load_file

    src = tiny_checkpoints("llama")
    path = _copy(src, tmp_path_factory.mktemp("pickled") / "llama")
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")
    return path


def test_pickled_checkpoint_grows_in_memory(pickled_llama, tmp_path, capsys):
    import torch

    from hf_expand.model_io import auto_class_for
    from transformers import AutoConfig

    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["grow", str(pickled_llama), "--out", str(out), *GROW, "--base-model", "org/tiny", "-q"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 0, err
    said = [ln for ln in err if "in memory" in ln]
    assert len(said) == 1, err  # said once
    assert str(pickled_llama) in said[0] and ".bin" in said[0] and "safetensors" in said[0], said  # and why
    assert len(err) == 1, err  # nothing else under -q
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["streamed"] is False and "certificate" not in record["verification"]
    config = AutoConfig.from_pretrained(out)
    assert config.num_hidden_layers == 4
    auto_class_for(config).from_pretrained(out, dtype=torch.float32)
