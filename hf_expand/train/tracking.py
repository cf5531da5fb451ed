"""``--report-to``: which experiment trackers a training run logs to, through Accelerate's trackers (the
choices and spelling of ``transformers.TrainingArguments.report_to``)."""

from __future__ import annotations

from ..errors import HfExpandError

TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")  # each an Accelerate tracker name and a pip package
CHOICES = ("none", *TRACKERS, "all")


def _available(name: str) -> bool:
    from accelerate import utils

    return getattr(utils, f"is_{name}_available")()


def resolve(report_to: str) -> list[str]:
    """The trackers to start: ``none`` -> none; ``all`` -> every installed one; a name -> that one, refused in
    one line (before anything is written) when its package is missing."""
    if report_to not in CHOICES:
        raise HfExpandError(f"--report-to must be one of {', '.join(CHOICES)}, got {report_to!r}")
    if report_to == "none":
        return []
    if report_to == "all":
        return [t for t in TRACKERS if _available(t)]
    if not _available(report_to):
        raise HfExpandError(f"--report-to {report_to} needs the {report_to} package: pip install {report_to} "
                            f"(or choose another tracker, or none)")
    return [report_to]
