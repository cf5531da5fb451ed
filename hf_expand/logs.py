"""Logging for the command line: hf_expand's own loggers only, never the root logger (a root handler at INFO
would print every ``HTTP Request: POST ...`` line of httpx during a push)."""

from __future__ import annotations

import contextlib
import logging
import sys

_HANDLER_FLAG = "_hf_expand_handler"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (pytest and callers may swap it after setup)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(quiet: bool, verbose: bool = False) -> None:
    """``hf_expand.*`` messages to stderr as plain lines: INFO and up, WARNING and up with ``-q``, DEBUG and
    up with ``-v``."""
    logger = logging.getLogger("hf_expand")
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if not any(getattr(h, _HANDLER_FLAG, False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        setattr(handler, _HANDLER_FLAG, True)
        logger.addHandler(handler)
    for noisy in ("httpx", "httpcore", "huggingface_hub"):  # library chatter stays at its own WARNING level
        if logging.getLogger(noisy).level == logging.NOTSET:
            logging.getLogger(noisy).setLevel(logging.WARNING)


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def quiet_load_report(enabled: bool = True):
    """Drop transformers' load report ("LOAD REPORT ... MISSING ... Consider training") while loading a model
    whose missing head is created on purpose; errors still raise. A filter, not a level: transformers runs
    an extra tensor-parallel plan check (and warns about it) whenever its logger's level is WARNING or above."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
