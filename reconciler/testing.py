"""Helpers for testing controllers built on the framework, without sleeping for real.

It ships with the framework (and does not import pytest) so that controller authors test their
backoff, ``requeue_after`` and resync logic the way the framework tests its own: inject a
:class:`ManualClock` wherever a :class:`~reconciler.ratelimit.Clock` is accepted, then move time
forward explicitly.

    clock = ManualClock()
    queue = WorkQueue("test", clock=clock)
    queue.add_after("a", 30)
    clock.advance(30)
    assert take_ready(queue) == ["a"]
"""

from __future__ import annotations

import heapq
import itertools

import anyio
import anyio.lowlevel

from reconciler.workqueue import QueueShutDown, WorkQueue

__all__ = ["ManualClock", "take_ready"]


class ManualClock:
    """A :class:`~reconciler.ratelimit.Clock` whose time moves only when a test says so.

    ``sleep()`` parks the caller until :meth:`advance` (or :meth:`jump_to_next`) moves the clock
    to or past its deadline; sleeping zero or less is only a checkpoint. ``advance`` is sync, so it
    can be called from sync code (a hypothesis state machine) as well as from a test task; the
    sleepers it wakes run at the caller's next checkpoint, e.g.
    ``await anyio.wait_all_tasks_blocked()``.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        entry = (self._now + seconds, next(self._seq), anyio.Event())
        heapq.heappush(self._sleepers, entry)
        try:
            await entry[2].wait()
        finally:
            if not entry[2].is_set():
                # Cancelled: forget the sleeper so `sleepers` and `next_deadline` stay truthful.
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper now due."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()

    def jump_to_next(self) -> bool:
        """Move time to the earliest sleeper's deadline and wake it; ``False`` if nobody sleeps."""
        deadline = self.next_deadline
        if deadline is None:
            return False
        self.advance(max(0.0, deadline - self._now))
        return True

    @property
    def sleepers(self) -> int:
        """How many tasks are parked in ``sleep()``."""
        return len(self._sleepers)

    @property
    def next_deadline(self) -> float | None:
        return self._sleepers[0][0] if self._sleepers else None


def take_ready(queue: WorkQueue, *, done: bool = True) -> list[str]:
    """Take every key the queue can hand out now, in order; mark each done unless ``done=False``.

    Lets a test assert which keys a source or a reconcile enqueued without running workers.
    """
    keys: list[str] = []
    while True:
        try:
            key = queue.get_nowait()
        except (anyio.WouldBlock, QueueShutDown):
            return keys
        keys.append(key)
        if done:
            queue.done(key)
