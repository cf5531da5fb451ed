"""Every `hf-expand ...` command line in README.md's code blocks uses real subcommands and flags."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hf_expand.cli import build_parser

README = Path(__file__).parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("hf-expand ") and "[" not in line:  # [..] marks syntax summaries, not commands
                lines.append(line)
    return lines


def test_readme_commands_parse():
    commands = readme_commands()
    assert len(commands) >= 6
    parser = build_parser()
    for line in commands:
        argv = shlex.split(line)[1:]
        args, extra = parser.parse_known_args(argv)
        if args.command == "run":
            extra = [e for e in extra if "=" not in e]
        assert not extra, f"README: {line!r}: unknown arguments {extra}"


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "bash scripts/quickstart.sh" in text and ".venv/bin/python -m pytest" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash scripts/quickstart.sh" in ci and ".venv/bin/python -m pytest" in ci
