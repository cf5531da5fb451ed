"""The streamed certificate catches real faults and names where they are (issue 15).

A grown folder with one value changed in one block must fail `hf-expand verify` (exit 1) with that block
named; an intact folder passes with the per-block table printed. The dry run predicts memory, disk and shards
from the config alone.
"""

from __future__ import annotations

import json
import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_expand.record import RECORD_FILE


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _cli(capsys, *args):
    """``hf-expand ARGS`` in this process (the CLI's own entry point; saves a 5 s interpreter start per call)."""
    from hf_expand.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return _Result(code, out, err)


@pytest.fixture(scope="module")
def grown_pair(tmp_path_factory, tiny_checkpoints):
    """The tiny llama grown by two identity blocks (3 -> 5: new blocks at 1 and 4)."""
    llama_dir = tiny_checkpoints("llama")
    from hf_expand import AddLayers, grow_checkpoint

    out = tmp_path_factory.mktemp("cert") / "grown"
    grow_checkpoint(str(llama_dir), out, [AddLayers(count=2)])
    return llama_dir, out


def _corrupt(folder, name, index, delta, dest):
    import shutil

    shutil.copytree(folder, dest)
    path = dest / "model.safetensors"
    tensors = load_file(path)
    assert name in tensors, sorted(tensors)[:8]
    tensors[name][index] += delta
    save_file(tensors, path, metadata={"format": "pt"})
    return dest


def test_intact_folder_passes_with_block_table(grown_pair, capsys):
    base, grown = grown_pair
    r = _cli(capsys, "verify", base, grown, "-q")
    assert r.returncode == 0, r.stderr
    # a copied block: its counterpart is the base's block 2, its bytes and inputs are the same: output reused
    assert "block   3 (vs   2, reused): max |Δ| = 0" in r.stdout
    assert "block   1 (vs   0): max |Δ| = 0" in r.stdout  # an identity block reproduces the block below it: it runs
    assert "within tolerance" in r.stdout and "KL" in r.stdout
    for cert in (json.loads((grown / RECORD_FILE).read_text())["verification"]["certificate"],  # at growth
                 _verify_record(r.stdout)):
        assert [(b["block"], b["counterpart"]) for b in cert["blocks"]] == [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2)]
        assert all(b["max_abs_diff"] == 0 for b in cert["blocks"]) and cert["final_max_abs_diff"] == 0
        # copies fed unchanged inputs (block 2 sits on an exact identity block) reuse; new blocks always run
        assert [b["block"] for b in cert["blocks"] if b.get("reused")] == [0, 2, 3]


def _verify_record(stdout: str) -> dict:
    """The certificate rows as ``verify`` printed them (same shape as the record's)."""
    rows = []
    for line in stdout.splitlines():
        if line.strip().startswith("block "):
            head, value = line.rsplit("=", 1)
            j, vs = int(head.split()[1]), head.split("(vs", 1)[1].split(")")[0]
            row = {"block": j, "counterpart": int(vs.split(",")[0]), "max_abs_diff": float(value)}
            if "reused" in vs:
                row["reused"] = True
            rows.append(row)
    final = next(line for line in stdout.splitlines() if line.startswith("final outputs:"))
    return {"blocks": rows, "final_max_abs_diff": float(final.split("=")[1].split()[0])}


@pytest.mark.parametrize("name,index,block", [
    ("model.layers.3.mlp.down_proj.weight", (5, 7), 3),     # a copied block
    ("model.layers.1.self_attn.o_proj.weight", (2, 9), 1),  # an identity block: its zeroed projection is not zero
    ("model.layers.0.input_layernorm.weight", (4,), 0),     # the first block
])
def test_one_changed_value_fails_and_names_its_block(grown_pair, tmp_path, capsys, name, index, block):
    base, grown = grown_pair
    bad = _corrupt(grown, name, index, 0.5, tmp_path / "bad")
    r = _cli(capsys, "verify", base, bad, "-q")
    assert r.returncode == 1, (r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("hf-expand: error:")]
    assert len(errors) == 1 and f"block {block} is the first that differs" in errors[0], r.stderr
    assert "ABOVE tolerance" in r.stdout
    rows = {int(line.split()[1]): float(line.rsplit("=", 1)[1]) for line in r.stdout.splitlines()
            if line.strip().startswith("block ")}
    assert rows and all(v == 0 for j, v in rows.items() if j < block) and rows[block] > 0


def test_verify_without_record_pairs_blocks_by_index(llama_dir, tmp_path, capsys):
    """Two checkpoints of the same depth and no growth record: block i vs block i."""
    bad = _corrupt(llama_dir, "model.layers.2.mlp.up_proj.weight", (1, 1), 0.5, tmp_path / "bad")
    (bad / RECORD_FILE).unlink(missing_ok=True)
    r = _cli(capsys, "verify", llama_dir, bad, "-q")
    assert r.returncode == 1 and "block 2 is the first that differs" in r.stderr, r.stderr


