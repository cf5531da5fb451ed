"""`--trainable new` and `lora` on FSDP2-sharded parameters: 2 processes, gloo, on CPU (issue 17).

Accelerate turns its own FSDP on only for GPUs; `hf-expand train --fsdp` shards the model itself with torch's
`fully_shard` on the process group `accelerate launch` set up, so this is the code a GPU run executes. Rows are
packed to equal length so that the mean of the two ranks' losses is the loss of the one-process batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import finish_launch, free_port, kill_tree
from test_train import SENTENCES, new_masks, run, weights

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.xdist_group("accelerate-launch")]

STEPS = 16  # each launch costs ~11 s of startup whatever its length; 16 steps exercise decay and momentum enough
COMMON = ["--data", str(SENTENCES), "--max-steps", str(STEPS), "--batch-size", "4", "--lr", "1e-3",
          "--weight-decay", "0.1", "--packing", "--max-length", "16", "--log-every", "0", "-q"]
SAVING = ["--save-every", "4"]  # the killed run and its resume (checkpoints do not change the weights)


def _launch(grown, out, *extra) -> subprocess.Popen:
    port = free_port()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "hf_expand", "train", str(grown), "--out", str(out), "--fsdp", *COMMON, *extra]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    # its own session: a kill or timeout reaches the launcher and both ranks
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.fixture(scope="module")
def sharded_run(grown_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "straight"
    proc = finish_launch(_launch(grown_llama, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_fsdp_new_keeps_old_values_and_matches_one_process(sharded_run, grown_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    section = json.loads((sharded_run / "hf_expand_growth.json").read_text())["training"]
    assert section["world_size"] == 2 and section["sharding"] == "fsdp2" and section["precision"] == "no"
    assert section["ranks_identical"] and len(section["rank_checksums"]) == 2  # gathered on every rank
    before, after = weights(grown_llama), weights(sharded_run)
    masks = new_masks(grown_llama, before)
    assert masks and before.keys() == after.keys()
    for name, t in before.items():
        m = masks[name]
        assert torch.equal(t[~m], after[name][~m]), f"old values of {name} changed"  # decay and momentum included
        if m.any():
            assert not torch.equal(t[m], after[name][m]), f"new slice of {name} did not train"
    AutoModelForCausalLM.from_pretrained(sharded_run)  # the saved folder loads in stock transformers
    # one process, the same global batches (4 + 4 rows per step = 8), the same schedule
    run(grown_llama, tmp_path / "one", max_steps=STEPS, lr=1e-3, weight_decay=0.1, batch_size=8, packing=True,
        max_length=16)
    single = weights(tmp_path / "one")
    worst = max(float((single[k] - after[k]).abs().max()) for k in after)
    assert worst <= 1e-5, worst


def test_fsdp_kill_and_resume_equals_the_uninterrupted_run(sharded_run, grown_llama, tmp_path):
    killed = tmp_path / "killed"
    proc = _launch(grown_llama, killed, *SAVING)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-4").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    kill_tree(proc)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model.safetensors").exists()
    resumed = finish_launch(_launch(grown_llama, killed, *SAVING, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(sharded_run), weights(killed)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_fsdp_lora_trains_adapters_and_new_slices(grown_llama, tmp_path):
    """lora under FSDP2: peft's adapters and the split new slices are sharded like the rest. The merged model
    changes the adapted layers (LoRA's delta); everything else keeps its old values; new slices train; the
    result equals one process (the same batches, summed) within 1e-5 and loads in stock transformers."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    proc = finish_launch(_launch(grown_llama, out, "--trainable", "lora", "--max-steps", "8"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = json.loads((out / "hf_expand_growth.json").read_text())["training"]
    assert section["sharding"] == "fsdp2" and section["policy"] == "lora" and section["ranks_identical"]
    assert section["lora_merge_max_abs_diff"] <= 1e-5
    before, after = weights(grown_llama), weights(out)
    masks = new_masks(grown_llama, before)
    adapted = {n for n in before if n.endswith(".weight") and before[n].ndim == 2 and "embed" not in n}  # Linears
    assert adapted
    for name, t in before.items():
        if name not in adapted:
            assert torch.equal(t[~masks[name]], after[name][~masks[name]]), f"old values of {name} changed"
        if masks[name].any():
            assert not torch.equal(t[masks[name]], after[name][masks[name]]), f"new slice of {name} did not train"
    AutoModelForCausalLM.from_pretrained(out)
    # One process summing the same two 4-row batches per step (gradient accumulation). Not one 8-row batch: under
    # lora that differs by ~1.2e-4 even within one process (batch 8 vs 4 x 2, measured), because Adam's first
    # updates are +-lr per entry (m / sqrt(v) = sign of the gradient), so a lora_B entry whose gradient is as small
    # as the sum's rounding flips with the summation order, and alpha / r x lora_A carries it into the weights.
    run(grown_llama, tmp_path / "one", trainable="lora", max_steps=8, lr=1e-3, weight_decay=0.1, batch_size=4,
        grad_accum=2, packing=True, max_length=16)
    single = weights(tmp_path / "one")
    worst = max(float((single[k] - after[k]).abs().max()) for k in after)
    assert worst <= 1e-5, worst


def test_fsdp_with_one_process_is_refused(grown_llama, tmp_path):
    """One process has nothing to shard across: one line, nothing written."""
    from hf_expand.errors import HfExpandError

    with pytest.raises(HfExpandError, match="--fsdp shards the model across processes, and this run has one"):
        run(grown_llama, tmp_path / "one", fsdp=True, max_steps=2)
    assert not (tmp_path / "one").exists()
