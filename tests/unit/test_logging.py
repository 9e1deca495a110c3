"""Logs are JSON lines carrying controller, key and reconcile id; console format for humans."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from reconciler.logging import configure, get_logger


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()


def test_json_lines_carry_bound_context_and_stdlib_extras(restore_logging: None) -> None:
    stream = io.StringIO()
    configure("json", "DEBUG", stream=stream)
    structlog.contextvars.bind_contextvars(controller="jobs", key="u1", reconcile_id="abc123")
    get_logger("reconciler.test").info("converged", written=2)
    logging.getLogger("reconciler.sources").warning("watch failed", extra={"source": "kv:x/"})
    structlog.contextvars.clear_contextvars()
    get_logger("reconciler.test").debug("outside a reconcile")

    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "converged"
    assert first["written"] == 2
    assert (first["controller"], first["key"], first["reconcile_id"]) == ("jobs", "u1", "abc123")
    assert first["level"] == "info"
    assert first["logger"] == "reconciler.test"
    assert first["timestamp"].endswith("Z")
    assert second["event"] == "watch failed"
    assert second["source"] == "kv:x/"
    assert second["controller"] == "jobs", "stdlib records get the reconcile context too"
    assert "controller" not in third


def test_exceptions_are_rendered_into_the_line(restore_logging: None) -> None:
    stream = io.StringIO()
    configure("json", "INFO", stream=stream)
    try:
        raise ZeroDivisionError("bug")
    except ZeroDivisionError:
        get_logger("reconciler.test").exception("reconcile raised")
    line = json.loads(stream.getvalue())
    assert "ZeroDivisionError: bug" in line["exception"]


def test_level_filtering_and_console_format(restore_logging: None) -> None:
    stream = io.StringIO()
    configure("console", "WARNING", stream=stream)
    log = get_logger("reconciler.test")
    log.info("hidden")
    log.warning("shown", controller="elb")
    text = stream.getvalue()
    assert "hidden" not in text
    assert "shown" in text
    assert "controller=elb" in text
    assert not text.lstrip().startswith("{")


def test_unconfigured_use_goes_through_stdlib(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="reconciler.embedded"):
        get_logger("reconciler.embedded").info("plain library use", key="k")
    assert any("plain library use" in str(r.msg) for r in caplog.records)
