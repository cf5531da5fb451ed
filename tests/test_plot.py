"""The training-curve PNG (issue 18): drawn with matplotlib, with labelled axes, ticks and a legend, eval metrics
on an axis of their own; without matplotlib it is skipped with one line saying how to get it."""

from __future__ import annotations

import logging
import sys

from hf_expand.plot import figure, training_curve

SECTION = {"loss_history": [[s, 4.0 - 0.1 * s] for s in range(1, 21)],
           "eval_history": [{"step": 10, "perplexity": 40.0}, {"step": 20, "perplexity": 30.0, "accuracy": 0.5}]}


def test_curve_has_labelled_axes_and_a_legend(tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    fig = figure(SECTION)
    try:
        ax, right = fig.axes
        assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() == "training loss"
        assert right.get_ylabel() == "eval accuracy / perplexity"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training loss", "eval accuracy",
                                                                        "eval perplexity"]
        assert len(ax.get_xticks()) >= 3 and len(right.get_yticks()) >= 3
    finally:
        plt.close(fig)
    path = training_curve(SECTION, tmp_path / "curve.png")
    image = Image.open(path)  # a real PNG of the figure's size, with more than a blank page in it
    assert image.format == "PNG" and image.size == (640, 360)
    assert len(set(image.convert("RGB").getdata())) > 50


def test_no_history_no_curve(tmp_path):
    assert training_curve({"loss_history": [[1, 2.0]]}, tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()


def test_without_matplotlib_one_line_says_how(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with caplog.at_level(logging.WARNING, logger="hf_expand"):
        assert training_curve(SECTION, tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()
    assert [r.getMessage() for r in caplog.records] == [
        "training curve not drawn: it needs matplotlib (pip install 'hf-expand[plot]' or matplotlib)"]
