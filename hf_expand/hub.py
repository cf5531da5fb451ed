"""Publishing: push an output folder to the Hub (or any Hub-compatible endpoint) in one commit.

The token comes from ``--token``, ``HF_TOKEN`` or the stored login (huggingface_hub resolves the last two);
the endpoint from ``HF_ENDPOINT``. The token is only ever handed to the client: it is never written into
the folder, the card or a log, and error messages are scrubbed of it.

Safety (issue 14): every HTTP request of a push has a timeout (``timeout=`` / ``HF_EXPAND_PUSH_TIMEOUT``,
default 60 s, per connect / read / write: a large upload that keeps moving is never cut) and a timed-out
request is not retried. Only the folder's own regular files go up: a link that leads out of the folder, a
FIFO or a socket is refused, and dotfiles / dot-folders at any depth (``sub/.env``) stay local unless
``include_dotfiles=True`` (what was left out is logged). A folder whose save or training did not finish is
refused before any request: ``train_args.json`` without a ``training`` section in the record, a
``config.json`` or index that does not parse, a ``*.safetensors`` file whose size is not what its header
says, an index naming a missing shard, shards without their index, no weights at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import stat
from pathlib import Path

from .errors import HfExpandError
from .record import RECORD_FILE, TRAINING, read_record, record_text, write_record

TIMEOUT_ENV = "HF_EXPAND_PUSH_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
TRAIN_ARGS_FILE = "train_args.json"  # = train.loop.ARGS_FILE (not imported: that pulls in torch and accelerate)
LOCAL_ONLY_FOLDERS = ("checkpoints",)  # training state at the top level: never uploaded (logs/ goes up: TensorBoard tab)
LOCAL_SIDECAR = ".hf_expand_local.json"  # = lineage.LOCAL_FILE: local paths, never uploaded (even with dotfiles)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_SHARD = re.compile(r"^(?P<prefix>.+)-\d{5}-of-\d{5}\.safetensors$")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
                "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "C64": 8}
_MAX_HEADER = 100_000_000  # the safetensors library's own limit on the JSON header
_RESAVE = "the save did not finish (killed, disk full or interrupted); write the model again (rerun grow, or train with --resume), then push"
log = logging.getLogger("hf_expand")


def _one_line(exc: Exception, token: str | None) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.replace(token, "***") if token else text


# ------------------------------------------------------------------ timeout


def push_timeout(timeout: float | None = None) -> float:
    """Seconds each Hub request of a push may wait (connect, each read, each write): ``timeout``, else
    ``HF_EXPAND_PUSH_TIMEOUT``, else 60."""
    source = "timeout"
    if timeout is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(raw)
        except ValueError:
            raise HfExpandError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds; set e.g. {TIMEOUT_ENV}=120") from None
        source = TIMEOUT_ENV
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise HfExpandError(f"push timeout ({source}) must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


class PushTimeout(Exception):
    """A Hub request got no answer in time. Deliberately not an httpx ``TimeoutException``: huggingface_hub's
    ``http_backoff`` (preupload, LFS uploads) retries those 5 times with 23 s of backoff."""

    def __init__(self, method: str, url: str, kind: str, seconds: float):
        self.method, self.url, self.kind, self.seconds = method, url, kind, seconds
        what = {"connect": "could not connect for", "write": "could not send", "pool": "no free connection for"}
        super().__init__(f"{what.get(kind, 'no answer from')} {method} {url} within {seconds:g} s")


def _timed_client_factory(seconds: float):
    """A factory for huggingface_hub's shared client (as its default one) whose every request, redirects
    included, waits at most ``seconds`` per connect / read / write. Set on the client *and* forced per request:
    ``HfApi.model_info`` and others pass ``timeout=None`` explicitly, which overrides a client default."""
    from huggingface_hub.utils import _http

    httpx = getattr(_http, "httpx2", None) or _http.httpx  # huggingface_hub 2.x ships the httpx2 fork

    class TimedClient(httpx.Client):
        def send(self, request, **kwargs):
            asked = request.extensions.get("timeout") or {}
            limits = {k: min(asked[k], seconds) if asked.get(k) else seconds for k in ("connect", "read", "write", "pool")}
            request.extensions = {**request.extensions, "timeout": limits}
            try:
                return super().send(request, **kwargs)
            except httpx.TimeoutException as exc:
                kind = {httpx.ConnectTimeout: "connect", httpx.WriteTimeout: "write", httpx.PoolTimeout: "pool"}.get(type(exc), "read")
                raise PushTimeout(request.method, str(request.url).split("?")[0], kind, limits[kind]) from None

    return lambda: TimedClient(event_hooks={"request": [_http.hf_request_event_hook]}, follow_redirects=True,
                               timeout=seconds)


@contextlib.contextmanager
def _hub_timeout(seconds: float):
    """huggingface_hub's shared HTTP client with the push timeout, for the duration of the block."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory
    set_client_factory(_timed_client_factory(seconds))
    try:
        yield
    finally:
        set_client_factory(previous)


