"""More experts for an MoE (issue 19): exact through the selection bias (DeepSeek-V3 family, expert groups kept),
duplicate-and-double-k exact on softmax routers, the non-exact append only on request with its drift recorded,
and training with aux-loss-free balancing that routes tokens to the added experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import load_stock
from hf_expand import AddExperts, plan_growth
from hf_expand.cli import main
from hf_expand.errors import HfExpandError
from matrix import more_tiny_config, more_tiny_model, tiny_model, tiny_tokenizer

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
BIAS = "e_score_correction_bias"


def _save(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _deepseek(n_group: int = 1):
    """A tiny DeepSeek-V3 (random norms, ``matrix.tiny_model``) with trained-looking (random) selection biases;
    ``n_group`` expert groups."""
    config = more_tiny_config("deepseek_v3")
    config.n_group, config.topk_group = n_group, 1
    model = tiny_model("deepseek_v3", config=config)
    with torch.no_grad():
        for name, value in model.named_buffers():
            if name.endswith(BIAS):
                value.copy_(torch.randn_like(value) * 0.3)
    return model


def _logit_diff(a: Path, b: Path) -> float:
    ids = torch.randint(3, 90, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return (load_stock(a)(ids).logits - load_stock(b)(ids).logits).abs().max().item()


@pytest.mark.parametrize("n_group,count", [(1, 4), (2, 2)], ids=["one-group", "two-groups"])
def test_bias_mode_is_exact_on_deepseek_v3(n_group, count, tmp_path, capsys):
    base = _save(_deepseek(n_group), tmp_path / "base")
    out = tmp_path / "more"
    assert main(["grow", str(base), "--out", str(out), "--add-experts", str(count), "-q"]) == 0, capsys.readouterr().err
    assert _logit_diff(base, out) <= 1e-5
    config = json.loads((out / "config.json").read_text())
    assert config["n_routed_experts"] == 4 + count and config["num_experts_per_tok"] == 2
    grown = load_stock(out)
    bias = dict(grown.named_buffers())[f"model.layers.1.mlp.gate.{BIAS}"]
    per = (4 + count) // n_group
    new = [g * per + i for g in range(n_group) for i in range(4 // n_group, per)]  # the end of each group
    old = [i for i in range(4 + count) if i not in new]
    assert bias[new].max() < bias[old].min() - 0.99  # below every old expert: never chosen
    record = json.loads((out / "hf_expand_growth.json").read_text())
    assert record["operations"][0]["params"] == {"count": count, "mode": "bias"}
    assert record["verification"]["function_preserving"] is True


def test_duplicate_mode_is_exact_on_mixtral(tiny_checkpoints, tmp_path, capsys):
    base, out = tiny_checkpoints("mixtral"), tmp_path / "twins"
    assert main(["grow", str(base), "--out", str(out), "--add-experts", "4", "--expert-mode", "duplicate", "-q"]) == 0
    assert _logit_diff(base, out) <= 1e-5
    config = json.loads((out / "config.json").read_text())
    assert config["num_local_experts"] == 8 and config["num_experts_per_tok"] == 4  # active compute doubled


def test_softmax_append_needs_the_option_and_records_its_drift(tiny_checkpoints, tmp_path, capsys):
    base = tiny_checkpoints("mixtral")
    capsys.readouterr()
    assert main(["grow", str(base), "--out", str(tmp_path / "no"), "--add-experts", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot keep the outputs" in err[0] and "--expert-mode duplicate" in err[0] \
        and "--expert-mode append (not function-preserving" in err[0], err
    assert not (tmp_path / "no").exists()
    out = tmp_path / "appended"
    assert main(["grow", str(base), "--out", str(out), "--add-experts", "2", "--expert-mode", "append", "-q"]) == 0
    record = json.loads((out / "hf_expand_growth.json").read_text())
    drift = record["operations"][0]["max_abs_diff"]
    assert record["verification"]["function_preserving"] is False and drift > 0
    assert record["verification"]["recorded_differences"] == [{"op": "add_experts", "max_abs_diff": drift}]
    assert json.loads((out / "config.json").read_text())["num_local_experts"] == 6


BAD = {
    "dense_model": (lambda: tiny_model("llama"), [], "add_experts needs a mixture of experts; llama is dense"),
    "group_divisibility": (lambda: _deepseek(2), [], "n_group=2 expert groups: add a multiple of 2"),
    "split_at_top_2": (lambda: tiny_model("mixtral"), ["--expert-mode", "split"], "split is exact only at top-1"),
    "duplicate_wrong_count": (lambda: tiny_model("mixtral"), ["--expert-mode", "duplicate"],
                              "--add-experts must be 4, not 3"),
    "bias_mode_on_softmax": (lambda: tiny_model("mixtral"), ["--expert-mode", "bias"], "needs a selection-bias router"),
    "zero_experts": (lambda: tiny_model("mixtral"), ["--add-experts", "0"], "--add-experts must be a whole number >= 1"),
}


def test_bad_table_is_non_empty():
    assert len(BAD) == 6


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line(case, tmp_path, capsys):
    make, extra, message = BAD[case]
    base = _save(make(), tmp_path / "base")
    args = extra if "--add-experts" in extra else ["--add-experts", "3", *extra]
    capsys.readouterr()
    assert main(["grow", str(base), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_plan_is_refused_before_weights_are_read():
    config = more_tiny_config("deepseek_v3")
    config.n_group, config.topk_group = 2, 1
    with pytest.raises(HfExpandError, match="add a multiple of 2"):
        plan_growth(config, [AddExperts(count=1)])


def test_balancing_routes_tokens_to_the_added_experts(tmp_path, capsys):
    """30 steps of new with the aux-loss-free rule: the added experts (below every old bias at the start) receive
    tokens within the run, and the record keeps each router's load."""
    torch.set_num_threads(1)
    base = _save(more_tiny_model("deepseek_v3"), tmp_path / "base")
    grown, trained = tmp_path / "grown", tmp_path / "trained"
    assert main(["grow", str(base), "--out", str(grown), "--add-experts", "4", "-q"]) == 0
    assert main(["train", str(grown), "--data", str(SENTENCES), "--out", str(trained), "--max-steps", "30",
                 "--bias-update-rate", "0.05", "--log-every", "5", "-q"]) == 0, capsys.readouterr().err
    load = json.loads((trained / "hf_expand_growth.json").read_text())["training"]["expert_load"]
    assert load["bias_update_rate"] == 0.05
    history = load["history"]
    assert [step for step, _ in history] == [1, 5, 10, 15, 20, 25, 30]
    first, last = history[0][1], history[-1][1]
    assert first and all(sum(counts[4:]) == 0 for counts in first.values())  # excluded at the start
    assert any(sum(counts[4:]) > 0 for _, loads in history for counts in loads.values())  # then chosen
    assert all(len(counts) == 8 for counts in last.values())


