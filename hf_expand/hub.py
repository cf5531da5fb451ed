"""Publishing: push an output folder to the Hub (or any Hub-compatible endpoint) in one commit.

The token comes from ``--token``, ``HF_TOKEN`` or the stored login (huggingface_hub resolves the last two);
the endpoint from ``HF_ENDPOINT``. The token is only ever handed to the client: it is never written into
the folder, the card or a log, and error messages are scrubbed of it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import HfExpandError
from .grow import RECORD_FILE


def _one_line(exc: Exception, token: str | None) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.replace(token, "***") if token else text


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, create_pr: bool = False, token: str | None = None) -> str:
    """Refresh the card, create ``repo_id`` if needed and upload ``folder`` in one commit; return the commit
    URL (or a note that nothing changed). The local folder is not modified unless the push succeeds (then
    its record notes ``pushed_to`` so later growth/training can name it as parent)."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    from .card import build_card
    from .model_io import _is_hub_id

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HfExpandError(f"{folder} is not a model folder (no config.json); push the folder hf-expand wrote")
    if not _is_hub_id(repo_id) or "/" not in repo_id:
        raise HfExpandError(f"{repo_id!r} is not a repo id; use namespace/name")
    record_path = folder / RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    card = str(build_card(folder, repo_id))
    new_record = json.dumps({**record, "pushed_to": repo_id}, indent=2, default=str) + "\n" if record is not None else None
    from huggingface_hub import get_token

    token = token or get_token()  # --token, else HF_TOKEN, else the stored login
    api = HfApi(token=token)
    import logging

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
            ops.append(CommitOperationAdd(RECORD_FILE, new_record.encode()))
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and rel not in ("README.md", RECORD_FILE, "train_args.json") \
                    and not rel.startswith(("checkpoints/", "logs/", ".")):
                ops.append(CommitOperationAdd(rel, str(path)))
        info = api.create_commit(repo_id, ops, commit_message=commit_message or f"Upload {repo_id} with hf-expand",
                                 revision=revision, create_pr=create_pr)
    except RepositoryNotFoundError as exc:
        raise HfExpandError(f"push to {repo_id} failed: repository not found or no access "
                            f"({_one_line(exc, token)}); check the token's write access") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = {401: "the token is missing or invalid: set HF_TOKEN, run `hf auth login`, or pass --token",
                403: "the token has no write access to this namespace"}.get(status, "run the same command again to retry")
        raise HfExpandError(f"push to {repo_id} failed (HTTP {status}): {_one_line(exc, token)}; {hint}") from None
    except Exception as exc:  # noqa: BLE001 - connection refused, timeouts (httpx errors are not OSError)
        raise HfExpandError(f"push to {repo_id} failed: {_one_line(exc, token)}; check HF_ENDPOINT / the network "
                            f"and run the same command again") from None
    (folder / "README.md").write_text(card)
    if new_record is not None:
        record_path.write_text(new_record)
    if getattr(info, "oid", None) == head and not create_pr:
        return f"nothing changed since {head[:12]}; no new commit"
    return getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or str(info)
