"""Logging: JSON lines for machines (the default), a console format for humans.

Everything goes through the standard library's logging, rendered by structlog, so log records
from the framework, the clients and third-party libraries share one format. Reconciles bind
``controller``, ``key`` and ``reconcile_id`` as context variables: every line logged while a key
is being reconciled (even by a client deep below) carries them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]

_EXTRA_SKIP = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "_logger",
    "_name",
    "_from_structlog",
    "_record",
}


def _stdlib_extra(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Lift ``extra={...}`` fields of plain stdlib records into the structured event."""
    record = event.get("_record")
    if record is not None:
        for name, value in record.__dict__.items():
            if name not in _EXTRA_SKIP and not name.startswith("_") and name not in event:
                event[name] = value
    return event


def get_logger(name: str) -> Any:
    """A structured logger that always goes through stdlib logging.

    It does not depend on ``structlog.configure``: a program that embeds the framework without
    calling :func:`configure` gets ordinary stdlib records (level filtering included), and one
    that calls it gets JSON or console lines with the bound fields.
    """
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def configure(
    fmt: LogFormat = "json", level: str | int = "INFO", stream: TextIO | None = None
) -> None:
    """Send every log record (framework, clients, libraries) to one handler rendering ``fmt``."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, _stdlib_extra],
        processors=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    # Libraries that log every request at INFO would drown the controllers' own lines.
    for noisy in ("httpx", "httpcore", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
