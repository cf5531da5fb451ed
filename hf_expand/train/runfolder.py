"""The run folder of ``hf-expand train``: one train at a time, leftovers of killed runs, unfinished runs.

* **Lock.** A run holds an exclusive ``fcntl.flock`` on ``<run>/.hf_expand_train.lock`` (its pid inside)
  for its whole life; a second train into the same folder is refused with that pid. The kernel drops the
  lock when the process dies, so a killed run never leaves a stale lock. The file itself stays (a dotfile:
  ``push`` leaves it local); deleting it would let two processes lock two different files.
* **Finished** means the growth record with its ``training`` section is there: the final save moves it
  into place last (the commit marker). ``train_args.json`` without it is an unfinished run.
* **Leftovers**: ``checkpoints/.step-N.partial`` (a checkpoint whose save was killed) and ``.final.partial``
  (a final save that was killed) are removed by the next run that holds the lock (``output.clean_leftovers``).
  Beside the folder, ``output.recover`` restores or removes what a killed ``--overwrite`` swap left.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

from ..errors import HfExpandError

LOCK_FILE = ".hf_expand_train.lock"
FINAL_PARTIAL = ".final.partial"
ARGS_FILE = "train_args.json"
CHECKPOINTS = "checkpoints"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return pid if pid.isdigit() else "unknown"


class RunLock:
    """An exclusive, non-blocking lock on ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path, shown: Path | None = None, create: bool = True):
        self.folder, self.shown, self.file = Path(folder), Path(shown or folder), None
        path = self.folder / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            if create:
                raise
            return  # peek on a folder nobody ever locked
        except OSError as exc:
            raise HfExpandError(f"cannot lock {self.shown} ({path}: {exc.strerror or exc})") from None
        f = os.fdopen(fd, "r+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise HfExpandError(f"{self.shown} is in use by another hf-expand train (pid {_holder(path)}); wait "
                                    f"for it to finish or choose another --out") from None
            raise HfExpandError(f"cannot lock {self.shown} ({path}: {exc.strerror or exc})") from None
        self.file = f
        if create:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the last descriptor drops the flock
            self.file = None


def check_not_in_use(folder: Path) -> None:
    """Refuse ``folder`` when another train holds its lock (creates nothing)."""
    if (Path(folder) / LOCK_FILE).is_file():
        RunLock(folder, create=False).release()


def finished(folder: Path, record_file: str) -> bool:
    """Whether ``folder`` holds a committed trained model (its record has a ``training`` section)."""
    path = Path(folder) / record_file
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "training" in record


def checkpoints(folder: Path) -> list[Path]:
    """``step-N`` checkpoints of a run folder, oldest first."""
    found = []
    for p in (Path(folder) / CHECKPOINTS).glob("step-*"):
        number = p.name.split("-", 1)[1]
        if p.is_dir() and number.isdecimal():
            found.append((int(number), p))
    return [p for _, p in sorted(found)]


def clean_leftovers(folder: Path) -> list[Path]:
    """Remove what killed saves left in a run folder (call with its lock held; ``output.clean_leftovers``
    says one line each); returns what was removed."""
    from ..output import clean_leftovers as clean

    folder = Path(folder)
    return [*clean(folder / CHECKPOINTS, [".step-*.partial"]), *clean(folder, [FINAL_PARTIAL])]


def staging_dir(out: Path) -> Path:
    """Where an ``--overwrite`` run trains until it replaces ``out`` (a hidden sibling)."""
    return out.with_name(f".{out.name}.train-new")


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
