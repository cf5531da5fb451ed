"""Bad input of every kind ends in one line (``hf-expand: error: ...``), exit 2, nothing written (issue 14):
damaged model folders (truncated/corrupt safetensors, pickled ``.bin``, config/weight shape mismatch, a damaged
growth record, a garbage tokenizer), absurd configs, unbounded sizes (copies, layers, YAML alias bombs), every
recipe value checked up front with its key path (in ``--dry-run`` too), and OS errors as a last resort."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from hf_expand.cli import main
from test_recipes import tiny_recipe

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def folders(tiny_checkpoints, tmp_path_factory):
    """name -> a damaged (or odd) copy of the tiny llama, built lazily once per module."""
    good = tiny_checkpoints("llama")
    root = tmp_path_factory.mktemp("bad_models")
    cache: dict[str, Path] = {"model": good}

    def truncated(d):
        weights = d / "model.safetensors"
        os.truncate(weights, weights.stat().st_size // 2)

    def corrupt(d):
        (d / "model.safetensors").write_bytes(b"\xff" * 64)

    def pickled(d):  # a .bin with a pickled object besides tensors: never unpickled beyond the allow-list
        import argparse

        import torch
        from safetensors.torch import load_file

        state = load_file(d / "model.safetensors")
        (d / "model.safetensors").unlink()
        state["extra"] = argparse.Namespace(run="code")
        torch.save(state, d / "pytorch_model.bin")

    def mismatch(d):
        _edit_config(d, intermediate_size=90)

    def record(d):
        (d / "hf_expand_growth.json").write_text("{not json")

    def tokenizer(d):
        (d / "tokenizer.json").write_text("garbage, not a tokenizer")

    def no_tokenizer(d):
        for name in TOKENIZER_FILES:
            (d / name).unlink(missing_ok=True)

    def layers(d):  # config only: the dry run must refuse it without building 100,000 meta layers
        (d / "model.safetensors").unlink()
        _edit_config(d, num_hidden_layers=100_000)

    def vocab(d):
        (d / "model.safetensors").unlink()
        _edit_config(d, vocab_size=10**15)

    def overflow(d):
        (d / "model.safetensors").unlink()
        _edit_config(d, hidden_size=2**40, intermediate_size=2**40, num_attention_heads=2**20)

    def negative(d):
        _edit_config(d, hidden_size=-64)

    def zero_heads(d):
        _edit_config(d, num_attention_heads=0)

    def string_size(d):
        _edit_config(d, hidden_size="wide")

    damage = {f.__name__: f for f in (truncated, corrupt, pickled, mismatch, record, tokenizer, no_tokenizer,
                                        layers, vocab, overflow, negative, zero_heads, string_size)}

    def get(name: str) -> Path:
        if name not in cache:
            damage[name](_copy(good, root / name))
            cache[name] = root / name
        return cache[name]

    return get


def alias_bomb(folder: Path, model: Path) -> Path:
    """The billion-laughs shape: 9 levels of 9 aliases each (9**9 leaves once expanded)."""
    lines = [f"model: {{id: {model}}}", 'a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines += ["data: {source: builtin:wordnet-lexnames, lexnames: *a9}"]
    path = folder / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def deep_nesting(folder: Path, model: Path) -> Path:
    path = folder / "deep.yaml"
    path.write_text(f"model: {{id: {model}}}\ngrow: {{operations: {'[' * 5000}{']' * 5000}}}\n")
    return path


# case -> (argv, fragment the one line must contain). Placeholders: {name} = a folder of ``folders``,
# {out} = an output path that must not be created, {recipe}/{bomb}/{deep} = recipe files, {data} = sentences.
ONE_LINE = {
    # damaged model folders
    "grow_truncated_safetensors": (["grow", "{truncated}", "--out", "{out}", "--add-layers", "1"], "model.safetensors"),
    "grow_corrupt_safetensors": (["grow", "{corrupt}", "--out", "{out}", "--add-layers", "1"], "model.safetensors"),
    "verify_truncated_safetensors": (["verify", "{model}", "{truncated}"], "model.safetensors"),
    "grow_pickled_bin": (["grow", "{pickled}", "--out", "{out}", "--add-layers", "1"], "pytorch_model.bin"),
    "grow_config_weight_mismatch": (["grow", "{mismatch}", "--out", "{out}", "--add-layers", "1"], "config.json"),
    "grow_damaged_growth_record": (["grow", "{record}", "--out", "{out}", "--add-layers", "1"], "hf_expand_growth.json"),
    "grow_garbage_tokenizer": (["grow", "{tokenizer}", "--out", "{out}", "--add-layers", "1"], "tokenizer.json"),
    # configs
    "dry_run_100000_layers": (["grow", "{layers}", "--dry-run", "--add-layers", "1"], "100000 layers"),
    "dry_run_huge_vocab": (["grow", "{vocab}", "--dry-run", "--add-layers", "1"], "vocab_size"),
    "dry_run_overflowing_sizes": (["grow", "{overflow}", "--dry-run", "--add-layers", "1"], "hidden_size"),
    "grow_negative_hidden_size": (["grow", "{negative}", "--out", "{out}", "--add-layers", "1"], "config.json"),
    "grow_zero_heads": (["grow", "{zero_heads}", "--out", "{out}", "--add-layers", "1"], "config.json"),
    "grow_string_size": (["grow", "{string_size}", "--out", "{out}", "--add-layers", "1"], "config.json"),
    # flags
    "grow_empty_probe_text": (["grow", "{model}", "--out", "{out}", "--add-layers", "1", "--probe-text", ""], "--probe-text"),
    "verify_empty_probe_text": (["verify", "{model}", "{model}", "--probe-text", " "], "--probe-text"),
    "grow_negative_seed": (["grow", "{model}", "--out", "{out}", "--add-layers", "1", "--seed", "-1"], "--seed"),
    "verify_negative_seed": (["verify", "{model}", "{model}", "--seed", "-1"], "--seed"),
    "augment_negative_seed": (["augment", "{data}", "--out", "{out}", "--text-column", "text", "--seed", "-1"], "--seed"),
    "augment_billion_copies": (["augment", "{data}", "--out", "{out}", "--text-column", "text", "--copies",
                                "1000000000"], "--copies"),
    "augment_fork_bomb": (["augment", "{data}", "--out", "{out}", "--text-column", "text", "--num-proc",
                           "100000"], "--num-proc"),
    # recipes: YAML itself
    "override_bad_yaml": (["run", "{recipe}", "--out", "{out}", "grow.tolerance={a: [}"], "grow.tolerance"),
    "override_alias": (["run", "{recipe}", "--out", "{out}", "data.lexnames=[&x a, *x]"], "alias"),
    "recipe_alias_bomb_dry_run": (["run", "{bomb}", "--dry-run"], "alias"),
    "recipe_alias_bomb": (["run", "{bomb}", "--out", "{out}"], "alias"),
    "recipe_deep_nesting": (["run", "{deep}", "--dry-run"], "nested"),
}


def _fill(argv: list[str], folders, tmp_path: Path, model: Path) -> list[str]:
    names = {"out": str(tmp_path / "out"), "data": str(SENTENCES),
             "recipe": str(tiny_recipe(tmp_path, model)), "bomb": str(alias_bomb(tmp_path, model)),
             "deep": str(deep_nesting(tmp_path, model))}
    filled = []
    for arg in argv:
        if arg.startswith("{") and arg.endswith("}") and arg[1:-1].isidentifier():
            key = arg[1:-1]
            arg = names[key] if key in names else str(folders(key))
        filled.append(arg)
    return filled


def assert_one_line(capsys, argv: list[str], fragment: str, out: Path | None = None) -> str:
    capsys.readouterr()  # drop what fixtures printed
    start = time.perf_counter()
    code = main([*argv, "-q"])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("hf-expand: error: "), err
    assert fragment in err[0], err
    assert seconds < 60, f"took {seconds:.0f}s"
    if out is not None:
        assert not out.exists(), "an output was created"
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], list(out.parent.iterdir())
    return err[0]


def test_one_line_table_nonempty():
    assert len(ONE_LINE) >= 20 and len(RECIPE_VALUES) >= 15


@pytest.mark.parametrize("case", sorted(ONE_LINE))
def test_bad_input_is_one_line(case, folders, tmp_path, capsys):
    argv, fragment = ONE_LINE[case]
    assert_one_line(capsys, _fill(argv, folders, tmp_path, folders("model")), fragment, tmp_path / "out")


# recipe key=value -> the start of the one line (key path first, as ``recipe: train.max_steps: ...``)
RECIPE_VALUES = {
    "grow.tolerance=.nan": "recipe: grow.tolerance: must be a finite number >= 0, got nan",
    "grow.tolerance=-1": "recipe: grow.tolerance: must be a finite number >= 0, got -1",
    "grow.seed=-1": "recipe: grow.seed: must be between 0 and 2**63 - 1, got -1",
    "train.max_steps=0": "recipe: train.max_steps: must be",  # >= 1 (0 once meant 100 steps)
    "train.batch_size=0": "recipe: train.batch_size: must be >= 1, got 0",
    "train.epochs=2": "recipe: train: give exactly one of train.max_steps or train.epochs",
    "train.lr=-1": "recipe: train.lr: must be",
    "train.trainable=some": "recipe: train.trainable: must be one of new, all, lora, got 'some'",
    "train.mixed_precision=fp8": "recipe: train.mixed_precision: must be no, bf16 or fp16, got fp8",
    "data.eval_ratio=1.5": "recipe: data.eval_ratio: must be in (0, 1), got 1.5",
    "data.eval_ratio=0": "recipe: data.eval_ratio: must be in (0, 1), got 0",
    "data.eval_split=test": "recipe: data.eval_split: names a split of data.eval",
    "data.seed=-1": "recipe: data.seed: must be between 0 and 2**63 - 1, got -1",
    "augment.augmenters=[nope]": "recipe: augment.augmenters[0]: unknown augmenter 'nope'",
    "augment.augmenters=[synonym, 'random_swap:p=7']": "recipe: augment.augmenters[1]: random_swap:p must be",
    "augment.copies=0": "recipe: augment.copies: must be >= 1, got 0",
    "augment.copies=1000000000": "recipe: augment.copies: must be at most 1,000, got 1000000000",
    "push={repo: not a repo}": "recipe: push.repo: 'not a repo' is not a repo id; use namespace/name",
    "push.repo=no-namespace": "recipe: push.repo: 'no-namespace' is not a repo id; use namespace/name",
    "evaluate={batch_size: 0}": "recipe: evaluate.batch_size: must be >= 1, got 0",
    "evaluate={seed: -3}": "recipe: evaluate.seed: must be between 0 and 2**63 - 1, got -3",
}


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("override", sorted(RECIPE_VALUES))
def test_recipe_values_checked_up_front(override, dry_run, tiny_checkpoints, tmp_path, capsys):
    """Every value is refused before any stage runs (and by --dry-run), in the CLI's words, with its key path."""
    recipe = tiny_recipe(tmp_path, tiny_checkpoints("llama"))
    out = tmp_path / "out"
    argv = ["run", str(recipe), *(["--dry-run"] if dry_run else ["--out", str(out)]), override]
    line = assert_one_line(capsys, argv, RECIPE_VALUES[override], out)
    assert line.startswith(f"hf-expand: error: {RECIPE_VALUES[override]}"), line
    assert "--" not in line, line  # recipe words, not flags


