"""README.md is true: every command in its code blocks runs, as written, and does what the text says.

The two Quickstart commands (set up + quickstart, the test suite) are what `.ci/run` runs, so CI proves
them. Every other shell line and Python block runs here in a scratch folder, in document order (later
commands use earlier outputs), against a Hub-compatible server on 127.0.0.1 that holds small stand-ins
for the Hub ids README names (the real all-MiniLM-L6-v2 files for sentence-transformers/all-MiniLM-L6-v2)
and accepts pushes to ``your-name/...``. Subprocesses, because HF_ENDPOINT must be set before import.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hf_expand.cli import build_parser
from hub_server import HubServer, client_env

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
CI_COMMANDS = {"bash scripts/quickstart.sh", ".venv/bin/python -m pytest"}  # run by .ci/run
RUNNABLE = ("hf-expand ", "ACCELERATE_USE_CPU=1 accelerate launch ")
TOKEN = "hf_readme_SECRET_token_0000"


def bash_lines() -> list[str]:
    """Every logical line of README's ```bash blocks (continuations joined, comments dropped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split("  #")[0].strip()
            if line:
                lines.append(line)
    return lines


def readme_commands() -> list[str]:
    """The shell commands this test runs: hf-expand and accelerate lines that are not syntax summaries."""
    return [ln for ln in bash_lines() if ln.startswith(RUNNABLE) and not is_summary(ln)]


def is_summary(line: str) -> bool:
    """A syntax summary writes optional flags in brackets (``[--tolerance T]``) or continues one (``[--x]``)."""
    return "[-" in line or line.startswith("[")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_every_bash_line_is_run_or_a_syntax_summary():
    commands = readme_commands()
    assert len(commands) >= 10
    for line in bash_lines():
        assert line in commands or line in CI_COMMANDS or is_summary(line), f"README line is neither run nor a summary: {line}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert all(c in README.read_text() and c in ci for c in CI_COMMANDS)


def test_readme_commands_parse():
    parser = build_parser()
    for line in readme_commands():
        argv = shlex.split(line)
        argv = argv[argv.index("hf_expand") + 1:] if "-m" in argv else argv[1:]
        args, extra = parser.parse_known_args(argv)
        if args.command == "run":
            extra = [e for e in extra if "=" not in e]
        assert not extra, f"README: {line!r}: unknown arguments {extra}"


def _stand_ins(root: Path, llama: Path) -> dict[str, Path]:
    """Small checkpoints for the Hub ids README names (tiny llama; a 32-layer tiny mistral for SOLAR)."""
    from conftest import minilm_path
    from matrix import tiny_config, tiny_tokenizer
    from transformers import AutoModelForCausalLM

    mistral = root / "mistral"
    config = tiny_config("mistral")
    config.num_hidden_layers = 32
    AutoModelForCausalLM.from_config(config).save_pretrained(mistral)
    tiny_tokenizer().save_pretrained(mistral)
    return {"sentence-transformers/all-MiniLM-L6-v2": minilm_path(), "meta-llama/Llama-3.2-1B": llama,
            "mistralai/Mistral-7B-v0.1": mistral}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoints):
    server = HubServer(tmp_path_factory.mktemp("hub"), {TOKEN: "your-name"})
    for repo_id, folder in _stand_ins(tmp_path_factory.mktemp("stand_ins"), tiny_checkpoints("llama")).items():
        server.seed(repo_id, folder)
    endpoint = server.start()
    work = tmp_path_factory.mktemp("readme")
    sentences = SENTENCES.read_text().splitlines()
    (work / "train.csv").write_text("text\n" + "\n".join(f'"{s}"' for s in sentences) + "\n")
    (work / "train.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences))
    (work / "test.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences[:10]))
    (work / "recipes").symlink_to(ROOT / "recipes")
    env = client_env(endpoint, tmp_path_factory.mktemp("hf_home"), HF_TOKEN=TOKEN,
                     PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    yield server, work, env
    server.stop()
    assert not server.errors


TIMINGS: dict[str, float] = {}


def _run(cmd: list[str], work: Path, env: dict, what: str):
    import time

    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    TIMINGS[what] = time.perf_counter() - start
    if os.environ.get("HF_EXPAND_README_TIMINGS"):
        print(f"{TIMINGS[what]:6.1f}s {what[:100]}", file=sys.__stderr__)
    assert result.returncode == 0, f"README {what} failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
    assert TOKEN not in result.stdout + result.stderr
    return result


def test_readme_runs_as_written(world):
    """Shell commands, then Python blocks, in document order; then what the text promises of them."""
    server, work, env = world
    outputs = {}
    for line in readme_commands():
        outputs[line] = _run(["bash", "-c", line], work, env, f"command {line!r}").stdout
    blocks = python_blocks()
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        (work / f"block{i}.py").write_text(block)
        _run([sys.executable, f"block{i}.py"], work, env, f"python block {i}:\n{block}")

    # Growing: the dry run reads no weights; LLaMA Pro verified; SOLAR recorded as not preserving
    assert not (work / "out" / "minilm-grown").exists()
    record = json.loads((work / "out" / "llama-pro" / "hf_expand_growth.json").read_text())
    assert record["verification"]["function_preserving"] and record["verification"]["reloaded_max_abs_diff"] <= 1e-4
    solar = json.loads((work / "out" / "solar" / "config.json").read_text())
    assert solar["num_hidden_layers"] == 48
    assert json.loads((work / "out" / "solar" / "hf_expand_growth.json").read_text())["verification"]["function_preserving"] is False
    # Augmenting: 2 copies per sentence after each original
    from datasets import load_from_disk

    aug = load_from_disk(str(work / "data" / "train-aug"))
    aug = aug["train"] if hasattr(aug, "keys") else aug
    assert len(aug) == 3 * len(SENTENCES.read_text().splitlines())
    # Training: new capacity trained, then evaluated; DDP ran two processes
    trained = json.loads((work / "out" / "trained" / "hf_expand_growth.json").read_text())["training"]
    assert trained["policy"] == "new" and trained["steps"] == 200
    evaluate_line = next(ln for ln in readme_commands() if ln.startswith("hf-expand evaluate"))
    assert "perplexity" in outputs[evaluate_line]
    ddp = json.loads((work / "out" / "trained-ddp" / "hf_expand_growth.json").read_text())["training"]
    assert ddp["processes"] == 2 and len(set(ddp["rank_checksums"])) == 1
    # Publishing: pushed, then pulled back from the Hub, grown and pushed again
    files = server.files("your-name/llama-pro-trained")
    assert "model.safetensors" in files and "README.md" in files
    again = json.loads(server.files("your-name/llama-pro-2")["hf_expand_growth.json"])
    assert again["source"] == "your-name/llama-pro-trained"


def test_reliability_promises_name_real_tests():
    """Every test README's "Reliability promises" table names exists (a renamed test breaks the claim)."""
    import re

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    table = text.split("## Reliability promises", 1)[1].split("\n## ", 1)[0]
    refs, current = [], None
    for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?", table):
        current = path or current
        if path or name:
            refs.append((current, name))
    assert len(refs) > 20, refs
    for path, name in refs:
        source = (root / path).read_text()
        assert not name or re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} not found"
