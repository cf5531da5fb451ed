"""The command line: grow a real checkpoint, --dry-run, and every bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_nothing_written, minilm_path, tiny_config
from hf_expand.cli import main


def run_cli(capsys, *args):
    capsys.readouterr()  # drop what fixtures printed
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


BAD_INPUTS = {
    "factor_equal_one": (["--widen-ffn", "1.0"], "greater than 1"),
    "factor_below_one": (["--widen-ffn", "0.5"], "greater than 1"),
    "factor_not_number": (["--widen-ffn", "wide"], "expected a number"),
    "size_not_whole": (["--ffn-size", "100.5"], "whole number"),
    "factor_gives_fraction": (["--widen-ffn", "1.3"], "not a whole number"),
    "size_not_larger": (["--ffn-size", "80"], "must be larger"),
    "negative_count": (["--add-layers", "-1"], "at least 1"),
    "zero_count": (["--add-layers", "0"], "at least 1"),
    "fractional_count": (["--add-layers", "1.5"], "whole number"),
    "placement_out_of_range": (["--add-layers", "1", "--placement", "9"], "out of range"),
    "placement_garbage": (["--add-layers", "1", "--placement", "middle"], "interleave, top, bottom"),
    "placement_count_mismatch": (["--add-layers", "3", "--placement", "1,2"], "does not match"),
    "nothing_to_do": ([], "nothing to grow"),
    "negative_tolerance": (["--add-layers", "1", "--tolerance", "-1"], "--tolerance must be"),
    "negative_position": (["--placement", "-1"], "non-negative"),
    "nan_tolerance": (["--add-layers", "1", "--tolerance", "nan"], "--tolerance must be"),
    "infinite_factor": (["--widen-ffn", "inf"], "is above"),
    "huge_size": (["--ffn-size", "1e30"], "beyond any trainable width"),
    "huge_count": (["--add-layers", "1e12"], "is more than"),
    "seed_overflow": (["--add-layers", "1", "--seed", "99999999999999999999999"], "--seed must be"),
    "empty_position": (["--placement", "1,,2"], "comma-separated"),
    "init_without_widen": (["--add-layers", "1", "--init", "split"], "--init applies to FFN widening"),
}


def test_bad_input_table_nonempty():
    assert len(BAD_INPUTS) >= 10


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_grow_arguments(case, capsys, llama_dir, tmp_path):
    args, message = BAD_INPUTS[case]
    code, out, err = run_cli(capsys, "grow", llama_dir, "--out", tmp_path / "out", *args)
    assert code == 2
    assert message in err
    assert err.startswith("hf-expand: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert_nothing_written(tmp_path)


def test_src_not_a_model(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    afile = tmp_path / "file.txt"
    afile.write_text("hello")
    for src, message in [(empty, "not a model folder"), (afile, "not a model folder"),
                         ("./does/not/exist", "neither an existing folder nor a valid Hub id")]:
        code, _, err = run_cli(capsys, "grow", src, "--out", tmp_path / "out", "--add-layers", "1")
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert_nothing_written(tmp_path)


def test_hub_id_unreachable_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "grow", "no-such-org/no-such-model", "--out", tmp_path / "out", "--add-layers", "1")
    assert code == 2 and "could not load a model config from no-such-org/no-such-model" in err
    assert err.count("\n") == 1
    assert_nothing_written(tmp_path)


def test_unknown_family(capsys, tmp_path):
    from transformers import AutoConfig

    src = tmp_path / "gptj"
    AutoConfig.for_model("gptj", n_embd=32, n_layer=1, n_head=2, vocab_size=50, rotary_dim=8).save_pretrained(src)
    code, _, err = run_cli(capsys, "grow", src, "--out", tmp_path / "out", "--add-layers", "1")
    assert code == 2
    assert "no architecture data for model_type 'gptj'" in err and "data/gptj.json" in err
    assert_nothing_written(tmp_path)


def test_refused_config(capsys, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("gpt2")
    cfg.scale_attn_by_inverse_layer_idx = True
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "gpt2")
    code, _, err = run_cli(capsys, "grow", tmp_path / "gpt2", "--out", tmp_path / "out", "--add-layers", "1")
    assert code == 2 and "scale_attn_by_inverse_layer_idx" in err
    assert_nothing_written(tmp_path)


def test_existing_output_is_kept(capsys, llama_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", out, "--add-layers", "1")
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "mine"
    # Not written by hf-expand: refused even with --overwrite (tests/test_output_safety.py has the rules).
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", out, "--add-layers", "1", "--overwrite")
    assert code == 2 and "not written by hf-expand" in err and (out / "precious.txt").read_text() == "mine"
    # An earlier grow output is replaced by a complete grown folder.
    (out / "hf_expand_growth.json").write_text("{}")
    code, _, _ = run_cli(capsys, "grow", llama_dir, "--out", out, "--add-layers", "1", "--overwrite")
    assert code == 0
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_preservation_failure_writes_nothing(capsys, llama_dir, tmp_path):
    # A tolerance below what fp32 rounding of Net2Net's divided columns gives must refuse.
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", tmp_path / "out", "--widen-ffn", "1.5",
                           "--init", "split", "--tolerance", "0")
    assert code == 1 and "changed the outputs" in err and "nothing was written" in err
    assert_nothing_written(tmp_path)
    code, _, _ = run_cli(capsys, "grow", llama_dir, "--out", tmp_path / "out", "--widen-ffn", "1.5",
                         "--init", "split", "--tolerance", "0", "--accept-difference")
    assert code == 0 and (tmp_path / "out" / "config.json").exists()


def test_dry_run_reads_no_weights(capsys, tmp_path):
    src = tmp_path / "config_only"
    cfg = tiny_config("llama")
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(src)  # no weights at all: a dry run must not need them
    code, out, _ = run_cli(capsys, "grow", src, "--widen-ffn", "1.5", "--add-layers", "2", "--dry-run")
    assert code == 0
    assert "widen_ffn: intermediate_size 88 -> 132" in out
    assert "model.layers.0.mlp.gate_proj.weight  [88, 64] -> [132, 64]" in out
    assert "add_layers: 3 -> 5 layers, new at [1, 4]" in out
    assert "config.num_hidden_layers = 5" in out
    assert "parameters:" in out
    assert sorted(p.name for p in src.iterdir()) == ["config.json"]


def test_minilm_grown_keeps_token_embeddings(tmp_path):
    """The real checkpoint, through the real CLI process: FFN x1.5 and +2 layers, embeddings within 1e-4."""
    from transformers import AutoModel, AutoTokenizer

    src, out = minilm_path(), tmp_path / "minilm-grown"
    proc = subprocess.run(
        [sys.executable, "-m", "hf_expand", "grow", str(src), "--out", str(out), "--widen-ffn", "1.5",
         "--add-layers", "2", "--probe-text", "A man is playing a guitar on stage."],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    tok = AutoTokenizer.from_pretrained(out)
    sentences = ["The cat sits outside.", "A man is playing guitar.", "Growth should not forget anything it knew."]
    batch = tok(sentences, padding=True, return_tensors="pt")
    base = AutoModel.from_pretrained(src, dtype=torch.float32).eval()
    grown = AutoModel.from_pretrained(out, dtype=torch.float32).eval()
    assert grown.config.num_hidden_layers == 8 and grown.config.intermediate_size == 2304
    with torch.no_grad():
        a, b = base(**batch).last_hidden_state, grown(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    diff = (a - b).abs()[mask].max().item()
    assert diff <= 1e-4, diff
    record = json.loads((out / "hf_expand_growth.json").read_text())
    assert [o["op"] for o in record["operations"]] == ["widen_ffn", "add_layers"]
    assert record["operations"][0]["params_after"] > record["operations"][0]["params_before"]
    assert record["verification"]["reloaded_max_abs_diff"] <= 1e-4
    assert "wrote" in proc.stdout


def test_console_script_and_module_agree():
    exe = Path(sys.executable).parent / "hf-expand"  # the script installed beside this interpreter
    assert exe.exists(), "console script hf-expand is not installed (bash scripts/setup.sh)"
    a = subprocess.run([exe, "--version"], capture_output=True, text=True)
    b = subprocess.run([sys.executable, "-m", "hf_expand", "--version"], capture_output=True, text=True)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout and "hf-expand" in a.stdout


def test_loads_without_hf_expand(tiny_checkpoints, tmp_path):
    """The grown folder loads in a process where hf_expand cannot even be imported."""
    out = tmp_path / "grown"
    assert main(["grow", str(tiny_checkpoints("phi3")), "--out", str(out), "--widen-ffn", "2", "--add-layers", "1", "-q"]) == 0
    code = (
        "import sys; sys.modules['hf_expand'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        "assert m.config.num_hidden_layers == 4 and m.config.intermediate_size == 176\n"
        "assert not getattr(m.config, 'auto_map', None)\n"
        "print('ok', type(m).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok Phi3ForCausalLM" in proc.stdout


def test_output_paths_that_would_lose_data(capsys, tmp_path):
    from conftest import tiny_model

    parent = tmp_path / "parent"
    src = parent / "model"
    tiny_model("llama").save_pretrained(src)
    (parent / "notes.txt").write_text("keep me")
    before = sorted(p.name for p in src.iterdir())
    for out, message in [(src, "is the source model or contains it"), (parent, "is the source model or contains it"),
                         (parent / "notes.txt" / "sub", "is a file, not a folder")]:
        code, _, err = run_cli(capsys, "grow", src, "--out", out, "--add-layers", "1", "--overwrite")
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in src.iterdir()) == before and (parent / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in parent.iterdir()) == ["model", "notes.txt"]


def test_probe_text_without_tokenizer(capsys, tmp_path):
    from conftest import tiny_model

    src = tmp_path / "no_tokenizer"
    tiny_model("llama").save_pretrained(src)
    code, _, err = run_cli(capsys, "grow", src, "--out", tmp_path / "out", "--add-layers", "1", "--probe-text", "hi")
    assert code == 2 and "--probe-text needs a tokenizer" in err and err.count("\n") == 1
    assert_nothing_written(tmp_path)


def test_output_folder_is_readable_like_any_new_folder(capsys, llama_dir, tmp_path):
    code, _, _ = run_cli(capsys, "grow", llama_dir, "--out", tmp_path / "out", "--add-layers", "1")
    umask = os.umask(0)
    os.umask(umask)
    assert code == 0 and (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask


def test_exit_now_runs_exit_handlers_and_flushes(tmp_path):
    """The console script skips the interpreter's teardown (os._exit) but not what a normal exit does: the
    atexit handlers run, buffered output reaches a pipe, the exit code is kept, and a live non-daemon
    thread is waited for (the normal exit path)."""
    import subprocess
    import sys

    code = ("import atexit, sys, threading, time\n"
            "from hf_expand.cli import exit_now\n"
            "atexit.register(lambda: print('handler ran', flush=False))\n"
            "if sys.argv[1] == 'thread':\n"
            "    threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
            "print('buffered', end=' ')\n"
            "exit_now(3)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # really buffered output
    for mode, expected in (("plain", "buffered handler ran\n"), ("thread", "buffered thread done\nhandler ran\n")):
        run = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode == 3, (mode, run.stderr)
        assert run.stdout == expected, (mode, run.stdout)
    # output that cannot be flushed (a full disk behind `> file`) is not a success: 120, as the interpreter says
    with open("/dev/full", "w") as full:
        run = subprocess.run([sys.executable, "-c", code.replace("exit_now(3)", "exit_now(0)"), "plain"],
                             stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    assert run.returncode == 120, run.stderr
