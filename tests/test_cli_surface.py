"""The CLI's surface (issue 18): help and defaults on every flag, examples, global -q/-v, a bare command,
`env`, shell completion, TrainingArguments spellings, and the exit code of an unexpected error."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from hf_expand import cli
from hf_expand.train.args import aliases


def _commands() -> dict[str, argparse.ArgumentParser]:
    """"" -> the main parser, "grow" -> its parser, ..., "recipes cp" -> a nested one."""
    out = {}

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        out[prefix] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(f"{prefix} {name}".strip(), child)

    walk("", cli.build_parser())
    return out


COMMANDS = _commands()


def test_the_command_table_is_not_empty():
    assert {"grow", "augment", "train", "evaluate", "push", "run", "verify", "setup-wordnet", "env",
            "completion", "recipes", "recipes ls", "recipes cp"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_has_help_and_shows_its_default(name):
    parser = COMMANDS[name]
    parser.format_help()  # builds a lazy epilog (augment)
    formatter = parser._get_formatter()
    actions = [a for a in parser._actions if a.help is not argparse.SUPPRESS and not isinstance(a, (
        argparse._HelpAction, argparse._SubParsersAction))]
    assert actions
    for action in actions:
        text = formatter._expand_help(action) if action.help else ""
        assert text.strip(), f"{name}: {action.option_strings or action.dest} has no help"
        shown = action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings \
            and not isinstance(action, argparse._VersionAction)
        if shown:
            assert "default" in text.lower(), f"{name}: {action.option_strings} does not show its default: {text}"
    if name and " " not in name:  # every command (its actions are listed in the command's own examples)
        assert "examples:" in (parser.epilog or ""), f"{name} has no examples"


TRAIN = ["train", "model", "--data", "d.txt"]
ALIASES = sorted(aliases().items())


def test_trainer_spellings_are_listed():
    assert {"--learning_rate", "--num_train_epochs", "--per_device_train_batch_size", "--gradient_accumulation_steps",
            "--output_dir"} <= {a for a, _ in ALIASES}


@pytest.mark.parametrize("alias,flag", ALIASES)
def test_trainer_spelling_parses_like_our_flag(alias, flag):
    parser = cli.build_parser()
    action = next(a for a in COMMANDS["train"]._actions if flag in a.option_strings)
    value = [] if action.nargs == 0 else [str(action.choices[-1]) if action.choices else
                                          "7" if action.type in (int, float) else "x"]
    out = [] if flag == "--out" else ["--out", "o"]
    ours = parser.parse_args([*TRAIN, *out, flag, *value])
    theirs = parser.parse_args([*TRAIN, *out, alias, *value])
    assert vars(ours) == vars(theirs)
    assert getattr(ours, action.dest) != action.default  # the value was taken


@pytest.mark.parametrize("flag,dest", [("-q", "quiet"), ("--quiet", "quiet"), ("-v", "verbose"), ("--verbose", "verbose")])
def test_verbosity_flags_work_before_and_after_the_command(flag, dest):
    parser = cli.build_parser()
    base = ["grow", "m", "--out", "o", "--widen-ffn", "1.5"]
    assert getattr(parser.parse_args([flag, *base]), dest) is True
    assert getattr(parser.parse_args([*base, flag]), dest) is True
    plain = parser.parse_args(base)
    assert plain.quiet is False and plain.verbose is False


def test_quiet_before_the_command_silences_the_logs(tiny_checkpoints, tmp_path, capsys):
    src = str(tiny_checkpoints("llama"))
    assert cli.main(["grow", src, "--out", str(tmp_path / "a"), "--widen-ffn", "1.5"]) == 0
    loud = capsys.readouterr().err
    assert cli.main(["-q", "grow", src, "--out", str(tmp_path / "b"), "--widen-ffn", "1.5"]) == 0
    quiet = capsys.readouterr().err
    assert "widen_ffn" in loud and "widen_ffn" not in quiet, (loud, quiet)


def test_bare_command_prints_help(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-expand") and "grow" in out and "exit codes" in out


def test_env_prints_versions_and_never_the_token(monkeypatch, capsys):
    import torch
    import transformers

    from hf_expand import __version__

    monkeypatch.setenv("HF_TOKEN", "hf_SECRET_value_123")
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"- hf-expand: {__version__}" in out
    assert f"- torch: {torch.__version__.split('+')[0]}" in out and f"- transformers: {transformers.__version__}" in out
    assert "HF token in the environment: set (not shown)" in out and "SECRET" not in out


@pytest.mark.parametrize("words,expected", [
    (["gr"], {"grow"}),
    (["grow", "--wid"], {"--widen-ffn", "--widen-hidden"}),
    (["-q", "train", "--learn"], {"--learning_rate"}),
    (["verify", "--tol"], {"--tolerance"}),
])
def test_bash_completion(words, expected, capsys):
    assert cli.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    line = " ".join(["hf-expand", *words])
    probe = (f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words)}; _hf_expand; "
             'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == expected


def test_unexpected_error_exits_3_with_one_line(monkeypatch, capsys):
    def boom(args):
        raise TypeError("boom\nsecond line")

    monkeypatch.setattr(cli, "cmd_env", boom)
    assert cli.main(["env"]) == cli.INTERNAL_ERROR == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-expand: internal error: TypeError: boom (rerun with -v"), err
    assert cli.main(["env", "-v"]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in boom" in err


def test_step_logs_go_above_the_progress_bar(grown_llama, tmp_path, monkeypatch):
    """On a terminal the bar (stderr) and the step lines (stdout) share a screen: every step line must start a
    line of its own (tqdm.write clears the bar first), not be glued to the end of the bar's text."""
    import io
    import re
    import sys

    from hf_expand.train.loop import TrainArgs, train
    from test_train import SENTENCES

    screen = io.StringIO()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    train(TrainArgs(model=str(grown_llama), data=str(SENTENCES), out=str(tmp_path / "t"), max_steps=3, batch_size=8,
                    log_every=1), progress=True)
    text = screen.getvalue()
    starts = [m.start() for m in re.finditer(r"step \d+: loss", text)]
    assert len(starts) == 3, text
    assert all(i == 0 or text[i - 1] in "\r\n" for i in starts), text


def test_recipes_ls_and_cp(tmp_path, capsys, monkeypatch):
    from hf_expand.recipe import shipped_recipes

    shipped = shipped_recipes()
    assert "quickstart" in shipped and len(shipped) >= 5
    assert cli.main(["recipes", "ls"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(shipped)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["recipes", "cp", "llama-pro"]) == 0
    assert (tmp_path / "llama-pro.yaml").read_bytes() == shipped["llama-pro"].read_bytes()
    (tmp_path / "mine.yaml").write_text("keep")
    capsys.readouterr()
    assert cli.main(["recipes", "cp", "quickstart", "mine.yaml"]) == 2  # never replaced without --overwrite
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hf-expand: error: mine.yaml exists; choose another destination or pass --overwrite to replace it"]
    assert (tmp_path / "mine.yaml").read_text() == "keep"
    assert cli.main(["recipes", "cp", "quickstart", "mine.yaml", "--overwrite"]) == 0
    assert (tmp_path / "mine.yaml").read_bytes() == shipped["quickstart"].read_bytes()
    (tmp_path / "d").mkdir()
    assert cli.main(["recipes", "cp", "new-labels", "d"]) == 0 and (tmp_path / "d" / "new-labels.yaml").is_file()
    assert cli.main(["recipes", "cp", "nope"]) == 2
    assert "no shipped recipe named 'nope'; shipped: " in capsys.readouterr().err
