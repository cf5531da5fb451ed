"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

It speaks enough of the Hub protocol for the real ``huggingface_hub`` client (2.x) to push with
``create_repo`` / ``upload_folder`` / ``upload_file`` / ``create_commit`` / ``create_branch`` and for
stock ``transformers`` / ``ModelCard.load`` / ``hf_hub_download`` to pull. Routes (``{t}`` = models,
datasets or spaces; revisions and paths are URL-decoded, so ``refs%2Fpr%2F1`` works):

* ``GET /api/whoami-v2``, ``POST /api/repos/create``, ``DELETE /api/repos/delete``,
  ``POST /api/validate-yaml`` (always valid)
* ``GET /api/{t}/{ns}/{name}[/revision/{rev}]`` repo info; ``GET .../tree/{rev}[/{path}]`` listing
* ``POST .../preupload/{rev}``: always ``uploadMode: "regular"`` plus the git oid of the file currently
  at that path (lets the client skip unchanged files); Xet/LFS is not spoken, files travel base64
* ``POST .../commit/{rev}``: NDJSON (header, file, deletedFile, deletedFolder), applied all or
  nothing; an unknown branch is created from main; ``?create_pr=1`` commits onto a new ``refs/pr/N``
* ``POST .../branch/{branch}``, ``POST .../discussions``, ``GET .../discussions/{num}`` (pull requests:
  ``upload_folder(create_pr=True)`` opens the PR first, then commits to ``refs/pr/N``)
* ``HEAD|GET /[{t}/]{ns}/{name}/resolve/{rev}/{path}``: bytes, ``X-Repo-Commit``, ``ETag``, ``Content-Length``

Errors carry the ``X-Error-Code`` header the client maps to exceptions (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``). Private repos are 404 RepoNotFound to all but their owner;
writing to another namespace is 403; an unknown token is 401 (HfHubHTTPError).

A new repo gets an "initial commit" holding ``.gitattributes``, as on the real Hub. Every commit is a
full snapshot ``{path: git blob sha1}``; blobs live in ``root/blobs``, repo metadata in
``root/repos/{type}/{ns}/{name}.json`` (a new server on the same root sees the same repos). Tokens and
Authorization headers are never written to disk.

Failure injection: ``server.fail_next["commit"] = 2`` makes the next 2 commit requests answer 500 after
reading the body, without applying it; ``(n, status)`` picks another status. Keys are route names:
create, delete, whoami, info, tree, preupload, commit, branch, discussions, resolve. The client itself
retries 429/500/502/503/504 (5 times, 1+2+4+8+8 s) on preupload and on ``upload_folder`` commits (when
``hf_xet`` is installed), so a single 500 there only delays; use e.g. ``(1, 400)`` to make it fail.
``server.hang_next["info"] = 1`` makes the next such request hang instead: its body is read, nothing is
answered or applied, and the connection is held until ``release_hung()`` or ``stop()`` (then closed without
an answer): a server that accepts and never answers, for client timeouts.

``HF_ENDPOINT`` must be set before ``huggingface_hub``/``transformers`` are imported: see ``client_env``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
_ids = itertools.count()


def git_sha1(data: bytes) -> str:
    """The git blob oid of ``data`` (what the client compares against to skip unchanged files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def client_env(endpoint: str, hf_home: str | os.PathLike, **extra: str) -> dict[str, str]:
    """Environment for a subprocess running the real client against this server (fresh ``hf_home`` cache).

    Drops HF_TOKEN and HF_HUB_OFFLINE (tests/conftest.py sets it and imports transformers before any test
    runs, so in pytest the client has to run in such a subprocess)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="1", **extra)
    return env


class _Hang(Exception):
    """Raised by ``_maybe_fail`` for an injected hang: the handler holds the connection unanswered."""


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, extra: dict | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.extra, self.headers = extra or {}, headers or {}


