"""The harness's single logger. Everything logs under `cathouse_harness`."""

from __future__ import annotations

import logging

from cathouse_harness.support.redact import install_log_filter

LOGGER_NAME = "cathouse_harness"


def get_logger(suffix: str | None = None) -> logging.Logger:
    install_log_filter(LOGGER_NAME)
    name = f"{LOGGER_NAME}.{suffix}" if suffix else LOGGER_NAME
    logger = logging.getLogger(name)
    if suffix:
        # Filters on a parent logger do not run for records of its children.
        install_log_filter(name)
    return logger