# ------------------------------------------------------------------ which files go up


def upload_files(folder: str | Path, include_dotfiles: bool = False) -> list[tuple[str, Path]]:
    """``(path in repo, local path)`` of every file a push uploads from ``folder`` (besides the card and the
    record, sent from memory), sorted. Regular files only; a link must resolve to a regular file inside
    ``folder`` (its content goes up under the link's name), anything else is refused. Dotfiles and
    dot-folders at any depth stay local unless ``include_dotfiles`` (hf-expand's own ``.hf_expand_local.json``,
    ``train_args.json`` and ``checkpoints/`` always do; ``logs/``, the tracker logs of ``--report-to``, goes up, as
    the Hub shows TensorBoard event files in the model's metrics tab); a linked folder is not followed (its
    files inside ``folder`` go up under their own paths). What is left out is logged."""
    folder = Path(folder)
    root = folder.resolve()
    files: list[tuple[str, Path]] = []
    dots: list[str] = []
    linked_dirs: list[str] = []

    def hidden(rel: str) -> bool:
        return not include_dotfiles and any(part.startswith(".") for part in rel.split("/"))

    def inside(path: Path, rel: str) -> Path:
        target = path.resolve()
        if target != root and root not in target.parents:
            raise HfExpandError(f"{rel} in {folder} is a link to {target}, outside the folder; push uploads only the "
                                f"folder's own files: copy the file in (cp -L) or remove the link, then push again")
        return target

    for dirpath, dirnames, filenames in os.walk(folder):  # does not follow linked folders
        base = Path(dirpath)
        rel_dir = base.relative_to(folder).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        keep = []
        for name in sorted(dirnames):
            rel, path = prefix + name, base / name
            if not prefix and name in LOCAL_ONLY_FOLDERS:
                continue
            if hidden(name):
                dots.append(rel + "/")
            elif path.is_symlink():
                inside(path, rel)
                linked_dirs.append(rel + "/")
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel, path = prefix + name, base / name
            if not prefix and name in ("README.md", RECORD_FILE, TRAIN_ARGS_FILE, LOCAL_SIDECAR):
                continue  # card and record: refreshed and sent from memory; the other two: local state
            if hidden(name):
                dots.append(rel)
                continue
            if path.is_symlink():
                target = inside(path, rel)
                if hidden(target.relative_to(root).as_posix()):
                    dots.append(f"{rel} (a link to {target.relative_to(root).as_posix()})")
                    continue
            try:
                mode = path.stat().st_mode
            except OSError as exc:
                raise HfExpandError(f"{rel} in {folder} cannot be read ({exc.strerror or exc}); fix or remove it, then push again") from None
            if not stat.S_ISREG(mode):
                raise HfExpandError(f"{rel} in {folder} is not a regular file (a FIFO, socket or device); remove it, then push again")
            files.append((rel, path))
    if dots:
        log.info("push: left out %s (dotfiles; --include-dotfiles uploads them)", ", ".join(sorted(dots)))
    if linked_dirs:
        log.info("push: not followed %s (links to folders inside %s: their files go up under their own paths)",
                 ", ".join(linked_dirs), folder)
    return sorted(files)