class HubServer:
    def __init__(self, root: Path, tokens: dict[str, str]):
        self.root, self.tokens = Path(root), dict(tokens)
        self.fail_next: dict[str, int | tuple[int, int]] = {}
        self.hang_next: dict[str, int] = {}  # route -> how many requests hang unanswered (see release_hung)
        self._release = threading.Event()
        self.requests: list[tuple[str, str]] = []  # (method, unquoted path), no headers
        self.errors: list[str] = []  # unexpected server exceptions (answered 500): assert it stays empty
        self.endpoint = ""
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], dict] = {}
        for path in sorted(self.root.glob("repos/*/*/*.json")):
            repo = json.loads(path.read_text())
            self._repos[(repo["type"], repo["id"])] = repo
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0) -> str:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        return self.endpoint

    def release_hung(self) -> None:
        """Close the connections of hung requests (without answering); later hangs wait again."""
        self._release.set()
        self._release = threading.Event()

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "HubServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers
    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Commit ids of ``revision``, oldest first (the first is the repo's initial commit)."""
        with self._lock:
            return list(self._repos[(repo_type, repo_id)]["refs"][revision])

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Snapshot ``{path: bytes}`` of ``revision``."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            snapshot = repo["commits"][self._resolve(repo, revision)]["files"]
            return {p: self._blob(oid) for p, oid in snapshot.items()}

    def seed(self, repo_id: str, folder: Path, private: bool = False, repo_type: str = "model") -> None:
        """Publish every file under ``folder`` as public repo ``repo_id`` (owned by its namespace), without
        HTTP: how tests put stand-ins for real Hub checkpoints (meta-llama/...) and datasets on this server."""
        with self._lock:
            repo = {"type": repo_type, "id": repo_id, "owner": repo_id.split("/")[0], "private": private,
                    "created": _now(), "refs": {}, "commits": {}, "discussions": {}}
            files = {".gitattributes": self._put_blob(GITATTRIBUTES)}
            files.update({p.relative_to(folder).as_posix(): self._put_blob(p.read_bytes())
                          for p in sorted(Path(folder).rglob("*")) if p.is_file()})
            self._new_commit(repo, "main", files, "seed", "", repo["owner"])
            self._repos[(repo_type, repo_id)] = repo
            self._save(repo)

    # ------------------------------------------------------------------ storage
    def _blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes()

    def _size(self, oid: str) -> int:
        return (self.root / "blobs" / oid).stat().st_size

    def _put_blob(self, data: bytes) -> str:
        oid = git_sha1(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{next(_ids)}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return oid

    def _save(self, repo: dict) -> None:
        path = self.root / "repos" / repo["type"] / f"{repo['id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{next(_ids)}")
        tmp.write_text(json.dumps(repo))
        os.replace(tmp, path)

    def _new_commit(self, repo: dict, branch: str, files: dict, title: str, message: str, author: str) -> str:
        parent = repo["refs"][branch][-1] if repo["refs"].get(branch) else None
        cid = hashlib.sha1(f"{repo['id']}\0{parent}\0{title}\0{_now()}\0{next(_ids)}".encode()).hexdigest()
        repo["commits"][cid] = {"title": title, "message": message, "author": author, "date": _now(),
                                "parent": parent, "files": files}
        repo["refs"].setdefault(branch, []).append(cid)
        return cid

    @staticmethod
    def _resolve(repo: dict, rev: str) -> str | None:
        rev = rev.removeprefix("refs/heads/")
        if repo["refs"].get(rev):
            return repo["refs"][rev][-1]
        return rev if rev in repo["commits"] else None

    # ------------------------------------------------------------------ request handling
    def _user(self, auth: str | None) -> str | None:
        if not auth:
            return None
        token = auth.split(" ", 1)[1].strip() if auth.lower().startswith("bearer ") else auth.strip()
        if token not in self.tokens:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _repo(self, rtype: str, repo_id: str, user: str | None, write: bool = False) -> dict:
        repo = self._repos.get((rtype, repo_id))
        if repo is None or (repo["private"] and user != repo["owner"]):
            raise HubError(404, "RepoNotFound", f"Repository not found: {repo_id}")
        if write and user is None:
            raise HubError(401, None, "You must be authenticated to write to this repo")
        if write and user != repo["owner"]:
            raise HubError(403, None, f"You don't have the rights to write to {repo_id}")
        return repo

    def _repo_url(self, rtype: str, repo_id: str) -> str:
        return f"{self.endpoint}/{'' if rtype == 'model' else rtype + 's/'}{repo_id}"

    def _maybe_fail(self, route: str) -> None:
        if self.hang_next.get(route, 0) > 0:
            self.hang_next[route] -= 1
            raise _Hang(route)
        spec = self.fail_next.get(route)
        count, status = spec if isinstance(spec, tuple) else (spec or 0, 500)
        if count > 0:
            self.fail_next[route] = (count - 1, status) if isinstance(spec, tuple) else count - 1
            raise HubError(status, None, f"Injected failure on {route}")

    def handle(self, method: str, segs: list[str], query: dict, body: bytes, auth: str | None):
        with self._lock:
            user = self._user(auth)
            if segs[:1] == ["api"]:
                return self._api(method, segs[1:], query, body, user)
            rtype = TYPES[segs[0]] if segs and segs[0] in ("datasets", "spaces") else "model"
            segs = segs[1:] if rtype != "model" else segs
            if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
                self._maybe_fail("resolve")
                return self._resolve_file(rtype, f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]), user)
            raise HubError(404, None, "Not found")

    def _api(self, method: str, segs: list[str], query: dict, body: bytes, user: str | None):
        try:
            data = json.loads(body or b"{}")  # the commit body is NDJSON: parsed by _commit
        except ValueError:
            data = {}
        if segs == ["whoami-v2"]:
            self._maybe_fail("whoami")
            if user is None:
                raise HubError(401, None, "Authorization header is required")
            return 200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}}, {}
        if segs == ["validate-yaml"] and method == "POST":
            return 200, {"errors": [], "warnings": []}, {}
        if segs == ["repos", "create"] and method == "POST":
            self._maybe_fail("create")
            return self._create(data, user)
        if segs == ["repos", "delete"] and method == "DELETE":
            self._maybe_fail("delete")
            rtype, repo_id = data.get("type") or "model", f"{data.get('organization') or user}/{data['name']}"
            self._repo(rtype, repo_id, user, write=True)
            del self._repos[(rtype, repo_id)]
            (self.root / "repos" / rtype / f"{repo_id}.json").unlink()
            return 200, {}, {}
        if len(segs) < 3 or segs[0] not in TYPES:
            raise HubError(404, None, "Not found")
        rtype, repo_id, tail = TYPES[segs[0]], f"{segs[1]}/{segs[2]}", segs[3:]
        action = tail[0] if tail else "info"
        if action == "revision":
            action = "info"
        self._maybe_fail(action)
        write = method == "POST" and action in ("preupload", "commit", "branch", "discussions")
        repo = self._repo(rtype, repo_id, user, write=write)
        if action == "info" and method == "GET":
            return self._info(repo, tail[1] if len(tail) > 1 else "main")
        if action == "tree" and method == "GET" and len(tail) >= 2:
            return self._tree(repo, tail[1], "/".join(tail[2:]).strip("/"), query)
        if action == "preupload" and len(tail) == 2:
            base = self._resolve(repo, tail[1]) or self._resolve(repo, "main")
            files = repo["commits"][base]["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                    "oid": files.get(f["path"])} for f in data.get("files", [])]}, {}
        if action == "commit" and len(tail) == 2:
            return self._commit(repo, tail[1], body, query.get("create_pr") in ("1", "true", "True"), user)
        if action == "branch" and len(tail) >= 2:
            branch = "/".join(tail[1:])
            if repo["refs"].get(branch):
                raise HubError(409, None, f"Reference {branch} already exists")
            start = self._resolve(repo, data.get("startingPoint") or "main")
            if start is None:
                raise HubError(404, "RevisionNotFound", "Invalid starting point")
            repo["refs"][branch] = self._history(repo, start)
            self._save(repo)
            return 200, {}, {}
        if action == "discussions" and method == "POST" and len(tail) == 1:
            num = self._new_discussion(repo, data.get("title", ""), user, bool(data.get("pullRequest")))
            return 200, {"num": num, "pullRequest": bool(data.get("pullRequest")),
                         "url": f"{self._repo_url(rtype, repo_id)}/discussions/{num}"}, {}
        if action == "discussions" and method == "GET" and len(tail) == 2:
            return self._discussion(repo, tail[1])
        raise HubError(404, None, "Not found")

    def _create(self, data: dict, user: str | None):
        if user is None:
            raise HubError(401, None, "You must be authenticated to create a repo")
        rtype, ns = data.get("type") or "model", data.get("organization") or user
        repo_id = f"{ns}/{data['name']}"
        url = self._repo_url(rtype, repo_id)
        if ns != user:
            raise HubError(403, None, f"You don't have the rights to create a repo under {ns}")
        if (rtype, repo_id) in self._repos:
            raise HubError(409, None, f"You already created this {rtype} repo", extra={"url": url})
        private = bool(data.get("private")) or data.get("visibility") == "private"
        repo = {"type": rtype, "id": repo_id, "owner": ns, "private": private, "created": _now(),
                "refs": {}, "commits": {}, "discussions": {}}
        self._new_commit(repo, "main", {".gitattributes": self._put_blob(GITATTRIBUTES)}, "initial commit", "", user)
        self._repos[(rtype, repo_id)] = repo
        self._save(repo)
        return 200, {"url": url, "name": repo_id}, {}

    def _snapshot(self, repo: dict, rev: str) -> tuple[str, dict]:
        cid = self._resolve(repo, rev)
        if cid is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return cid, repo["commits"][cid]["files"]

    def _info(self, repo: dict, rev: str):
        cid, files = self._snapshot(repo, rev)
        siblings = [{"rfilename": p, "size": self._size(oid), "blobId": oid} for p, oid in sorted(files.items())]
        return 200, {"_id": repo["id"], "id": repo["id"], "modelId": repo["id"], "author": repo["owner"],
                     "sha": cid, "lastModified": repo["commits"][cid]["date"], "createdAt": repo["created"],
                     "private": repo["private"], "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                     "tags": [], "siblings": siblings}, {}

    def _history(self, repo: dict, cid: str | None) -> list[str]:
        out = []
        while cid:
            out.append(cid)
            cid = repo["commits"][cid]["parent"]
        return out[::-1]

    def _last_touch(self, repo: dict, cid: str, path: str) -> dict:
        commits, oid = repo["commits"], repo["commits"][cid]["files"].get(path)
        while commits[cid]["parent"] and commits[commits[cid]["parent"]]["files"].get(path) == oid:
            cid = commits[cid]["parent"]
        return {"id": cid, "title": commits[cid]["title"], "date": commits[cid]["date"]}

    def _tree(self, repo: dict, rev: str, path: str, query: dict):
        cid, files = self._snapshot(repo, rev)
        recursive = query.get("recursive", "").lower() in ("1", "true")
        expand = query.get("expand", "").lower() in ("1", "true")
        prefix = f"{path}/" if path else ""
        entries: dict[str, dict] = {}
        for p, oid in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                d = prefix + "/".join(parts[:depth])
                entries.setdefault(d, {"type": "directory", "path": d, "size": 0,
                                       "oid": hashlib.sha1(f"{cid}:{d}".encode()).hexdigest()})
            if len(parts) > 1 and not recursive:
                continue
            entries[p] = {"type": "file", "path": p, "size": self._size(oid), "oid": oid}
            if expand:
                entries[p]["lastCommit"] = self._last_touch(repo, cid, p)
        if path and not entries:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {rev}")
        return 200, list(entries.values()), {}

    def _new_discussion(self, repo: dict, title: str, user: str, pull_request: bool, base: str = "main") -> int:
        num = len(repo["discussions"]) + 1
        repo["discussions"][str(num)] = {"title": title, "author": user, "createdAt": _now(),
                                         "isPullRequest": pull_request, "base": base}
        if pull_request:
            repo["refs"][f"refs/pr/{num}"] = self._history(repo, self._resolve(repo, base))
        self._save(repo)
        return num

    def _discussion(self, repo: dict, num: str):
        d = repo["discussions"].get(num)
        if d is None:
            raise HubError(404, None, f"Discussion {num} not found")
        return 200, {"num": int(num), "title": d["title"], "author": {"name": d["author"]},
                     "createdAt": d["createdAt"], "status": "open", "isPullRequest": d["isPullRequest"],
                     "repo": {"name": repo["id"], "type": repo["type"]}, "events": [],
                     "changes": {"base": f"refs/heads/{d['base']}"}, "filesWithConflicts": [], "diff": ""}, {}

    def _commit(self, repo: dict, rev: str, body: bytes, create_pr: bool, user: str):
        ops = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not ops or ops[0].get("key") != "header":
            raise HubError(400, None, "The first line of a commit must be its header")
        header = ops[0]["value"]
        base = rev if create_pr or repo["refs"].get(rev) else "main"  # unknown branch: created from main
        parent, files = self._snapshot(repo, base)
        if header.get("parentCommit") and header["parentCommit"] != parent:
            raise HubError(412, None, f"Parent commit {header['parentCommit']} is not the head of {rev}")
        files, blobs = dict(files), []
        for op in ops[1:]:
            key, value = op.get("key"), op.get("value", {})
            path = value.get("path", "").strip("/")
            if key == "file":
                content = value.get("content", "")
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                blobs.append(data)
                files[path] = git_sha1(data)
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
                del files[path]
            elif key == "deletedFolder":
                files = {p: o for p, o in files.items() if not p.startswith(path + "/")}
            else:
                raise HubError(400, None, f"Unsupported commit operation {key!r} (this server has no LFS/Xet)")
        for data in blobs:
            self._put_blob(data)
        pr_url = None
        if create_pr:
            num = self._new_discussion(repo, header.get("summary", ""), user, True, base=rev)
            rev, pr_url = f"refs/pr/{num}", f"{self._repo_url(repo['type'], repo['id'])}/discussions/{num}"
        elif not repo["refs"].get(rev):
            repo["refs"][rev] = list(repo["refs"]["main"])
        cid = self._new_commit(repo, rev, files, header.get("summary", ""), header.get("description", ""), user)
        self._save(repo)
        return 200, {"success": True, "commitOid": cid, "pullRequestUrl": pr_url, "hookOutput": "",
                     "commitUrl": f"{self._repo_url(repo['type'], repo['id'])}/commit/{cid}"}, {}

    def _resolve_file(self, rtype: str, repo_id: str, rev: str, path: str, user: str | None):
        repo = self._repo(rtype, repo_id, user)
        cid, files = self._snapshot(repo, rev)
        if path not in files:
            raise HubError(404, "EntryNotFound", f"Entry not found: {path}", headers={"X-Repo-Commit": cid})
        oid = files[path]
        return 200, self._blob(oid), {"X-Repo-Commit": cid, "ETag": f'"{oid}"',
                                      "Content-Type": "application/octet-stream"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def _dispatch(self) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))  # httpx never chunks bytes/json
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        hub.requests.append((self.command, unquote(url.path)))
        segs = [unquote(s) for s in url.path.strip("/").split("/")]
        try:
            status, payload, headers = hub.handle(self.command, segs, query, body, self.headers.get("Authorization"))
        except _Hang:  # accept, read, never answer (outside the lock: other requests go on)
            hub._release.wait(300)
            self.close_connection = True
            return
        except HubError as e:
            status, payload, headers = e.status, {"error": e.message, **e.extra}, dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message.encode("ascii", "replace").decode()
        except Exception as e:  # a server bug: record it and answer 500 instead of hanging the client
            hub.errors.append(f"{self.command} {url.path}: {type(e).__name__}: {e}")
            status, payload, headers = 500, {"error": f"{type(e).__name__}: {e}"}, {}
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch
