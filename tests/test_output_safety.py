"""Output folders (issue 14, findings 4, 5, 13): one writer for every command. A folder that appears at
``--out`` during a run is never replaced without ``--overwrite``; ``--overwrite`` replaces only a folder
hf-expand wrote (or an empty one) and never follows a symlinked ``--out``; leftovers of killed runs are
restored or removed by the next run; disk and permission errors are one line with nothing half-written."""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.register_assert_rewrite("augment_fixtures")
from augment_fixtures import source_columns  # noqa: E402
from hf_expand.cli import main  # noqa: E402
from hf_expand.errors import HfExpandError  # noqa: E402

pytest_plugins = ["augment_fixtures"]
ROOT = Path(__file__).resolve().parents[1]
GROW = ["--add-layers", "1", "-q", "--base-model", "org/tiny"]  # no lineage warning line


def run_cli(capsys, *args):
    capsys.readouterr()  # drop what fixtures printed
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_sub(args, prelude: str = "", preexec_fn=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``hf-expand ARGS`` in a fresh process, after ``prelude`` (patches that simulate kills or races)."""
    code = prelude + "\nimport sys\nfrom hf_expand.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env, preexec_fn=preexec_fn, timeout=timeout, cwd=ROOT)


def siblings(parent: Path, name: str = "out") -> list[str]:
    """Hidden leftovers next to ``name`` (temp builds, moved-aside folders, lock files)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture()
def llama_dir(tiny_checkpoints):
    return tiny_checkpoints("llama")


@pytest.fixture()
def grown(llama_dir, tmp_path_factory):
    """A finished grow output (it holds hf_expand_growth.json): what --overwrite may replace."""
    folder = tmp_path_factory.mktemp("grown") / "model"
    assert main(["grow", str(llama_dir), "--out", str(folder), *GROW]) == 0
    return folder


def copy_tree(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


# ---------------------------------------------------------------------------------------------------------
# finding 4: a folder that appears at --out during the run


def test_folder_appearing_during_grow_is_kept(capsys, llama_dir, tmp_path, monkeypatch):
    """--out created by someone else while grow runs -> exit 2 at commit, their folder intact, no temp left."""
    import hf_expand.card as card

    out = tmp_path / "out"
    original = card.write_card

    def write_card_and_race(folder, **kw):
        out.mkdir()
        (out / "theirs.txt").write_text("written meanwhile")
        return original(folder, **kw)

    monkeypatch.setattr(card, "write_card", write_card_and_race)
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", out, *GROW)
    assert code == 2, err
    assert "appeared" in err and str(out) in err and "--overwrite" in err and err.count("\n") == 1, err
    assert snapshot(out) == {"theirs.txt": b"written meanwhile"}
    assert siblings(tmp_path) == []
    # with --overwrite, a folder of someone else's that appeared is not replaced either
    out2 = tmp_path / "out2"

    def write_card_and_race_git(folder, **kw):
        (out2 / ".git").mkdir(parents=True)
        return original(folder, **kw)

    monkeypatch.setattr(card, "write_card", write_card_and_race_git)
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", out2, *GROW, "--overwrite")
    assert code == 2 and "not written by hf-expand" in err and "nothing was written" in err, err
    assert [p.name for p in out2.iterdir()] == [".git"] and siblings(tmp_path, "out2") == []


def test_folder_appearing_during_augment_is_kept(capsys, tmp_path, monkeypatch, datasets_cache):
    import hf_expand.augment.data_io as data_io

    data = tmp_path / "data.csv"
    cols = source_columns()
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([list(cols), *zip(*cols.values())])
    out = tmp_path / "out"
    original = data_io.save_data

    def save_and_race(d, folder, fmt):
        out.mkdir()
        (out / "theirs.txt").write_text("written meanwhile")
        return original(d, folder, fmt)

    monkeypatch.setattr(data_io, "save_data", save_and_race)
    code, _, err = run_cli(capsys, "augment", data, "--out", out, "--text-column", "text",
                           "--augment", "random_swap", "-q")
    assert code == 2 and "appeared" in err and err.count("\n") == 1, err
    assert snapshot(out) == {"theirs.txt": b"written meanwhile"}
    assert siblings(tmp_path) == []


RACE = textwrap.dedent("""
    import os, time
    from pathlib import Path
    import hf_expand.card as card
    _write_card = card.write_card
    def write_card(folder, **kw):
        sync = Path(os.environ["SYNC_DIR"])
        (Path(folder) / "writer.txt").write_text(str(os.getpid()))
        (sync / str(os.getpid())).touch()
        deadline = time.time() + 120
        while len(list(sync.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.05)
        return _write_card(folder, **kw)
    card.write_card = write_card
""")


def test_concurrent_grows_to_one_out(llama_dir, tmp_path, monkeypatch):
    """Two grows to one --out, both about to commit at once: exactly one succeeds, the other exits 2 and the
    first result is what stays."""
    sync = tmp_path / "sync"
    sync.mkdir()
    monkeypatch.setenv("SYNC_DIR", str(sync))
    out = tmp_path / "out"
    code = RACE + "\nimport sys\nfrom hf_expand.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, "grow", str(llama_dir), "--out", str(out), *GROW],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for _ in range(2)]
    results = [(p.pid, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    winner = next(pid for (pid, _, _), p in zip(results, procs) if p.returncode == 0)
    loser_err = next(err for (_, _, err), p in zip(results, procs) if p.returncode == 2)
    assert "appeared" in loser_err and loser_err.count("\n") == 1, loser_err
    assert (out / "writer.txt").read_text() == str(winner)
    assert (out / "hf_expand_growth.json").is_file() and (out / "model.safetensors").is_file()
    assert siblings(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------
# finding 5: what --overwrite may replace


def test_overwrite_refuses_a_project_tree(capsys, llama_dir, tmp_path):
    out = tmp_path / "project"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "main.py").write_text("print('mine')\n")
    before = snapshot(out)
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", out, *GROW, "--overwrite")
    assert code == 2 and "not written by hf-expand" in err and "even with --overwrite" in err, err
    assert str(out) in err and err.count("\n") == 1
    assert snapshot(out) == before and siblings(tmp_path, "project") == []
    # A grown folder someone turned into a git checkout is not ours to wipe either.
    (out / "hf_expand_growth.json").write_text("{}")
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", out, *GROW, "--overwrite")
    assert code == 2 and "not written by hf-expand" in err and ".git" in err, err
    # Without --overwrite the message does not suggest a flag that would not help.
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", out, *GROW)
    assert code == 2 and "already exists" in err and "not written by hf-expand" in err, err


def test_overwrite_replaces_empty_and_own_folders(capsys, llama_dir, grown, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", empty, *GROW, "--overwrite")
    assert code == 0, err
    assert (empty / "hf_expand_growth.json").is_file()
    (grown / "stale.txt").write_text("from an earlier grow")
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", grown, "--widen-ffn", "2", "-q", "--overwrite")
    assert code == 0, err
    assert not (grown / "stale.txt").exists()
    assert json.loads((grown / "hf_expand_growth.json").read_text())["operations"][0]["op"] == "widen_ffn"
    assert siblings(grown.parent, "model") == [] and siblings(tmp_path, "empty") == []


def test_overwrite_refuses_a_foreign_augment_out(capsys, tmp_path, datasets_cache):
    data = tmp_path / "data.csv"
    cols = source_columns()
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([list(cols), *zip(*cols.values())])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "augment", data, "--out", out, "--text-column", "text",
                           "--augment", "random_swap", "-q", "--overwrite")
    assert code == 2 and "not written by hf-expand" in err and err.count("\n") == 1, err
    assert snapshot(out) == {"notes.txt": b"mine"}
    (out / "notes.txt").unlink()
    (out / "hf_expand_augmentation.json").write_text("{}")  # an earlier augment output: replaced
    code, _, err = run_cli(capsys, "augment", data, "--out", out, "--text-column", "text",
                           "--augment", "random_swap", "-q", "--overwrite")
    assert code == 0, err
    assert (out / "dataset_dict.json").is_file() and siblings(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_symlinked_out_is_refused(capsys, llama_dir, grown, tmp_path, overwrite):
    """--out a symlink to an hf-expand folder: refused (never followed), the target untouched."""
    link = tmp_path / "link"
    link.symlink_to(grown, target_is_directory=True)
    before = snapshot(grown)
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", link, *GROW, *(["--overwrite"] if overwrite else []))
    assert code == 2 and "symbolic link" in err and str(link) in err and err.count("\n") == 1, err
    assert link.is_symlink() and snapshot(grown) == before
    assert siblings(tmp_path, "link") == [] and siblings(grown.parent, "model") == []
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", dangling, *GROW)
    assert code == 2 and "symbolic link" in err, err
    assert not (tmp_path / "nowhere").exists()


def test_setup_wordnet_overwrite_rules(capsys, tmp_path):
    from hf_expand.augment import wordnet as hf_wordnet

    foreign = tmp_path / "nd" / "corpora" / "wordnet"
    foreign.mkdir(parents=True)
    (foreign / "MYNOTES.txt").write_text("mine")
    code, _, err = run_cli(capsys, "setup-wordnet", "--target", tmp_path / "nd", "--overwrite", "-q")
    assert code == 2 and "not written by hf-expand" in err and "even with --overwrite" in err, err
    assert (foreign / "MYNOTES.txt").read_text() == "mine"
    # a WordNet someone else installed (NLTK's download) is replaced with --overwrite
    (foreign / "MYNOTES.txt").unlink()
    (foreign / "index.noun").write_text("")
    code, _, err = run_cli(capsys, "setup-wordnet", "--target", tmp_path / "nd", "-q")
    assert code == 2 and "pass --overwrite" in err, err
    code, _, err = run_cli(capsys, "setup-wordnet", "--target", tmp_path / "nd", "--overwrite", "-q")
    assert code == 0, err
    assert (foreign / hf_wordnet.MARKER).is_file()
    assert [p.name for p in foreign.parent.iterdir()] == ["wordnet"]


# ---------------------------------------------------------------------------------------------------------
# finding 13: leftovers of killed runs


def test_kill_between_the_renames_is_restored(capsys, llama_dir, grown, tmp_path):
    """grow --overwrite killed after moving the old folder aside: the next run puts it back and says so."""
    before = snapshot(grown)
    kill = textwrap.dedent("""
        import os
        def _guard(real):
            def rename(src, dst, *a, **k):  # the rename of the new build onto --out: die there, like SIGKILL
                if ".tmp-" in os.path.basename(str(src)) and not os.path.basename(str(dst)).startswith("."):
                    os._exit(137)
                return real(src, dst, *a, **k)
            return rename
        os.rename, os.replace = _guard(os.rename), _guard(os.replace)
    """)
    proc = run_sub(["grow", llama_dir, "--out", grown, "--widen-ffn", "2", "-q", "--overwrite"], prelude=kill)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert not grown.exists()
    left = siblings(grown.parent, "model")
    assert any(".old-" in n for n in left) and any(".tmp-" in n for n in left), left
    # the next command that writes there restores the old folder before anything else (and refuses, no --overwrite)
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", grown, *GROW)
    assert code == 2 and "already exists" in err, err
    assert "restored" in err and str(grown) in err, err
    assert snapshot(grown) == before
    assert siblings(grown.parent, "model") == [], siblings(grown.parent, "model")


def test_old_folder_left_by_hand_is_restored(capsys, llama_dir, grown, tmp_path):
    """The state a kill between the renames leaves (old folder moved aside, no --out): restored."""
    aside = grown.with_name(f".model.old-{dead_pid()}")
    grown.rename(aside)
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", grown, *GROW, "--overwrite")
    assert code == 0, err
    assert "restored" in err, err
    assert json.loads((grown / "hf_expand_growth.json").read_text())["operations"][0]["op"] == "add_layers"
    assert siblings(grown.parent, "model") == []
    # and when --out itself is there, a moved-aside copy is just a leftover: removed with one line
    aside.mkdir()
    (aside / "x").write_text("old")
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", grown, *GROW, "--overwrite")
    assert code == 0 and "removed" in err and aside.name in err, err
    assert siblings(grown.parent, "model") == []


def test_stale_temp_build_is_removed(capsys, llama_dir, tmp_path):
    stale = tmp_path / f".out.tmp-{dead_pid()}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    legacy = tmp_path / ".out.tmp-x7k2_q9z"  # the name older versions used (no pid)
    legacy.mkdir()
    other = tmp_path / ".other.tmp-1-abc"  # another output's leftover: not ours to judge here
    other.mkdir()
    code, _, err = run_cli(capsys, "grow", llama_dir, "--out", tmp_path / "out", *GROW)
    assert code == 0, err
    assert stale.name in err and legacy.name in err and "removed" in err, err
    assert not stale.exists() and not legacy.exists() and other.exists()
    assert siblings(tmp_path) == []


def test_a_live_temp_build_is_not_removed(tmp_path):
    """A temp build whose writer is alive (it holds the lock on it) is left alone by another run's cleanup."""
    from hf_expand.output import atomic_output_dir, check_output_dir

    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "f").write_text("x")
        check_output_dir(out, False)
        assert tmp.is_dir() and (tmp / "f").read_text() == "x"
    assert (out / "f").read_text() == "x" and siblings(tmp_path) == []


def test_clean_leftovers_for_training_checkpoints(caplog, tmp_path):
    from hf_expand.output import clean_leftovers

    ckpt = tmp_path / "checkpoints"
    (ckpt / ".step-20.partial").mkdir(parents=True)
    (ckpt / ".step-20.partial" / "model.safetensors").write_bytes(b"\0" * 10)
    (ckpt / "step-10").mkdir()
    with caplog.at_level("INFO", logger="hf_expand"):
        removed = clean_leftovers(ckpt, [".step-*.partial"])
    assert [p.name for p in removed] == [".step-20.partial"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-10"]
    assert any(".step-20.partial" in r.getMessage() for r in caplog.records)
    assert clean_leftovers(tmp_path / "missing", [".step-*.partial"]) == []


def test_run_folder_leftovers_are_cleaned(capsys, tmp_path):
    """A killed `run` leaves `.<stage>.partial` and temp builds in the run folder: the next run removes them."""
    from hf_expand.run import _check_run_folder

    out = tmp_path / "run"
    out.mkdir()
    (out / "stages.json").write_text("{}")
    (out / ".grown.partial").mkdir()
    (out / f"..grown.partial.tmp-{dead_pid()}-abc").mkdir()
    (out / "data").mkdir()
    _check_run_folder({"model": {"id": "nowhere/model"}}, out)
    assert sorted(p.name for p in out.iterdir()) == ["data", "stages.json"]


# ---------------------------------------------------------------------------------------------------------
# disk and permission errors


def _fsize_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_too_large_is_one_line(llama_dir, tmp_path):
    """A write that fails (EFBIG from a file-size limit; ENOSPC and EROFS take the same path): exit 2, one line
    naming --out and the fix, no --out and no temp folder."""
    out = tmp_path / "out"
    proc = run_sub(["grow", llama_dir, "--out", out, *GROW], preexec_fn=_fsize_limit(20_000))
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "hf-expand: error:" in err and str(out) in err, err
    assert "too large" in err and "nothing was written" in err, err
    assert not out.exists() and siblings(tmp_path) == []


def test_disk_full_while_augmenting_is_one_line(capsys, tmp_path, monkeypatch, datasets_cache):
    import errno

    import hf_expand.augment.data_io as data_io

    data = tmp_path / "data.csv"
    cols = source_columns()
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([list(cols), *zip(*cols.values())])
    out = tmp_path / "out"

    def save_half(d, folder, fmt):
        (Path(folder) / "data-00000-of-00001.arrow").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "data-00000-of-00001.arrow"))

    monkeypatch.setattr(data_io, "save_data", save_half)
    code, _, err = run_cli(capsys, "augment", data, "--out", out, "--text-column", "text",
                           "--augment", "random_swap", "-q")
    assert code == 2 and err.count("\n") == 1, err
    assert "no space left" in err.lower() and str(out) in err and "nothing was written" in err, err
    assert not out.exists() and siblings(tmp_path) == []


def test_read_only_parent_is_refused_up_front(tmp_path, monkeypatch):
    """A parent the process may not write into (checked with os.access: root passes chmod, not EROFS)."""
    from hf_expand.model_io import check_output_dir

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == tmp_path else real_access(p, mode, **k))
    with pytest.raises(HfExpandError, match="cannot write") as info:
        check_output_dir(tmp_path / "out", False)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
