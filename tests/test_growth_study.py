"""The growth study (``benchmarks/growth_study.py``, issue 20) at toy size: every arm trains, the table has one row
per arm, and an arm rerun with the same seed gives the same numbers. The study itself is not in the suite."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "growth_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("growth_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toy_study_trains_every_arm_and_reruns_identically(study, tmp_path, capsys):
    import torch

    torch.set_num_threads(1)
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert study.main(["--size", "toy", "--seeds", "1", "--workers", "0", "--out", str(out), "--cache", str(cache)]) == 0
    results = json.loads((out / "results.json").read_text())
    arms = list(study.ARMS)
    assert len(arms) == 6 and [r["arm"] for r in results["rows"]] == arms
    steps = study.SIZES["toy"]["steps"]
    for run in results["runs"]:
        assert run["steps"] == steps and len(run["loss_history"]) == steps, run["arm"]  # it trained
        assert run["trainable"] > 0 and math.isfinite(run["new_loss"]) and math.isfinite(run["old_loss"])
    by_arm = {r["arm"]: r for r in results["runs"]}
    assert by_arm["finetune-all"]["trainable"] > by_arm["ffn-x1.5-new"]["trainable"]  # new trains only the growth
    table = (out / "table.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in table) == 2 + len(arms)  # header, rule, one row per arm
    assert (out / "tradeoff.png").is_file() and (out / "curves.png").is_file()
    # the same arm and seed again (cached base, another folder): the same numbers
    job = {"size": study.SIZES["toy"], "arm": "ffn-x1.5-noise0.01-new", "seed": 0, "work": str(tmp_path / "again"),
           "base": str(next(cache.glob("base-*")) / "trained"),
           **{k: str(out / name) for k, name in (("old_train", "old-train.jsonl"), ("new_train", "new-train.jsonl"),
                                                  ("old_heldout", "old_heldout.json"),
                                                  ("new_heldout", "new_heldout.json"))}}
    again = study.run_arm(job)
    first = by_arm["ffn-x1.5-noise0.01-new"]
    assert (again["new_loss"], again["old_loss"], again["loss_history"]) == \
        (first["new_loss"], first["old_loss"], first["loss_history"])
