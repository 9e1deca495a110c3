"""Pieces the Consul and Nomad clients share: Go durations, long-poll timeouts, read retries.

Both servers implement blocking queries the same way (``?index=&wait=``, the server adds up to
``wait/16`` of jitter), so the client-side read timeout of a long poll is computed in one place.
Retrying idempotent reads lives here too, and only here: the framework above never retries a
client call itself except in the sources' own watch loops.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from reconciler.clients.errors import Unavailable

T = TypeVar("T")

# Consul and Nomad both clamp ``wait`` to 10 minutes and default it to 5.
MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as ``5m``, ``1m30s`` or ``250ms``."""
    s = text.strip()
    if s in ("0", ""):
        return 0.0
    pos = 0
    total = 0.0
    for match in _DURATION.finditer(s):
        if match.start() != pos:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s):
        raise ValueError(f"invalid duration {text!r}")
    return total


def format_wait(seconds: float) -> str:
    """A ``wait=`` value, in whole milliseconds so sub-second waits survive (tests use them)."""
    if seconds <= 0:
        raise ValueError("wait must be positive")
    return f"{max(1, round(min(seconds, MAX_WAIT) * 1000))}ms"


def blocking_read_timeout(wait: float, margin: float) -> float:
    """How long to wait for a long poll's answer: the server may hold it ``wait * 17/16``."""
    wait = min(wait, MAX_WAIT)
    return wait + wait / 16.0 + margin


async def retry_read(
    call: Callable[[], Awaitable[T]], *, attempts: int, base: float = 0.1, cap: float = 2.0
) -> T:
    """Run an idempotent read, retrying :class:`Unavailable` with exponential full jitter.

    Only non-blocking reads come through here: a long poll is retried by its source's loop, and a
    write is never retried blindly (it may have been applied before the connection dropped).
    """
    retrying = AsyncRetrying(
        sleep=anyio.sleep,
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_random_exponential(multiplier=base, max=cap),
        retry=retry_if_exception_type(Unavailable),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