def test_dry_run_predicts_memory_disk_and_shards(llama_dir, tmp_path, capsys):
    r = _cli(capsys, "grow", llama_dir, "--add-layers", "2", "--dry-run", "--max-shard-size", "20KB")
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if line.startswith("streamed growth:"))
    assert "peak memory about" in line and "on disk in" in line and "shards" in line
    shards = int(line.split(" in ")[1].split()[0])
    assert shards > 1  # 20 KB shards of a ~600 KB model
    assert not (tmp_path / "out").exists()


def test_prediction_matches_what_is_written(llama_dir, tmp_path, capsys):
    """The dry run's disk and shard figures are the written folder's."""
    import re

    r = _cli(capsys, "grow", llama_dir, "--add-layers", "1", "--dry-run", "--max-shard-size", "50KB")
    line = next(line for line in r.stdout.splitlines() if line.startswith("streamed growth:"))
    shards = int(re.search(r"in (\d+) shards?", line).group(1))
    out = tmp_path / "out"
    r = _cli(capsys, "grow", llama_dir, "--out", out, "--add-layers", "1", "--max-shard-size", "50KB", "-q")
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("model-*.safetensors"))) == shards
    index = json.loads((out / "model.safetensors.index.json").read_text())
    stored = {k for f in out.glob("model-*.safetensors") for k in load_file(f)}
    assert set(index["weight_map"]) == stored


def test_kl_is_zero_for_identity_and_positive_for_a_fault(grown_pair, tmp_path):
    from hf_expand.verify_stream import default_probes, streamed_certificate

    base, grown = grown_pair
    cert, _ = streamed_certificate(str(base), str(grown), default_probes(0, [], str(base)))
    assert cert.kl["kl_max"] == 0 and cert.max_abs_diff == 0
    bad = _corrupt(grown, "lm_head.weight", (3, 3), 5.0, tmp_path / "bad") if "lm_head.weight" in load_file(
        grown / "model.safetensors") else _corrupt(grown, "model.norm.weight", (3,), 5.0, tmp_path / "bad")
    cert, _ = streamed_certificate(str(base), str(bad), default_probes(0, [], str(base)))
    assert cert.kl["kl_max"] > 0 and cert.max_abs_diff > 0
    assert torch.isfinite(torch.tensor(cert.kl["kl_mean"]))


@pytest.mark.parametrize("family", ["llama", "modernbert"])
def test_streaming_of_large_outside_modules_still_exact(family, tmp_path, monkeypatch):
    """Tiny models keep every module outside the blocks loaded for the whole pass (``SMALL_UNIT``); real ones
    stream their embeddings and heads (loaded before the call, freed after). With the threshold at 0 the tiny
    models take that path too, and growth stays exact."""
    from hf_expand import AddLayers, WidenFFN, certificate, grow_checkpoint
    from matrix import more_tiny_model, tiny_model

    monkeypatch.setattr(certificate, "SMALL_UNIT", 0)
    model = tiny_model(family) if family == "llama" else more_tiny_model(family)
    model.save_pretrained(tmp_path / "base")
    report = grow_checkpoint(str(tmp_path / "base"), tmp_path / "out", [WidenFFN(factor=1.5), AddLayers(count=1)]
                             if family == "llama" else [WidenFFN(factor=1.5)])
    assert report.reloaded_max_abs_diff <= 1e-5


def test_embeddings_and_head_are_reused_only_when_bytes_and_inputs_match(grown_pair, tmp_path, capsys, monkeypatch):
    """Streamed (``SMALL_UNIT`` 0), the grown model's embeddings and head are the base's bytes fed the base's
    inputs: their outputs are reused. A changed head value stops the reuse, and the fault is caught."""
    from hf_expand import certificate

    monkeypatch.setattr(certificate, "SMALL_UNIT", 0)
    base, grown = grown_pair
    r = _cli(capsys, "verify", base, grown, "-q")
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if line.startswith("outside the blocks"))
    stored = load_file(grown / "model.safetensors")
    head = "lm_head" if "lm_head.weight" in stored else None
    assert "model.embed_tokens" in line and (head is None or head in line), line
    name = "lm_head.weight" if head else "model.embed_tokens.weight"
    bad = _corrupt(grown, name, (3, 3), 5.0, tmp_path / "bad")
    r = _cli(capsys, "verify", base, bad, "-q")
    assert r.returncode == 1, r.stdout
    reused = next((line for line in r.stdout.splitlines() if line.startswith("outside the blocks")), "")
    assert name.rsplit(".", 1)[0] not in reused, reused


def test_a_streaming_failure_is_not_blamed_on_the_base_model(tmp_path, monkeypatch):
    """DeBERTa reads rel_embeddings without calling it. Streamed as a large module would be, the weight is still
    on the meta device when read: that is hf-expand's failure, and it must not be reported as "the base model's
    own forward fails" (that line is for transformers' own bugs)."""
    from hf_expand import AddLayers, certificate, grow_checkpoint
    from matrix import more_tiny_model

    monkeypatch.setattr(certificate, "SMALL_UNIT", 0)
    more_tiny_model("deberta-v2").save_pretrained(tmp_path / "base")
    with pytest.raises(RuntimeError, match="meta") as err:
        grow_checkpoint(str(tmp_path / "base"), tmp_path / "out", [AddLayers(count=1)])
    assert "own forward" not in str(err.value)
    assert not (tmp_path / "out").exists()
