"""The training-curve PNG of a run (``training_curve.png``, shown in the card): training loss per step on the
left axis, evaluation metrics on a right axis of their own, with labelled axes, ticks and a legend. Drawn with
matplotlib (the ``plot`` extra: ``pip install hf-expand[plot]``); without it the curve is skipped with one line
saying how to get it."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("hf_expand")

EVAL_KEYS = ("accuracy", "f1", "perplexity", "loss")  # metrics drawn from the eval history, when present


def training_curve(section: dict, path: str | Path):
    """Draw ``section["loss_history"]`` ([step, loss] pairs) and ``section["eval_history"]``; returns the written
    path, or None when there is no history to draw or matplotlib is missing."""
    points = section.get("loss_history") or []
    if len(points) < 2:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed (and none on a server)
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("training curve not drawn: it needs matplotlib (pip install 'hf-expand[plot]' or matplotlib)")
        return None
    fig = figure(section)
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


def figure(section: dict):
    """The matplotlib figure :func:`training_curve` saves (tests read its axes and legend)."""
    import matplotlib.pyplot as plt

    points = section.get("loss_history") or []
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot([s for s, _ in points], [v for _, v in points], color="tab:blue", linewidth=1.2, label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    evals = section.get("eval_history") or []
    metrics = [k for k in EVAL_KEYS if any(isinstance(e.get(k), (int, float)) for e in evals)]
    if metrics:
        right = ax.twinx()  # eval metrics on their own scale, labelled
        colors = ("tab:red", "tab:green", "tab:purple", "tab:orange")
        for key, color in zip(metrics, colors):
            pts = [(e["step"], e[key]) for e in evals if isinstance(e.get(key), (int, float))]
            right.plot([s for s, _ in pts], [v for _, v in pts], "o--", color=color, markersize=4,
                       label=f"eval {key}")
        right.set_ylabel("eval " + " / ".join(metrics))
        h2, l2 = right.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right", fontsize="small")
    ax.set_title("training curve")
    fig.tight_layout()
    return fig
