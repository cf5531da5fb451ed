"""Training policies are one registry, and training arguments one dataclass (issue 17, item 1).

The registry (``hf_expand.train.policies``) is the one place a policy is declared: a policy registered here,
in the test, trains through ``train()`` and the CLI without any other file knowing its name. ``TrainArgs``'
fields are the one source of ``hf-expand train``'s flags and the recipe's ``train:`` keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_expand.cli import build_parser, main
from hf_expand.errors import HfExpandError
from hf_expand.recipe import SCHEMA, load_recipe
from hf_expand.train.args import TrainArgs, settings
from hf_expand.train.policies import REGISTRY, Policy, get_policy, policy_names, register_policy

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
BUILT_IN = ("new", "all", "lora")

# fields that are not both a flag and a recipe key, on purpose: field -> (flag?, recipe key?)
NOT_BOTH = {"out": (True, False),  # a recipe's trained model goes to <its out>/trained
            "command": (False, False)}  # filled by the CLI / the recipe runner: how the run was started


def _train_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # the subcommands
    return sub.choices["train"]


def _trainable_choices() -> list:
    return next(a for a in _train_parser()._actions if a.dest == "trainable").choices


def test_registry_lists_the_registered_policies():
    assert policy_names() == BUILT_IN == tuple(REGISTRY)
    assert _trainable_choices() == list(policy_names())
    assert all(isinstance(get_policy(name), Policy) and get_policy(name).name == name for name in BUILT_IN)
    # lora's plan marks old tensors "lora-base": a mode of that policy, not a policy of its own
    assert get_policy("lora").old_mode == "lora-base" and "lora-base" not in policy_names()


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered already"):
        register_policy(type("Again", (Policy,), {"name": "new"}))
    assert type(REGISTRY["new"]).__name__ != "Again"


def test_unknown_policy_is_one_line_with_the_registered_names(tmp_path):
    with pytest.raises(HfExpandError, match=r"unknown trainable policy 'nope'; use one of new, all, lora$"):
        get_policy("nope")
    from hf_expand.train import train

    args = TrainArgs(model=str(tmp_path / "m"), data=str(SENTENCES), out=str(tmp_path / "o"), trainable="nope",
                     max_steps=1)
    with pytest.raises(HfExpandError, match=r"--trainable must be one of new, all, lora, got 'nope'"):
        train(args, progress=False)  # refused up front, before anything is read or written
    assert not (tmp_path / "o").exists()


class NormsOnly(Policy):
    """A policy the library does not know: only normalization weights train (no growth record needed)."""

    name = "norms-only"
    help = "only the norms"

    def plan(self, model, record, head_names=()):
        from hf_expand.train.policy import TrainablePlan

        return TrainablePlan(self.name, {n: "full" if "norm" in n else "frozen" for n, _ in model.named_parameters()},
                             {})


@pytest.fixture()
def norms_only():
    register_policy(NormsOnly)
    try:
        yield NormsOnly.name
    finally:
        del REGISTRY[NormsOnly.name]


def test_a_registered_policy_trains_through_the_cli(norms_only, grown_llama, tmp_path, capsys):
    """Registering is all it takes: ``--trainable`` offers it, ``train()`` plans, prepares, optimizes and saves
    with its hooks (loop.py never names a policy)."""
    assert _trainable_choices() == [*BUILT_IN, norms_only]
    out = tmp_path / "norms"
    assert main(["train", str(grown_llama), "--data", str(SENTENCES), "--out", str(out), "--trainable", norms_only,
                 "--max-steps", "3", "--lr", "1e-2", "--log-every", "0", "-q"]) == 0
    assert f"policy {norms_only}:" in capsys.readouterr().out
    before, after = load_file(str(grown_llama / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all("norm" in n for n in moved), sorted(moved)
    assert "model.norm.weight" in moved
    from hf_expand.record import read_record

    assert read_record(out)["training"]["policy"] == norms_only
    with pytest.raises(HfExpandError, match="norms-only"):  # listed among the names once registered
        get_policy("nope")


def test_every_train_arg_has_a_flag_and_a_recipe_key_with_the_same_default():
    table = settings()
    assert len(table) >= 30 and [s.name for s in table] == [f.name for f in dataclasses.fields(TrainArgs)]
    parser = _train_parser()
    parsed = vars(parser.parse_args(["model-dir", "--data", "d", "--out", "o"]))
    for s in table:
        assert s.help, s.name
        has = (s.flag is not None, s.recipe is not None)
        assert has == NOT_BOTH.get(s.name, (True, True)), (s.name, has)
        if s.flag is not None and s.default is not dataclasses.MISSING:
            assert parsed[s.name] == s.default, (s.name, parsed[s.name], s.default)  # the CLI's default
        if s.recipe is not None:
            section, key = s.recipe.split(".")
            want = SCHEMA[section][key]
            assert isinstance(want, (type, tuple)), s.recipe
            if section == "train":  # passed to TrainArgs as is: the field's default when left out
                assert s.default is None or isinstance(s.default, want), (s.name, want)
                if s.type is bool:
                    assert want is bool, s.name
    train_keys = {s.recipe.removeprefix("train.") for s in table if s.recipe and s.recipe.startswith("train.")}
    assert set(SCHEMA["train"]) == train_keys  # no hand-kept key besides the fields
    flags = {o for a in parser._actions for o in a.option_strings}
    derived = {s.flag for s in table if s.flag and s.flag.startswith("--")} | {a for s in table for a in s.aliases}
    assert derived <= flags
    cli_only = {"-h", "--help", "-q", "--quiet", "-v", "--verbose", "--resume", "--overwrite", "--push-to", "--private", "--revision",
                "--commit-message", "--create-pr", "--token", "--include-dotfiles", "--timeout"}
    assert flags - derived == cli_only


def test_recipe_keys_follow_the_fields(tmp_path):
    """Settings that became recipe keys with the derived schema are checked by their flag's rule."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {id: some/model}\ndata: {source: d.jsonl}\n"
                      "train: {max_steps: 2, trainable: lora, lora_r: 4, lora_alpha: 8, max_grad_norm: 0.5, "
                      "save_adapter: true}\n")
    assert load_recipe(recipe)["train"]["lora_r"] == 4
    with pytest.raises(HfExpandError, match=r"^recipe: train\.lora_r: must be >= 1, got 0$"):
        load_recipe(recipe, ["train.lora_r=0"])
    with pytest.raises(HfExpandError, match=r"^recipe: train\.trainable: must be one of new, all, lora, got 'x'$"):
        load_recipe(recipe, ["train.trainable=x"])
    with pytest.raises(HfExpandError, match=r"recipe: train\.lora_r: expected int"):
        load_recipe(recipe, ["train.lora_r=four"])


def test_train_help_shows_every_flag_with_its_default(capsys):
    parser = _train_parser()
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    defaults = {s.flag: s for s in settings() if s.flag}
    for action in parser._actions:
        names = action.option_strings or [action.dest]
        assert action.help and action.help.strip(), f"{names} has no help"
        assert all(n in shown for n in names if n.startswith("-")), names
        s = defaults.get(names[0] if action.option_strings else action.dest)
        if s is not None and s.type is not bool and s.default not in (None, dataclasses.MISSING):
            assert f"(default: {s.default})" in shown, s.flag


def test_trainer_helper_asks_the_policy(tiny_checkpoints):
    """``prepare_for_trainer`` takes what the policy allows: ``lora`` refuses (use peft with Trainer)."""
    from transformers import AutoModelForCausalLM

    from hf_expand.train.trainer import prepare_for_trainer

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints("llama"))
    with pytest.raises(HfExpandError, match="for LoRA with Trainer use peft"):
        prepare_for_trainer(model, None, "lora")
    plan = prepare_for_trainer(model, None, "all")
    assert plan.policy == "all" and all(p.requires_grad for p in model.parameters())
