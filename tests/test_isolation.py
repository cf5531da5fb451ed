"""Every test and script runs inside ``.venv``: nothing may lean on the system interpreter's packages.

Issue 13: a test made a venv with ``--system-site-packages`` from ``sys.executable`` (``.venv``'s Python).
Such a venv sees the *base* interpreter's site-packages, not ``.venv``'s, so it passed wherever the system
Python happened to have torch and failed on a fresh machine. Two guards:

- ``find_interpreter_leaks`` reads every test, script and benchmark for the ways a child interpreter
  escapes ``.venv`` (a ``--system-site-packages`` venv, a bare ``python``/``python3`` in an argv list);
- ``conftest.pytest_sessionfinish`` fails the session when any module imported in it was loaded from the
  base interpreter's site-packages (``outside_venv_modules``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# setup.sh is the one place a system interpreter is meant: it creates .venv.
ALLOWED = {"scripts/setup.sh"}
LEAKS = [
    (re.compile(r"system[-_]site[-_]packages"), "a venv that sees the base interpreter's packages"),
    (re.compile(r"""\[\s*["'](?:/usr/bin/)?python3?(?:\.\d+)?["']"""), "a bare python in an argv list (use sys.executable)"),
    (re.compile(r"""(?:^|[;&|]\s*)python3?\s+-m\s+(?!venv)"""), "a bare python -m in a shell line (use .venv/bin/python)"),
]


def find_interpreter_leaks(text: str) -> list[str]:
    return [why for pattern, why in LEAKS if pattern.search(text)]


def _sources() -> list[Path]:
    files = [p for d in ("tests", "scripts", "benchmarks", ".ci") for p in (ROOT / d).rglob("*")
             if p.is_file() and p.suffix in (".py", ".sh", "") and "__pycache__" not in p.parts]
    return [p for p in files if p.relative_to(ROOT).as_posix() not in ALLOWED and p.name != Path(__file__).name]


def test_the_guard_sees_the_old_fault():
    """The pattern of the test that failed on a fresh machine (issue 13) is caught; a clean one is not."""
    old = 'subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])'
    assert find_interpreter_leaks(old)
    assert find_interpreter_leaks('subprocess.run(["python3", "-c", "import torch"])')
    assert find_interpreter_leaks("cd x && python -m pytest")
    assert not find_interpreter_leaks('subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)])')
    assert not find_interpreter_leaks(".venv/bin/python -m pytest")


def test_no_test_or_script_leaves_the_venv():
    files = _sources()
    assert len(files) > 10, files  # the scan really read the tree
    leaks = {p.relative_to(ROOT).as_posix(): why for p in files if (why := find_interpreter_leaks(p.read_text(errors="replace")))}
    assert not leaks, f"child interpreters outside .venv: {leaks}; see docs/DEVELOPING.md (isolation rule)"


def outside_venv_modules() -> list[str]:
    """Modules of this process loaded from a site-packages folder that is not this environment's."""
    import site
    import sysconfig

    if sys.prefix == sys.base_prefix:
        return []  # not in a venv: nothing to compare with (the suite is meant to run from .venv)
    ours = [Path(p).resolve() for p in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()}]
    base = Path(sys.base_prefix).resolve()
    bad = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        if "site-packages" in path.parts and path.is_relative_to(base) and not any(path.is_relative_to(p) for p in ours):
            bad.append(f"{name} ({path})")
    return bad


def test_this_session_imports_nothing_from_the_base_interpreter():
    if sys.prefix == sys.base_prefix:
        pytest.fail("run the tests with .venv/bin/python (README): this interpreter is not a venv")
    assert outside_venv_modules() == []
