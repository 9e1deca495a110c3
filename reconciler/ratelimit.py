"""Rate limiting and backoff primitives shared by the work queue and every long-poll loop.

Time is injected (:class:`Clock`) so tests of backoff and token buckets need not sleep for real.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Protocol

import anyio


class Clock(Protocol):
    """The time source: monotonic seconds and an awaitable sleep."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


@dataclass
class TokenBucket:
    """A classic token bucket: ``rate`` tokens per second, at most ``burst`` saved up.

    ``reserve()`` never blocks: it takes a token (possibly going into debt) and says how long the
    caller must wait before acting, which is what both a sync ``queue.add_rate_limited()`` and an
    async poll loop need.
    """

    rate: float
    burst: int
    clock: Clock = field(default=SYSTEM_CLOCK)
    _tokens: float = field(init=False)
    _last: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("TokenBucket needs rate > 0 and burst >= 1")
        self._tokens = float(self.burst)
        self._last = self.clock.monotonic()

    def _refill(self) -> None:
        now = self.clock.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now

    def reserve(self) -> float:
        """Take one token; return the delay in seconds before it may be used (0 if available)."""
        self._refill()
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await self.clock.sleep(delay)


@dataclass
class Backoff:
    """Exponential backoff with full jitter: ``min(cap, base * 2**n)`` scaled by U[1-jitter, 1]."""

    base: float = 0.1
    cap: float = 30.0
    jitter: float = 0.5
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        exp = min(self.cap, self.base * 2.0 ** min(self.failures, 62))
        self.failures += 1
        return exp * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.failures = 0