# ------------------------------------------------------------------ unfinished folders


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise HfExpandError(f"{path} is not valid JSON ({_one_line(exc, None)}): {what}") from None


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a ``*.safetensors`` file, judged from its header alone (no tensor is loaded): the
    file must be 8 bytes of header length + the JSON header + exactly the data its offsets cover."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"is truncated ({size} bytes: not even the 8-byte header length)"
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER:
            return f"has a corrupt header (its length field says {n} bytes)"
        if n > size - 8:
            return f"is truncated: {size} bytes, its header alone needs {8 + n}"
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            return "has a header that is not valid JSON"
    if not isinstance(header, dict):
        return "has a header that is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets) and offsets[0] <= offsets[1]):
            return f"has a header with bad data offsets for {name!r}"
        shape, width = info.get("shape"), _DTYPE_BYTES.get(info.get("dtype"))
        if width and isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape):
            if math.prod(shape) * width != offsets[1] - offsets[0]:
                return f"has a header whose offsets for {name!r} do not match its shape and dtype"
        end = max(end, offsets[1])
    expected = 8 + n + end
    if size < expected:
        return f"is truncated: {size} bytes, its header needs {expected}"
    if size > expected:
        return f"has {size - expected} bytes after the data its header describes ({size} bytes, expected {expected})"
    return None


def check_complete(folder: str | Path, files: list[tuple[str, Path]], record: dict | None) -> None:
    """Refuse (``HfExpandError`` naming the file and the fix) a folder whose training or final save did not
    finish. ``files``: what would be uploaded (``upload_files``)."""
    folder = Path(folder)
    if (folder / TRAIN_ARGS_FILE).is_file() and TRAINING not in (record or {}):
        raise HfExpandError(f"training in {folder} did not finish ({TRAIN_ARGS_FILE} is there but {RECORD_FILE} has no "
                            f"training section); rerun the same train command with --resume, then push")
    if not isinstance(_read_json(folder / "config.json", _RESAVE), dict):
        raise HfExpandError(f"{folder / 'config.json'} is not a JSON object: {_RESAVE}")
    names = {rel for rel, _ in files}
    weights = [rel for rel in names if rel.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        raise HfExpandError(f"{folder} has config.json but no weights ({', '.join('*' + s for s in WEIGHT_SUFFIXES[:2])}): {_RESAVE}")
    for rel, path in files:
        if rel.endswith(".safetensors"):
            problem = _safetensors_problem(path)
            if problem:
                raise HfExpandError(f"{path} {problem}: {_RESAVE}")
            shard = _SHARD.match(path.name)
            index = f"{rel.rsplit('/', 1)[0] + '/' if '/' in rel else ''}{shard['prefix']}.safetensors.index.json" if shard else None
            if index and index not in names:
                raise HfExpandError(f"{path} is one shard of a sharded checkpoint, but {index} is missing from {folder}: {_RESAVE}")
        elif rel.endswith((".safetensors.index.json", ".bin.index.json")):
            data = _read_json(path, _RESAVE)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict):
                raise HfExpandError(f"{path} has no weight_map: {_RESAVE}")
            here = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
            for shard_name in sorted(set(map(str, weight_map.values()))):
                if here + shard_name not in names:
                    raise HfExpandError(f"{path} names {shard_name}, which is not in {folder}: {_RESAVE}")


