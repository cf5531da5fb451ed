"""Where a model came from, said without the paths of the machine that made it.

Records, cards and embedded recipes travel to the Hub; a path like ``/home/me/.venv/lib/...`` must not.
One rule, used everywhere a source is written down (``public_source``):

- a Hub id stays as it is;
- a folder inside an installed Python package becomes ``pkg:<package>/<sub/path>`` (the form recipes accept,
  so the embedded recipe still runs);
- any other local path becomes its folder or file name.

The local path itself is still needed on the machine (training compares the grown model with its local
base), so it goes into a sidecar dotfile, ``.hf_expand_local.json``, that ``push`` never uploads.

Lineage (the card's ``base_model``) is never guessed from ``_name_or_path``: it is a Hub id source, the
repo a parent folder was pushed to, or what the user says with ``--base-model`` / ``model.base_model``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import site
import sysconfig
from pathlib import Path

LOCAL_FILE = ".hf_expand_local.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def hub_id_syntax(value) -> bool:
    """Spelled like a Hub id (``org/name`` or ``name``), whatever exists on disk."""
    return (isinstance(value, str) and bool(_HUB_ID.match(value)) and value.count("/") <= 1
            and not value.startswith((".", "/")))


def is_hub_id(value) -> bool:
    """``org/name`` or ``name`` that is not an existing local path."""
    return hub_id_syntax(value) and not Path(value).exists()


def is_repo_id(value) -> bool:
    """A full ``namespace/name`` repo id (what ``--base-model``, ``push`` and lineage take)."""
    return hub_id_syntax(value) and "/" in value


def _site_dirs() -> list[Path]:
    dirs = {sysconfig.get_path(k) for k in ("purelib", "platlib")} | set(site.getsitepackages())
    user = site.getusersitepackages()
    if isinstance(user, str):
        dirs.add(user)
    return sorted((Path(d).resolve() for d in dirs if d and Path(d).is_dir()), key=lambda p: -len(p.parts))


def public_source(value: str | os.PathLike | None) -> str | None:
    """The name under which a model or data source may be published (see the module docstring)."""
    if value is None:
        return None
    text = str(value)
    if text.startswith(("pkg:", "builtin:")) or is_hub_id(text):
        return text
    path = Path(text)
    if not path.is_absolute() and not path.exists():
        return text  # neither a path here nor a Hub id: nothing local to hide
    resolved = path.resolve()
    for root in _site_dirs():
        if resolved.is_relative_to(root) and resolved != root:
            return "pkg:" + resolved.relative_to(root).as_posix()
    return resolved.name or text


def public_text(text: str | None, *paths) -> str | None:
    """``text`` with each of ``paths`` (absolute or as given) replaced by its public name."""
    if text is None:
        return None
    for p in sorted({str(p) for p in paths if p} | {str(Path(p).resolve()) for p in paths if p}, key=len, reverse=True):
        if p and p not in (".", "/") and (os.sep in p or Path(p).exists()):
            text = text.replace(p, public_source(p) or "")
    return text


def public_command(argv: list[str]) -> str:
    """``hf-expand`` + ``argv`` for records and cards: ``--token`` values masked, local paths named by
    ``public_source`` (so a command reads ``--data sentences.txt``, not ``--data /home/me/...``)."""
    out, hide = ["hf-expand"], False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
        elif arg == "--token":
            out.append(arg)
            hide = True
        elif arg.startswith("--token="):
            out.append("--token=***")
        elif arg.startswith("--") and "=" in arg:
            flag, _, value = arg.partition("=")
            out.append(f"{flag}={_public_arg(value)}")
        else:
            out.append(_public_arg(arg))
    return shlex.join(out)


def _public_arg(arg: str) -> str:
    if arg.startswith("-") or "=" in arg and not arg.startswith("/"):
        return arg
    if arg.startswith(("/", "~")) or (os.sep in arg and Path(arg).exists()):
        return public_source(os.path.expanduser(arg)) or arg
    return arg


def write_local(folder: str | Path, **paths) -> None:
    """Remember local source paths beside a model (never pushed: a dotfile)."""
    data = {k: str(Path(v).resolve()) for k, v in paths.items() if v and Path(v).exists()}
    if data:
        (Path(folder) / LOCAL_FILE).write_text(json.dumps(data, indent=2) + "\n")


def local_source(folder: str | Path, record: dict | None = None) -> str | None:
    """The local folder this model was grown from, if it is on this machine: the sidecar's path, else
    (records written before the sidecar existed) the record's ``source`` when it is a folder."""
    side = Path(folder) / LOCAL_FILE
    if side.is_file():
        try:
            path = json.loads(side.read_text()).get("source")
        except (OSError, ValueError):
            path = None
        if path and (Path(path) / "config.json").is_file():
            return path
    source = (record or {}).get("source")
    if source and Path(source).is_absolute() and (Path(source) / "config.json").is_file():
        return source
    return None


def base_model(record: dict) -> str | None:
    """The card's ``base_model`` (moved to ``record.parent_repo``; kept for importers)."""
    from .record import parent_repo

    return parent_repo(record)


def no_lineage_hint(source: str, flag: str = "--base-model ORG/NAME") -> str:
    return (f"{public_source(source)} is a local folder: the card will have no base_model (the Hub's model tree "
            f"stays empty); pass {flag} to name the Hub model it is")
