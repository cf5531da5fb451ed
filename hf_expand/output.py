"""Writing output folders: one way for every command (grow, augment, setup-wordnet, recipe stages; train can
use the same pieces).

The rules (issue 14, findings 4, 5, 13):

* **Build aside, commit by rename.** :func:`atomic_output_dir` yields a temporary sibling
  ``.<name>.tmp-<pid>-<random>`` of ``out``; the command writes into it, and only a complete build is renamed
  into place. A failure or Ctrl-C removes it. The writer holds an exclusive ``flock`` on the temp folder
  while it lives, so another run can tell a live build from the leftover of a killed one.
* **Re-check under a lock at commit time.** The commit takes an exclusive ``flock`` on ``.<name>.lock`` beside
  ``out`` (removed again afterwards; a stale one left by a kill is reused and removed by the next commit) and
  checks ``out`` again: a folder that appeared since the start is never replaced without ``overwrite``, so of
  two concurrent runs to one ``out`` exactly one wins and the other fails with one line, its build removed.
* **What ``--overwrite`` may replace**: only a folder hf-expand wrote (it holds one of :data:`MARKERS`: the
  growth record, the augmentation record, a run's ``stages.json``, a training run's ``train_args.json``, and
  no ``.git``) or an empty folder. Anything else (a project tree, a git checkout, a folder of the user's) is
  refused even with ``--overwrite``. A symlink at ``out`` is refused, never followed to its target.
* **No moment without a complete ``out``, or the next run restores it.** Replacing renames the old folder to
  ``.<name>.old-<pid>``, the new one to ``out``, and deletes the old one, all under the lock. A run killed
  between the two renames leaves ``.<name>.old-<pid>`` and no ``out``: the next check or commit of that
  ``out`` (any command) renames it back first and says so in one line. Under the lock every
  ``.<name>.old-*`` is a leftover (a live commit holds the lock until its old folder is gone).
* **Leftovers** of killed runs (temp builds no live process holds, moved-aside folders next to a complete
  ``out``) are removed by the next run that checks that ``out``, one line each; what cannot be removed is
  named in one line. :func:`clean_leftovers` does the same for other hidden work folders (training's
  ``checkpoints/.step-N.partial``, a recipe's ``.<stage>.partial``).
* **Disk and permission errors** (ENOSPC, EDQUOT, EFBIG, EROFS, EACCES, EPERM) while building or committing
  become one :class:`HfExpandError` line naming the path and the fix; the temp build is removed, so nothing
  half-written is left and an existing ``out`` is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import HfExpandError

log = logging.getLogger(__name__)

# A folder holding one of these (and no .git) was written by hf-expand: grow/train model folders, augment
# outputs, run folders, training run folders.
MARKERS = ("hf_expand_growth.json", "hf_expand_augmentation.json", "stages.json", "train_args.json")

_DISK_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free space there or choose another --out on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or choose another --out on another disk"),
    errno.EFBIG: ("a file grew too large for the file system or the file-size limit (ulimit -f)",
                  "raise the limit or choose another --out on another file system"),
    errno.EROFS: ("the file system is read-only", "choose another --out on a writable disk"),
    errno.EACCES: ("permission denied", "fix the folder's permissions or choose another --out"),
    errno.EPERM: ("operation not permitted", "fix the folder's permissions or choose another --out"),
}
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")


# ---------------------------------------------------------------------------------------------------------
# ownership


def written_by_hf_expand(folder: Path, markers: Iterable[str] = MARKERS) -> bool:
    """``folder`` is empty, or holds one of ``markers`` and no ``.git``."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        return False
    return not names or (".git" not in names and any((folder / m).is_file() for m in markers if m in names))


def _refusal(out: Path, overwrite: bool, markers: tuple[str, ...], flag: str, appeared: bool = False) -> str | None:
    """Why ``out`` may not be replaced now (one line), or None."""
    if out.is_symlink():
        return (f"{flag} {out} is a symbolic link (to {os.readlink(out)}); hf-expand never writes through a link "
                f"at the output path; give the real folder or choose another {flag}")
    if not out.exists():
        return None
    if not out.is_dir():
        return f"output path {out} exists and is not a folder; remove it or choose another {flag}"
    ours = written_by_hf_expand(out, markers)
    why = ("holds a .git folder" if (out / ".git").exists() else f"no {' / '.join(markers)}")
    if not overwrite:
        if appeared:
            return (f"output folder {out} appeared while this command ran (another run or program wrote it); it was "
                    f"left as it is and nothing was written; pass --overwrite to replace it or choose another {flag}")
        if not ours:
            return (f"output folder {out} already exists and was not written by hf-expand ({why}); choose another "
                    f"{flag} (--overwrite replaces only hf-expand's own or empty folders)")
        return f"output folder {out} already exists; pass --overwrite to replace it or choose another {flag}"
    if not ours:
        return (f"output folder {out} was not written by hf-expand ({why}); refusing to replace it even with "
                f"--overwrite; remove it yourself or choose another {flag}"
                + ("; nothing was written" if appeared else ""))
    return None