# ------------------------------------------------------------------ push


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, create_pr: bool = False, token: str | None = None,
                include_dotfiles: bool = False, timeout: float | None = None) -> str:
    """Refresh the card, create ``repo_id`` if needed and upload ``folder`` in one commit; return the commit
    URL (or a note that nothing changed). The local folder is not modified unless the push succeeds (then
    its record notes ``pushed_to`` so later growth/training can name it as parent).

    ``include_dotfiles``: also upload dotfiles and dot-folders (left out and logged by default).
    ``timeout``: seconds each request may wait (connect, each read, each write; default
    ``HF_EXPAND_PUSH_TIMEOUT`` or 60); a request that times out fails the push at once, without retries.
    Before any request the folder is checked (``upload_files``, ``check_complete``): nothing is sent from a
    folder whose save or training did not finish, or that holds links leading out of it."""
    from . import checks

    seconds = push_timeout(timeout)
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HfExpandError(f"{folder} is not a model folder (no config.json); push the folder hf-expand wrote")
    problem = checks.repo_id(repo_id)
    if problem:
        raise HfExpandError(problem)
    record = read_record(folder, fix_hint=_RESAVE)
    files = upload_files(folder, include_dotfiles=include_dotfiles)
    check_complete(folder, files, record)
    with _hub_timeout(seconds):
        return _push(folder, repo_id, files, record, seconds, private=private, revision=revision,
                     commit_message=commit_message, create_pr=create_pr, token=token)


def _push(folder: Path, repo_id: str, files: list[tuple[str, Path]], record: dict | None, seconds: float, *,
          private: bool, revision: str | None, commit_message: str | None, create_pr: bool, token: str | None) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    from .card import build_card

    card = str(build_card(folder, repo_id))  # may read the base model's card from the Hub: under the timeout too
    new_record = {**record, "pushed_to": repo_id} if record is not None else None
    token = token or get_token()  # --token, else HF_TOKEN, else the stored login
    api = HfApi(token=token)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # we report "nothing changed" ourselves
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main" and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)  # a new branch starts from main
        head = api.model_info(repo_id, revision=revision).sha

        # The refreshed card and the record (noting this repo) go up from memory; the local folder is
        # rewritten only after the commit succeeded.
        ops = [CommitOperationAdd("README.md", card.encode())]
        if record is not None:
            ops.append(CommitOperationAdd(RECORD_FILE, record_text(new_record).encode()))
        ops += [CommitOperationAdd(rel, str(path)) for rel, path in files]
        info = api.create_commit(repo_id, ops, commit_message=commit_message or f"Upload {repo_id} with hf-expand",
                                 revision=revision, create_pr=create_pr)
    except Exception as exc:  # noqa: BLE001 - every Hub or network failure becomes one line (push_error)
        raise push_error(exc, repo_id, token, seconds) from None
    (folder / "README.md").write_text(card)
    if new_record is not None:
        write_record(folder, new_record)
    if getattr(info, "oid", None) == head and not create_pr:
        return f"nothing changed since {head[:12]}; no new commit"
    return getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or str(info)


def push_error(exc: Exception, repo_id: str, token: str | None, seconds: float) -> HfExpandError:
    """A failed push (model or dataset) as one line that says what to do, the token masked."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if isinstance(exc, PushTimeout):
        return HfExpandError(f"push to {repo_id} failed: {exc} (push timeout); wait longer with --timeout SECONDS or "
                             f"{TIMEOUT_ENV}=SECONDS (now {seconds:g}) or check HF_ENDPOINT / the network, then run the "
                             f"same command again")
    if isinstance(exc, RepositoryNotFoundError):
        return HfExpandError(f"push to {repo_id} failed: repository not found or no access "
                             f"({_one_line(exc, token)}); check the token's write access")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = {401: "the token is missing or invalid: set HF_TOKEN, run `hf auth login`, or pass --token",
                403: "the token has no write access to this namespace"}.get(status, "run the same command again to retry")
        return HfExpandError(f"push to {repo_id} failed (HTTP {status}): {_one_line(exc, token)}; {hint}")
    # connection refused and the like (httpx errors are not OSError)
    return HfExpandError(f"push to {repo_id} failed: {_one_line(exc, token)}; check HF_ENDPOINT / the network "
                         f"and run the same command again")