def test_recipe_nulls_mean_the_default(tiny_checkpoints, tmp_path, capsys):
    """``key: null`` is the key left out (``augment.copies: null`` once reached the stage as None)."""
    recipe = tiny_recipe(tmp_path, tiny_checkpoints("llama"))
    capsys.readouterr()
    assert main(["run", str(recipe), "--dry-run", "augment.copies=null", "train.lr=null", "grow.seed=null", "-q"]) == 0
    out = capsys.readouterr().out
    assert "x1 copies" in out and "lr 0.0001" in out, out


def test_recipe_file_size_is_bounded(tiny_checkpoints, tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, tiny_checkpoints("llama"), extra="# " + "x" * (2 << 20) + "\n")
    assert_one_line(capsys, ["run", str(recipe), "--dry-run"], "larger than", None)


def test_layer_limit_applies_to_source_and_grown_configs(folders, monkeypatch, tmp_path, capsys):
    """A config one layer over the limit is refused from config.json alone (100,000 layers once took > 180 s of
    meta-model building); a grown config over it is refused before its meta model is built."""
    import hf_expand.architectures as architectures

    limit = architectures.MAX_LAYERS
    config_only = _copy(folders("layers"), tmp_path / "deep")
    _edit_config(config_only, num_hidden_layers=limit + 1)
    line = assert_one_line(capsys, ["grow", str(config_only), "--dry-run", "--add-layers", "1"], f"{limit + 1} layers")
    assert f"limit of {limit:,}" in line and "config.json" in line
    monkeypatch.setattr(architectures, "MAX_LAYERS", 4)  # the 3-layer tiny config, grown past a limit of 4
    _edit_config(config_only, num_hidden_layers=3)
    assert_one_line(capsys, ["grow", str(config_only), "--dry-run", "--add-layers", "5"], "8 layers")
    out = tmp_path / "out"  # a real grow is refused while planning, before a grown model is built
    assert_one_line(capsys, ["grow", str(folders("model")), "--out", str(out), "--add-layers", "5"], "8 layers", out)