def test_a_resumed_run_keeps_the_load_history_and_the_biases(tmp_path, capsys):
    """Resumed from its step-2 checkpoint, a balancing run ends with the straight run's load history and
    selection biases (the biases are model state; the history travels in the checkpoint's logs)."""
    import shutil

    from safetensors.torch import load_file

    from hf_expand.train import TrainArgs, train

    torch.set_num_threads(1)
    base = _save(more_tiny_model("deepseek_v3"), tmp_path / "base")
    grown = tmp_path / "grown"
    assert main(["grow", str(base), "--out", str(grown), "--add-experts", "4", "-q"]) == 0
    args = dict(model=str(grown), data=str(SENTENCES), max_steps=4, batch_size=8, log_every=1, save_every=2,
                bias_update_rate=0.05)
    straight = train(TrainArgs(out=str(tmp_path / "straight"), **args), progress=False)
    killed = tmp_path / "killed"
    train(TrainArgs(out=str(killed), **args), progress=False)
    for f in killed.iterdir():  # only what existed right after the step-2 checkpoint
        if f.name not in ("checkpoints", "train_args.json"):
            f.unlink() if f.is_file() else shutil.rmtree(f)
    shutil.rmtree(killed / "checkpoints" / "step-4")
    resumed = train(TrainArgs(out=str(killed), **args), resume=True, progress=False)
    assert [s for s, _ in resumed["expert_load"]["history"]] == [1, 2, 3, 4]
    assert resumed["expert_load"]["history"] == straight["expert_load"]["history"]
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(killed / "model.safetensors")
    keys = [k for k in a if k.endswith(BIAS)]
    assert keys and all(torch.equal(a[k], b[k]) for k in keys)
