"""``--report-to`` (issue 18): TensorBoard event files that tensorboard's own reader parses, pushed with the
model; a tracker whose package is missing is refused in one line before anything is written."""

from __future__ import annotations

import pytest

from hf_expand import HfExpandError
from hf_expand.train import tracking
from hf_expand.train.loop import TrainArgs, train
from test_train import SENTENCES


def _args(grown, out, **kw) -> TrainArgs:
    return TrainArgs(model=str(grown), data=str(SENTENCES), out=str(out), max_steps=4, batch_size=8, log_every=1, **kw)


def test_tensorboard_events_parse_and_are_pushed(grown_llama, tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hf_expand.hub import upload_files

    out = tmp_path / "run"
    train(_args(grown_llama, out, report_to="tensorboard", eval_ratio=0.25, eval_every=2), progress=False)  # -q too
    events = sorted((out / "logs").rglob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    readers = []
    for path in events:  # the run's scalars, and the hyperparameters in a sub-run of their own
        acc = EventAccumulator(str(path))
        acc.Reload()
        readers.append(acc)
    scalars = {tag: acc for acc in readers for tag in acc.Tags()["scalars"]}
    assert {"loss", "lr"} <= set(scalars), scalars
    assert [e.step for e in scalars["loss"].Scalars("loss")] == [1, 2, 3, 4]
    assert any(tag.startswith("eval/") for tag in scalars), scalars
    uploaded = {name for name, _ in upload_files(out)}
    assert any(name.startswith("logs/") and "tfevents" in name for name in uploaded), uploaded
    assert not any(name.startswith("checkpoints/") for name in uploaded)


def test_no_tracker_by_default(grown_llama, tmp_path, one_thread):
    out = tmp_path / "run"
    train(_args(grown_llama, out), progress=False)
    assert not list(out.rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("name", tracking.TRACKERS)
def test_missing_tracker_package_is_refused(name, grown_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_available", lambda n: False)
    with pytest.raises(HfExpandError, match=f"--report-to {name} needs the {name} package: pip install {name}"):
        train(_args(grown_llama, tmp_path / "run", report_to=name), progress=False)
    assert not (tmp_path / "run").exists()


def test_all_means_every_installed_tracker(monkeypatch):
    monkeypatch.setattr(tracking, "_available", lambda n: n in ("tensorboard", "mlflow"))
    assert tracking.resolve("all") == ["tensorboard", "mlflow"] and tracking.resolve("none") == []
    with pytest.raises(HfExpandError, match="--report-to must be one of none, tensorboard"):
        tracking.resolve("comet")