def test_augment_output_rows_are_bounded(monkeypatch, tmp_path, capsys):
    """copies x rows above the output limit is refused with the limit once the data's size is known."""
    import hf_expand.augment.pipeline as pipeline

    monkeypatch.setattr(pipeline, "MAX_OUTPUT_ROWS", 100)
    out = tmp_path / "out"
    line = assert_one_line(capsys, ["augment", str(SENTENCES), "--out", str(out), "--text-column", "text",
                                    "--copies", "3", "--augment", "random_swap"], "limit of 100")
    assert "48" in line and "192" in line, line  # 48 rows x (1 original + 3 copies)


def test_a_source_without_a_tokenizer_still_grows(folders, tmp_path, capsys):
    """Refusing a garbage tokenizer.json does not refuse models that have no tokenizer at all."""
    capsys.readouterr()
    out = tmp_path / "grown"
    assert main(["grow", str(folders("no_tokenizer")), "--out", str(out), "--add-layers", "1", "-q"]) == 0
    record = json.loads((out / "hf_expand_growth.json").read_text())
    assert "tokenizer" not in record["copied"] and not (out / "tokenizer.json").exists()


# ------------------------------------------------------------------ last resort: OS errors, corrupt files


OS_ERRORS = {errno.ENOSPC: "free", errno.EROFS: "writable", errno.EACCES: "permission",
             errno.EFBIG: "file-size limit", errno.ENOENT: "exists"}


