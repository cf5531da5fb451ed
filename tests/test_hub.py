"""Publishing against a Hub-compatible server on 127.0.0.1 (tests/hub_server.py), with the real
huggingface_hub client and stock transformers in subprocesses (HF_ENDPOINT must be set before import)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hf_expand import AddLayers, WidenFFN, grow_checkpoint
from hub_server import HubServer, client_env

ALICE, BOB = "hf_alice_SECRET_token_1234", "hf_bob_SECRET_token_5678"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    server = HubServer(tmp_path_factory.mktemp("hub"), {ALICE: "alice", BOB: "bob"})
    endpoint = server.start()
    yield server, endpoint, tmp_path_factory.mktemp("hf_home")
    server.stop()


@pytest.fixture(scope="module")
def grown_minilm(tmp_path_factory) -> Path:
    from conftest import minilm_path

    out = tmp_path_factory.mktemp("minilm") / "grown"
    grow_checkpoint(str(minilm_path()), out, [WidenFFN(factor=1.5), AddLayers(count=1)], progress=False)
    return out


def run(hub, args: list[str], token: str | None = ALICE, endpoint: str | None = None, hf_home=None, **kw):
    _, ep, home = hub
    env = client_env(endpoint or ep, hf_home or home)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, **kw)


def cli(hub, *args, **kw):
    return run(hub, ["-m", "hf_expand", *args, "-q"], **kw)


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


PULL = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModel, AutoTokenizer
    from huggingface_hub import ModelCard
    repo, local = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(repo)
    batch = tok(["A man is playing a guitar.", "Growth keeps what the model knows."], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = AutoModel.from_pretrained(repo)(**batch).last_hidden_state
        b = AutoModel.from_pretrained(local)(**batch).last_hidden_state
    print(json.dumps({"max_diff": (a - b).abs().max().item(), "card": ModelCard.load(repo).data.to_dict()}))
""")


def test_round_trip_card_and_chained_lineage(hub, grown_minilm, tmp_path):
    server, _, _ = hub
    before = snapshot(grown_minilm)
    r = cli(hub, "push", str(grown_minilm), "alice/minilm-grown")
    assert r.returncode == 0, r.stderr
    pulled = run(hub, ["-c", PULL, "alice/minilm-grown", str(grown_minilm)], token=None)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    result = json.loads(pulled.stdout.strip().splitlines()[-1])
    assert result["max_diff"] == 0.0
    card = result["card"]
    assert {"hf-expand", "model-growth"} <= set(card["tags"])
    assert card["library_name"] == "transformers" and card["pipeline_tag"] == "feature-extraction"
    assert card["license"] == "apache-2.0"  # from the base model's own card
    # unchanged folder: pushing again makes no new commit
    commits = len(server.commits("alice/minilm-grown"))
    again = cli(hub, "push", str(grown_minilm), "alice/minilm-grown")
    assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout + again.stderr
    assert len(server.commits("alice/minilm-grown")) == commits
    # grow the pulled model again: the new card's lineage points at the first repo
    second = tmp_path / "second"
    r = cli(hub, "grow", "alice/minilm-grown", "--out", str(second), "--add-layers", "1", "--push-to", "alice/minilm-grown-2")
    assert r.returncode == 0, r.stderr[-2000:]
    card2 = json.loads(run(hub, ["-c", "import json; from huggingface_hub import ModelCard; "
                                      "print(json.dumps(ModelCard.load('alice/minilm-grown-2').data.to_dict()))"]).stdout)
    assert card2["base_model"] == "alice/minilm-grown" and card2["base_model_relation"] == "finetune"
    # no token anywhere: pushed files, local folders
    for repo in ("alice/minilm-grown", "alice/minilm-grown-2"):
        for name, data in server.files(repo).items():
            assert ALICE.encode() not in data, name
    for folder in (grown_minilm, second):
        for p in folder.rglob("*"):
            assert not p.is_file() or ALICE.encode() not in p.read_bytes(), p
    assert snapshot(grown_minilm).keys() == before.keys()


def assert_failed(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("hf-expand: error: push to"), lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert ALICE not in r.stderr + r.stdout and BOB not in r.stderr + r.stdout


def test_server_error_mid_commit_then_retry(hub, grown_minilm):
    server, _, _ = hub
    before = snapshot(grown_minilm)
    server.fail_next["commit"] = 1
    r = cli(hub, "push", str(grown_minilm), "alice/flaky")
    assert_failed(r, "HTTP 500", "run the same command again")
    assert snapshot(grown_minilm) == before
    assert cli(hub, "push", str(grown_minilm), "alice/flaky").returncode == 0
    assert "model.safetensors" in server.files("alice/flaky")


def test_connection_refused(hub, grown_minilm):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = snapshot(grown_minilm)
    r = cli(hub, "push", str(grown_minilm), "alice/x", endpoint=f"http://127.0.0.1:{port}")
    assert_failed(r, "HF_ENDPOINT")
    assert snapshot(grown_minilm) == before


@pytest.mark.parametrize("token,words", [("hf_wrong_token", ["HTTP 401", "token"]), (None, ["HTTP 401", "HF_TOKEN"]),
                                         (BOB, ["HTTP 403", "write access"])])
def test_bad_missing_or_unauthorised_token(hub, grown_minilm, token, words):
    before = snapshot(grown_minilm)
    r = cli(hub, "push", str(grown_minilm), "alice/denied", token=token)
    assert_failed(r, *words)
    assert snapshot(grown_minilm) == before


@pytest.mark.slow  # ~18 s of subprocesses; the default suite keeps the round trip and failure tests (suite time)
def test_private_repo_not_readable_by_another_user(hub, grown_minilm, tmp_path):
    assert cli(hub, "push", str(grown_minilm), "alice/private-one", "--private").returncode == 0
    code = ("import os; from transformers import AutoConfig; "
            "AutoConfig.from_pretrained('alice/private-one', token=os.environ['HF_TOKEN']); print('read')")
    assert run(hub, ["-c", code], token=ALICE).stdout.strip() == "read"
    other = run(hub, ["-c", code], token=BOB, hf_home=tmp_path / "bob_home")  # Bob's own, empty cache
    assert other.returncode != 0 and "read" not in other.stdout


@pytest.mark.slow  # ~18 s of subprocesses; the default suite keeps the round trip and failure tests (suite time)
def test_revision_and_pull_request(hub, grown_minilm):
    server, _, _ = hub
    assert cli(hub, "push", str(grown_minilm), "alice/branches").returncode == 0
    main_commits = len(server.commits("alice/branches"))
    r = cli(hub, "push", str(grown_minilm), "alice/branches", "--revision", "dev", "--commit-message", "to dev")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "config.json" in server.files("alice/branches", revision="dev")
    (grown_minilm / "NOTES.md").write_text("a change for review\n")
    try:
        r = cli(hub, "push", str(grown_minilm), "alice/branches", "--create-pr")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "refs/pr/" in r.stdout or "discussions" in r.stdout
        assert "NOTES.md" not in server.files("alice/branches")  # main untouched by a PR
        assert len(server.commits("alice/branches")) == main_commits
    finally:
        (grown_minilm / "NOTES.md").unlink()
