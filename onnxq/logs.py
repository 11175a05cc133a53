"""Logging set-up for every onnxq process: one line per event, never an input's content."""

from __future__ import annotations

import logging

from onnxq.settings import get_settings

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure() -> None:
    """Log to stderr at `ONNXQ_LOG_LEVEL`."""
    logging.basicConfig(level=get_settings().log_level.upper(), format=FORMAT)