@pytest.mark.parametrize("code", sorted(OS_ERRORS), ids=[errno.errorcode[c] for c in sorted(OS_ERRORS)])
def test_os_errors_are_one_line(code, monkeypatch, tiny_checkpoints, tmp_path, capsys):
    import hf_expand.grow

    where = tmp_path / "somewhere" / "model.safetensors"

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(where))

    monkeypatch.setattr(hf_expand.grow, "grow_checkpoint", fail)
    line = assert_one_line(capsys, ["grow", str(tiny_checkpoints("llama")), "--out", str(tmp_path / "out"),
                                    "--add-layers", "1"], f"{os.strerror(code)}: {where}; ", tmp_path / "out")
    assert OS_ERRORS[code] in line.split("; ", 1)[1], line


def test_safetensors_errors_are_one_line(monkeypatch, tiny_checkpoints, tmp_path, capsys):
    import hf_expand.grow
    from safetensors import SafetensorError

    def fail(*args, **kwargs):
        raise SafetensorError("Error while deserializing header: header too large")

    monkeypatch.setattr(hf_expand.grow, "grow_checkpoint", fail)
    assert_one_line(capsys, ["grow", str(tiny_checkpoints("llama")), "--out", str(tmp_path / "out"),
                             "--add-layers", "1"], "header too large", tmp_path / "out")


def test_programming_errors_are_not_swallowed(monkeypatch, tiny_checkpoints, tmp_path, capsys):
    import hf_expand.grow

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(hf_expand.grow, "grow_checkpoint", bug)
    argv = ["grow", str(tiny_checkpoints("llama")), "--out", str(tmp_path / "out"), "--add-layers", "1", "-q"]
    capsys.readouterr()  # the tiny checkpoint's own save messages
    # not swallowed, not taken for bad input (2) or a preservation failure (1): exit 3, named, traceback with -v
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: ZeroDivisionError: a bug" in err[0], err
    assert main([*argv[:-1], "-v"]) == 3  # -v instead of -q (the two exclude each other)
    assert "Traceback" in capsys.readouterr().err