# ---------------------------------------------------------------------------------------------------------
# errors


def disk_error(exc: BaseException, out: Path, flag: str = "--out") -> HfExpandError | None:
    """The one-line error for a disk or permission failure while writing ``out`` (None for other errors).
    Also reads the errno of Rust I/O errors (safetensors: ``... (os error 27)``)."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code is None and not isinstance(exc, (HfExpandError, KeyboardInterrupt, SystemExit)):
        m = _RUST_OS_ERROR.search(str(exc))
        code = int(m.group(1) or m.group(2)) if m else None
    if code not in _DISK_ERRORS:
        return None
    what, fix = _DISK_ERRORS[code]
    fix = fix.replace("--out", flag)
    name = getattr(exc, "filename", None)
    where = ""
    if name:
        path = Path(os.fspath(name))
        tmp = next((p for p in (path, *path.parents) if p.name.startswith(f".{out.name}.tmp-")), None)
        inside = path.relative_to(tmp) if tmp is not None else path
        where = "" if path == out or str(inside) == "." else f" ({out / inside if tmp is not None else path})"
    return HfExpandError(f"cannot write {out}{where}: {what}; {fix}; nothing was written")


# ---------------------------------------------------------------------------------------------------------
# locks and leftovers


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``.<name>.lock`` beside ``out``, removed on release. After locking, the path must
    still name the locked file (a releaser unlinks it before unlocking), else lock the new one."""
    path = out.with_name(f".{out.name}.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                now = os.stat(path)
                same = (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev)
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


_OWN_BUILDS: set[Path] = set()  # temp builds of this process still in progress


def _hold(folder: Path) -> int:
    """Lock ``folder`` for as long as the returned descriptor is open (marks a live writer)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # a file system without flock: the pid in the name is the fallback
    return fd


def _held(path: Path) -> bool:
    """A live process holds ``path`` (its lock is taken; without flock support: the pid in its name lives).
    This process's own builds count as held (flock emulated by POSIX locks, as on NFS, would not conflict)."""
    if Path(os.path.realpath(path)) in _OWN_BUILDS:
        return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if path.is_dir() else 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        m = re.search(r"\.tmp-(\d+)-", path.name)
        if not m:
            return False
        try:
            os.kill(int(m.group(1)), 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    finally:
        os.close(fd)


def _remove(path: Path, why: str) -> bool:
    try:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.warning(f"could not remove {path} ({why}): {exc.strerror or exc}; remove it yourself")
        return False
    log.warning(f"removed {path} ({why})")
    return True


def _leftovers(out: Path) -> tuple[list[Path], list[Path]]:
    """(temp builds, moved-aside old folders) named after ``out`` in its parent."""
    name = re.escape(out.name)
    tmp_re = re.compile(rf"^\.{name}\.tmp-(?:\d+-)?[A-Za-z0-9_]+$")  # older versions: no pid in the name
    old_re = re.compile(rf"^\.{name}\.old-\d+$")
    try:
        entries = os.listdir(out.parent)
    except OSError:
        return [], []
    return ([out.parent / e for e in sorted(entries) if tmp_re.match(e)],
            [out.parent / e for e in sorted(entries) if old_re.match(e)])


def _recover_locked(out: Path) -> None:
    """With the lock held: put back an ``out`` a killed commit left moved aside, drop the other leftovers."""
    tmps, olds = _leftovers(out)
    if olds and not os.path.lexists(out):
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.rename(newest, out)
        log.warning(f"restored {out} from {newest.name}, left by an hf-expand run killed while replacing it")
        olds.remove(newest)
    for old in olds:
        _remove(old, f"the previous {out.name}, left by an hf-expand run killed while replacing it")
    for tmp in tmps:
        if not _held(tmp):
            _remove(tmp, "an unfinished build left by a killed hf-expand run")


def recover(out: str | os.PathLike) -> None:
    """Restore or remove what killed runs left beside ``out`` (a no-op, taking no lock, when there is nothing)."""
    out = Path(out)
    if any(_leftovers(out)) or os.path.lexists(out.with_name(f".{out.name}.lock")):  # a kill mid-commit leaves one
        try:
            with _lock(out):
                _recover_locked(out)
        except OSError as exc:
            tmps, olds = _leftovers(out)
            log.warning(f"leftovers of killed runs next to {out} could not be cleaned ({exc.strerror or exc}): "
                        f"{', '.join(p.name for p in olds + tmps)}")


def clean_leftovers(folder: str | os.PathLike, patterns: Iterable[str]) -> list[Path]:
    """Remove the entries of ``folder`` matching any of ``patterns`` (``fnmatch``, e.g. ``".step-*.partial"``)
    that no live writer holds (see :func:`_hold`); one line each. Returns what was removed. For hidden work
    folders a killed run leaves inside a folder the caller owns (call it before starting new work there)."""
    folder = Path(folder)
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        path = folder / entry
        if any(fnmatch.fnmatchcase(entry, p) for p in patterns) and not _held(path):
            if _remove(path, "left by a killed hf-expand run"):
                removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------------------
# the public API


def _normalised(out: str | os.PathLike) -> Path:
    """Absolute, with the parents resolved but not the last component (a symlink there is refused, not followed)."""
    raw = Path(os.path.abspath(os.fspath(out)))
    return raw.parent.resolve() / raw.name if raw.name else raw


def check_output_dir(out: str | os.PathLike, overwrite: bool, src: str | None = None, *,
                     markers: tuple[str, ...] = MARKERS, flag: str = "--out") -> Path:
    """Refuse an unusable output before any work (one line naming the path and the fix): a symlink, a file,
    the source or a folder above it, an existing folder without ``overwrite``, a folder hf-expand did not
    write even with ``overwrite``, a parent that is a file or not writable. Leftovers of killed runs next to
    it are restored/removed first. Returns the normalised path."""
    out = _normalised(out)
    recover(out)
    if src is not None and Path(src).exists():
        source = Path(src).resolve()
        if out == source or out in source.parents:
            raise HfExpandError(f"{flag} {out} is the source model or contains it; choose another {flag}")
    refusal = _refusal(out, overwrite, markers, flag)
    if refusal:
        raise HfExpandError(refusal)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise HfExpandError(f"cannot create {out}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise HfExpandError(f"cannot write {out}: {parent} is not writable (permissions or a read-only "
                                    f"disk); choose another {flag}")
            break
    return out


def _commit(tmp: Path, out: Path, overwrite: bool, markers: tuple[str, ...], flag: str) -> None:
    """Under the lock: recover, re-check, move the old folder aside, move ``tmp`` in, delete the old one."""
    with _lock(out):
        _recover_locked(out)
        refusal = _refusal(out, overwrite, markers, flag, appeared=True)
        if refusal:
            raise HfExpandError(refusal)
        _swap(tmp, out)


def _swap(tmp: Path, out: Path) -> None:
    """With the lock held: old ``out`` aside (if any), ``tmp`` in, old deleted (put back if the move in fails).
    A kill between the renames leaves ``.<name>.old-<pid>``, which the next run renames back."""
    old = None
    if os.path.lexists(out):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is None:
        return
    try:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    except OSError as exc:
        log.warning(f"could not remove the replaced {old} ({exc.strerror or exc}); remove it yourself")


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False, src: str | None = None, *,
                      markers: tuple[str, ...] = MARKERS, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary sibling folder to build ``out`` in; on success it is committed (see the module
    docstring: re-checked under the lock, replaces only what ``overwrite`` allows), on failure removed.
    Disk and permission errors become one :class:`HfExpandError` line."""
    out = check_output_dir(out, overwrite, src, markers=markers, flag=flag)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with _lock(out):  # a cleanup in another process must not see the new build before it is held
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
            try:
                fd = _hold(tmp)
                _OWN_BUILDS.add(Path(os.path.realpath(tmp)))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as exc:
        raise (disk_error(exc, out, flag) or exc) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should be as readable as any new folder
        try:
            yield tmp
            _commit(tmp, out, overwrite, markers, flag)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            mapped = disk_error(exc, out, flag)
            if mapped is not None:
                raise mapped from None
            raise
    finally:
        _OWN_BUILDS.discard(Path(os.path.realpath(tmp)))
        os.close(fd)


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing whatever is there (the caller owns ``out``, e.g.
    a recipe stage in its run folder), under the same lock and with the same restore-on-kill as a commit."""
    tmp, out = Path(tmp), Path(out)
    with _lock(out):
        _recover_locked(out)
        _swap(tmp, out)
