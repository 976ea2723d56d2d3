"""Structured logs: JSON when not on a terminal, readable when on one.

Nothing that may carry personal data is ever a log field: no user id, no raw payload,
no route names from bad records. Call sites log codes, counts and offsets.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _ToStructlog(logging.Handler):
    """Forwards librdkafka's log lines (via confluent-kafka's ``logger``) into structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger("librdkafka")
        level = (
            "error"
            if record.levelno >= logging.ERROR
            else ("warning" if record.levelno >= logging.WARNING else "info")
        )
        getattr(log, level)("librdkafka", message=record.getMessage())


def kafka_logger() -> logging.Logger:
    """The logger handed to every Kafka client, so its lines are structured like ours."""
    logger = logging.getLogger("sentinel_stream.librdkafka")
    if not logger.handlers:
        logger.addHandler(_ToStructlog())
        logger.propagate = False
        logger.setLevel(logging.INFO)
    return logger


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
