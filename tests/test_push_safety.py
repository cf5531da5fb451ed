"""Push safety (issue 14, findings 6 and 10): a timeout on every Hub request, only the folder's own regular
files go up (no links out of it, no dotfiles at any depth unless asked), and an unfinished save or training
run is refused before anything reaches the Hub. The client runs in subprocesses against tests/hub_server.py
(see tests/test_hub.py: HF_ENDPOINT must be set before huggingface_hub is imported)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hf_expand import AddLayers, grow_checkpoint
from hf_expand.errors import HfExpandError
from hub_server import HubServer, client_env

TOKEN = "hf_carol_SECRET_token_4242"
TIMEOUT = 3  # seconds: the push timeout these tests set (HF_EXPAND_PUSH_TIMEOUT)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    server = HubServer(tmp_path_factory.mktemp("hub"), {TOKEN: "carol"})
    endpoint = server.start()
    yield server, endpoint, tmp_path_factory.mktemp("hf_home")
    server.stop()


@pytest.fixture(scope="module")
def grown(tiny_checkpoints, tmp_path_factory) -> Path:
    """A folder hf-expand wrote (record, card, weights, tokenizer)."""
    out = tmp_path_factory.mktemp("grown") / "model"
    grow_checkpoint(str(tiny_checkpoints("llama")), out, [AddLayers(count=1)], progress=False)
    return out


@pytest.fixture
def folder(grown, tmp_path) -> Path:
    """A private copy of the grown folder, for a test to damage."""
    return Path(shutil.copytree(grown, tmp_path / "model"))


def push(hub, folder: Path, repo: str, *flags: str, endpoint: str | None = None, timeout: float = 120, **env):
    _, ep, home = hub
    environ = client_env(endpoint or ep, home, HF_TOKEN=TOKEN, HF_EXPAND_PUSH_TIMEOUT=str(TIMEOUT), **env)
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "hf_expand", "push", str(folder), repo, *flags], env=environ,
                       capture_output=True, text=True, timeout=timeout)
    r.elapsed = time.monotonic() - start
    return r


def one_line_error(r, *words) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("hf-expand: error: "), lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert TOKEN not in r.stdout + r.stderr
    return lines[0]


def nothing_pushed(server: HubServer, repo: str) -> None:
    assert ("model", repo) not in server._repos, f"{repo} was created"
    assert not [p for _, p in server.requests if repo in p], "the server was contacted about the repo"


# ------------------------------------------------------------------ timeout


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (reads and holds them)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def close(self):
        self._stop.set()
        for c in self.accepted:
            c.close()
        self.sock.close()


def test_timeout_when_the_server_accepts_and_never_answers(hub, grown):
    silent = SilentServer()
    endpoint = silent.endpoint
    try:
        # without a timeout this waits forever: the subprocess limit (60 s) turns that into a failure
        r = push(hub, grown, "carol/silent", "-q", endpoint=endpoint, timeout=60)
    finally:
        silent.close()
    line = one_line_error(r, "push to carol/silent failed", f"{endpoint}/api/repos/create",
                          f"{TIMEOUT} s", "HF_EXPAND_PUSH_TIMEOUT")
    assert "timed out" in line or "no answer" in line, line
    assert len(silent.accepted) == 1, "a timed-out request was retried"
    assert r.elapsed < TIMEOUT + 30, r.elapsed  # ~5 s of imports + the 3 s timeout


@pytest.mark.slow  # the default suite holds the timeout with test_timeout_when_the_server_accepts_and_never_answers
@pytest.mark.parametrize("route,path", [("info", "/api/models/carol/hang-info"),
                                        ("preupload", "/api/models/carol/hang-preupload/preupload/main"),
                                        ("commit", "/api/models/carol/hang-commit/commit/main")])
def test_timeout_on_each_request_of_a_push(hub, grown, route, path):
    """model_info passes ``timeout=None`` explicitly and preupload retries timeouts 5 times (1+2+4+8+8 s
    backoff) in huggingface_hub: both are covered, with one attempt each."""
    server, ep, _ = hub
    repo = f"carol/{path.split('/')[4]}"
    server.hang_next[route] = 1
    try:
        r = push(hub, grown, repo, "-q", timeout=60)
    finally:
        server.hang_next[route] = 0
        server.release_hung()
    one_line_error(r, f"push to {repo} failed", f"{ep}{path}", f"{TIMEOUT} s", "HF_EXPAND_PUSH_TIMEOUT")
    assert [p for _, p in server.requests].count(path) == 1, "a timed-out request was retried"
    assert len(server.commits(repo)) == 1  # the initial commit only: nothing was committed


def test_timeout_setting_is_validated(grown):
    from hf_expand.hub import push_folder

    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(HfExpandError, match="timeout"):
            push_folder(grown, "carol/x", timeout=bad)


# ------------------------------------------------------------------ which files go up


def test_symlink_to_a_file_outside_the_folder_is_refused(hub, folder, tmp_path):
    server, _, _ = hub
    secret = tmp_path / "outside" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("PRIVATE KEY\n")
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.txt").symlink_to(secret)
    r = push(hub, folder, "carol/symlink-out", "-q")
    one_line_error(r, "extra/notes.txt", "outside")
    nothing_pushed(server, "carol/symlink-out")


def test_nested_dotfiles_are_not_uploaded_and_are_logged(hub, folder):
    server, _, _ = hub
    (folder / "sub").mkdir()
    (folder / "sub" / ".env").write_text("HF_TOKEN=hf_leak\n")
    (folder / "sub" / "keep.txt").write_text("kept\n")
    (folder / ".secrets").mkdir()
    (folder / ".secrets" / "key").write_text("k\n")
    (folder / ".env").write_text("A=1\n")
    (folder / "alias.json").symlink_to("config.json")  # a link inside the folder is fine: its content goes up
    r = push(hub, folder, "carol/dotfiles")  # not -q: the log names what was left out
    assert r.returncode == 0, r.stderr[-3000:]
    files = server.files("carol/dotfiles")
    assert "sub/keep.txt" in files and "model.safetensors" in files and "config.json" in files
    assert files["alias.json"] == (folder / "config.json").read_bytes()
    leaked = [p for p in files if any(part.startswith(".") for part in p.split("/")) and p != ".gitattributes"]
    assert leaked == [], leaked
    assert b"hf_leak" not in b"".join(files.values())
    log = [line for line in r.stderr.splitlines() if "left out" in line]
    assert len(log) == 1 and all(n in log[0] for n in (".env", ".secrets/", "sub/.env")), r.stderr


def test_include_dotfiles_uploads_them(hub, folder):
    server, ep, home = hub
    (folder / "sub").mkdir()
    (folder / "sub" / ".env").write_text("X=1\n")
    (folder / ".hf_expand_local.json").write_text('{"source": "/home/someone/private/model"}\n')
    code = ("import sys; from hf_expand.hub import push_folder; "
            "print(push_folder(sys.argv[1], 'carol/dot-in', include_dotfiles=True))")
    r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                       env=client_env(ep, home, HF_TOKEN=TOKEN))
    assert r.returncode == 0, r.stderr[-3000:]
    files = server.files("carol/dot-in")
    assert files["sub/.env"] == b"X=1\n"
    assert ".hf_expand_local.json" not in files  # hf-expand's local sidecar (local paths) never goes up


# ------------------------------------------------------------------ unfinished folders


def test_truncated_safetensors_is_refused(hub, folder):
    server, _, _ = hub
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size - 100)
    r = push(hub, folder, "carol/truncated", "-q")
    one_line_error(r, "model.safetensors", "truncated", str(size), str(size - 100))
    nothing_pushed(server, "carol/truncated")


def test_unfinished_training_is_refused(hub, folder):
    server, _, _ = hub
    (folder / "train_args.json").write_text(json.dumps({"model": "x", "out": str(folder)}) + "\n")
    record = json.loads((folder / "hf_expand_growth.json").read_text())
    assert "training" not in record
    r = push(hub, folder, "carol/unfinished", "-q")
    one_line_error(r, "training", "did not finish", "--resume", str(folder))
    nothing_pushed(server, "carol/unfinished")


def _bad_header(f: Path):
    f.write_bytes((12).to_bytes(8, "little") + b"not json at all")


def _huge_header(f: Path):
    f.write_bytes((2**40).to_bytes(8, "little") + b"{}")


def _trailing(f: Path):
    with open(f, "ab") as fh:
        fh.write(b"\0" * 16)


def _shards_without_index(folder: Path):
    shutil.copy(folder / "model.safetensors", folder / "model-00001-of-00002.safetensors")
    shutil.copy(folder / "model.safetensors", folder / "model-00002-of-00002.safetensors")
    (folder / "model.safetensors").unlink()


def _index_missing_shard(folder: Path):
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))


def _no_weights(folder: Path):
    (folder / "model.safetensors").unlink()


def _fifo(folder: Path):
    os.mkfifo(folder / "pipe")


@pytest.mark.parametrize("damage,words", [
    (lambda d: (d / "config.json").write_text('{"model_type": "lla'), ["config.json", "not valid JSON"]),
    (lambda d: _bad_header(d / "model.safetensors"), ["model.safetensors", "header"]),
    (lambda d: _huge_header(d / "model.safetensors"), ["model.safetensors", "header"]),
    (lambda d: (d / "model.safetensors").write_bytes(b"abc"), ["model.safetensors", "truncated"]),
    (lambda d: _trailing(d / "model.safetensors"), ["model.safetensors", "bytes after"]),
    (_shards_without_index, ["model.safetensors.index.json", "missing"]),
    (_index_missing_shard, ["model-00002-of-00002.safetensors", "model.safetensors.index.json"]),
    (lambda d: (d / "model.safetensors.index.json").write_text("{"), ["model.safetensors.index.json", "JSON"]),
    (_no_weights, ["no weights"]),
    (lambda d: (d / "train_args.json").write_text("{}"), ["did not finish", "--resume"]),
    (_fifo, ["pipe", "not a regular file"]),
], ids=["config", "header", "huge-header", "tiny", "trailing", "shards-no-index", "index-missing-shard",
        "index-json", "no-weights", "training", "fifo"])
def test_incomplete_folders_are_refused_before_any_request(folder, damage, words):
    """In process (pytest runs offline): the refusal comes before huggingface_hub makes a request."""
    from hf_expand.hub import push_folder

    damage(folder)
    with pytest.raises(HfExpandError) as err:
        push_folder(folder, "carol/never")
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message, (w, message)
