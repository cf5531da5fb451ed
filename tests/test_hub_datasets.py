"""Hub datasets with a configuration, a revision and a split (issue 18), served by the test Hub server: augment
and train read the configuration asked for; local data refuses those options in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hf_expand.cli import main

TOKEN = "hf_alice_dataset_token_0123"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A server holding dataset org/toy: configs en (train 8 rows, test 6) and fr (train 3), parquet files."""
    from datasets import Dataset

    from hub_server import HubServer

    root = tmp_path_factory.mktemp("hubds")
    src = root / "src"
    (src / "data").mkdir(parents=True)
    words = "the cat sat on a mat while dogs ran far away from home".split()
    rows = lambda n, k: {"text": [" ".join(words[(i + k) % 9:(i + k) % 9 + 4]) for i in range(n)]}  # noqa: E731
    Dataset.from_dict(rows(8, 0)).to_parquet(str(src / "data" / "en-train.parquet"))
    Dataset.from_dict(rows(6, 3)).to_parquet(str(src / "data" / "en-test.parquet"))
    Dataset.from_dict(rows(3, 5)).to_parquet(str(src / "data" / "fr-train.parquet"))
    (src / "README.md").write_text("---\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n"
                                   "    path: data/en-train.parquet\n  - split: test\n    path: data/en-test.parquet\n"
                                   "- config_name: fr\n  data_files:\n  - split: train\n    path: data/fr-train.parquet\n"
                                   "---\n# toy\n")
    server = HubServer(root / "hub", {TOKEN: "alice"})
    endpoint = server.start()
    server.seed("org/toy", src, repo_type="dataset")
    yield server, endpoint, root
    server.stop()


def _cli(hub, *args, token: str | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    from hub_server import client_env

    _, endpoint, root = hub
    env = client_env(endpoint, root / "home", OMP_NUM_THREADS="1", **({"HF_TOKEN": token} if token else {}))
    if code is not None:
        return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=300)
    return subprocess.run([sys.executable, "-m", "hf_expand", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_augment_a_hub_config(hub, tmp_path):
    from datasets import load_from_disk

    r = _cli(hub, "augment", "org/toy", "--data-config", "en", "--data-revision", "main", "--out", tmp_path / "aug",
             "--text-column", "text", "--augment", "random_swap:p=0.5", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    out = load_from_disk(str(tmp_path / "aug"))
    assert len(out["train"]) == 16 and len(out["test"]) == 6  # train augmented (x2), test copied untouched
    r = _cli(hub, "augment", "org/toy", "--data-config", "fr", "--out", tmp_path / "fr", "--text-column", "text",
             "--augment", "random_swap:p=0.5", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(load_from_disk(str(tmp_path / "fr"))["train"]) == 6
    bad = _cli(hub, "augment", "org/toy", "--data-config", "en", "--data-revision", "v9", "--out", tmp_path / "bad",
               "--text-column", "text", "-q")
    err = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(err) == 1, bad.stderr[-2000:]
    assert err[0].startswith("hf-expand: error: cannot load dataset 'org/toy' (config 'en') at revision 'v9'")
    assert not (tmp_path / "bad").exists()


def test_stream_a_hub_config(hub, tmp_path):
    """--streaming over a Hub dataset (read through the Hub's file API, not the datasets cache): the rows of the
    non-streaming run of the same config, seed and augmenter."""
    from datasets import load_dataset

    common = ["org/toy", "--data-config", "en", "--text-column", "text", "--augment", "random_swap:p=0.5",
              "--seed", "3", "--format", "jsonl", "-q"]
    r = _cli(hub, "augment", *common, "--out", tmp_path / "plain")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli(hub, "augment", *common, "--out", tmp_path / "stream", "--streaming")
    assert r.returncode == 0, r.stderr[-2000:]
    for split, rows in (("train", 16), ("test", 6)):
        plain = load_dataset("json", data_files=str(tmp_path / "plain" / f"{split}.jsonl"))["train"].to_list()
        stream = load_dataset("json", data_files=str(tmp_path / "stream" / f"{split}.jsonl"))["train"].to_list()
        assert len(stream) == rows and stream == plain


def test_train_on_a_hub_config_and_split(hub, grown_llama, tmp_path):
    out = tmp_path / "trained"
    r = _cli(hub, "train", grown_llama, "--data", "org/toy", "--data-config", "en", "--split", "test", "--out", out,
             "--max-steps", "2", "--batch-size", "2", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    section = json.loads((out / "hf_expand_growth.json").read_text())["training"]
    assert section["steps"] == 2
    assert "; 6 examples;" in r.stdout, r.stdout  # en's test split (train has 8 rows, fr's 3)
    missing = _cli(hub, "train", grown_llama, "--data", "org/toy", "--data-config", "en", "--split", "dev",
                   "--out", tmp_path / "nope", "--max-steps", "1", "-q")
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "org/toy has no split 'dev'; splits: train, test" in missing.stderr
    assert not (tmp_path / "nope").exists()


def test_local_data_refuses_hub_options(tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("one line\nanother line\n")
    assert main(["augment", str(data), "--out", str(tmp_path / "o"), "--text-column", "text",
                 "--data-config", "en"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hf-expand: error: --data-config applies to Hub datasets; {data} is local data: drop the option"]
    assert not (tmp_path / "o").exists()


def test_push_an_augmented_dataset_and_load_it_back(hub, tmp_path, capsys):
    server, _, _ = hub
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"the cat sat on mat {i},{i % 2}\n" for i in range(6)))
    aug = tmp_path / "aug"
    assert main(["augment", str(data), "--out", str(aug), "--text-column", "text", "--augment", "random_swap:p=0.5",
                 "--copies", "2", "--seed", "3", "-q"]) == 0
    r = _cli(hub, "push", aug, "alice/cats-aug", token=TOKEN)
    assert r.returncode == 0, r.stderr[-2000:]
    back = _cli(hub, "alice/cats-aug", code="import sys, json; from datasets import load_dataset; "
                                         "d = load_dataset(sys.argv[1]); print(json.dumps({k: len(v) for k, v in d.items()}))")
    assert back.returncode == 0, back.stderr[-2000:]
    assert json.loads(back.stdout.strip().splitlines()[-1]) == {"train": 18}  # 6 rows + 2 copies each
    files = server.files("alice/cats-aug", repo_type="dataset")
    card = files["README.md"].decode()
    assert "`random_swap:max=10,min=1,p=0.5`" in card and "| seed | 3 |" in card and "| copies per row | 2 |" in card
    assert "| rows in `train` | 18 |" in card and "- hf-expand" in card and "configs:" in card
    assert TOKEN.encode() not in b"".join(files.values()) and str(tmp_path) not in card
