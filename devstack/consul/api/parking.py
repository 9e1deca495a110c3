"""Parked blocking queries that share one answer: one render and one loop pass per write.

Ten thousand clients long-polling the same KV prefix all ask the same question. Parking each on
its own future means a write wakes ten thousand tasks, each re-running the query, re-building
its headers and writing its bytes when its turn comes, so the last one answers hundreds of
milliseconds after the first. Here queries that would get byte-identical answers (same read,
same token, same encoding) join one :class:`Group`, which holds a single future in the watch set.
When a write touches what they read, the group runs the query once, renders the whole HTTP
response once and writes it to every waiter whose index it passes, in one pass of the event
loop; only then do the waiters' handler tasks wake, to close the books with aiohttp. Timeouts
are kept in coarse buckets (one timer per 50 ms of deadlines, not one per query).

Anything unusual (a snapshot restore, a lost leader, a connection that closed) is handed back to
the waiter's own task, which answers as the per-query loop in ``reads.blocking`` would.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Callable, Hashable
from typing import Any

from devstack.consul.core import Core
from devstack.consul.state import Watches

# Deadlines are grouped into buckets this wide; Consul adds up to wait/16 of jitter anyway.
BUCKET_SECONDS = 0.05
# How often parked queries whose client went away are let go (Consul's request context ends
# with the connection; aiohttp does not cancel the handler, so the groups look for them).
SWEEP_SECONDS = 2.0


class Outcome(enum.Enum):
    WRITTEN = "written"  # the group wrote the answer on the waiter's connection
    EXPIRED = "expired"  # the wait ran out with the index unchanged
    RERUN = "rerun"  # something unusual: the waiter's task answers for itself


class Waiter:
    __slots__ = ("bucket", "done", "group", "min_index", "not_found", "status", "transport")

    def __init__(
        self,
        transport: Any,
        min_index: int,
        not_found: bool,
        done: asyncio.Future[Outcome],
        group: Group,
    ) -> None:
        self.transport = transport
        self.min_index = min_index
        self.not_found = not_found
        self.done = done
        self.group = group
        self.bucket = 0
        self.status = 200


class Group:
    """Queries parked on one read whose answers are the same bytes."""

    __slots__ = (
        "fut",
        "key",
        "parking",
        "prefixes",
        "render",
        "restores",
        "run",
        "stale",
        "topics",
        "waiters",
    )

    def __init__(
        self,
        parking: Parking,
        key: Hashable,
        run: Callable[[], Any],
        render: Callable[[Any], bytes | None],
        topics: tuple[str, ...],
        prefixes: tuple[str, ...],
        stale: bool,
    ) -> None:
        self.parking = parking
        self.key = key
        self.run = run
        self.render = render
        self.topics = topics
        self.prefixes = prefixes
        self.stale = stale
        self.restores = parking.core.restores
        self.waiters: set[Waiter] = set()
        self.fut: asyncio.Future[None] | None = None

    def arm(self) -> None:
        fut: asyncio.Future[None] = self.parking.loop.create_future()
        fut.add_done_callback(self._fire)
        self.fut = fut
        watches = self.parking.watches
        watches.group_futures.add(fut)
        watches.add(fut, self.topics, self.prefixes)

    def disarm(self) -> None:
        fut = self.fut
        if fut is None:
            return
        self.fut = None
        fut.remove_done_callback(self._fire)
        watches = self.parking.watches
        watches.group_futures.discard(fut)
        watches.remove(fut, self.topics, self.prefixes)
        if not fut.done():
            fut.cancel()

    def _release(self, waiters: set[Waiter]) -> None:
        """Hand every waiter back to its own task and close the group."""
        self.waiters = set()
        self.parking.drop(self)
        for w in waiters:
            self.parking.finish(w, Outcome.RERUN)

    def _fire(self, fut: asyncio.Future[None]) -> None:
        """Something the group read changed: one run, one render, every write in this pass."""
        parking = self.parking
        self.fut = None
        parking.watches.group_futures.discard(fut)
        parking.watches.remove(fut, self.topics, self.prefixes)
        waiters = self.waiters
        core = parking.core
        if core.restores != self.restores or (core.faults.no_leader and not self.stale):
            self._release(waiters)
            return
        try:
            result = self.run()
            # Rendered once, before any write, for every waiter this change answers.
            data = self.render(result)
        except Exception:
            # Whatever failed (a token deleted meanwhile, say) fails again in each waiter's
            # own task, which answers it the way the endpoint does.
            self._release(waiters)
            return
        keep: set[Waiter] = set()
        written: list[Waiter] = []
        failed: list[Waiter] = []
        # Writes first, all of them: they are what clients wait for. The waiters' tasks are
        # woken afterwards, in the next loop pass, to close the books.
        for w in waiters:
            if result.not_found:
                if w.not_found:
                    # Still nothing there: an unrelated write must not end the wait.
                    w.min_index = max(w.min_index, result.index)
                w.not_found = True
            if result.index <= w.min_index:
                keep.add(w)
                continue
            transport = w.transport
            if data is not None and transport is not None and not transport.is_closing():
                transport.write(data)
                written.append(w)
            else:
                failed.append(w)
        for w in written:
            w.status = result.status
            parking.finish(w, Outcome.WRITTEN)
        for w in failed:
            parking.finish(w, Outcome.RERUN)
        self.waiters = keep
        if keep:
            self.arm()
        else:
            parking.drop(self)


class Parking:
    """Every shared group of one agent, and the deadline buckets of their waiters."""

    def __init__(self, core: Core, loop: asyncio.AbstractEventLoop) -> None:
        self.core = core
        self.loop = loop
        self.watches: Watches = core.state.watches
        self.groups: dict[Hashable, Group] = {}
        self.buckets: dict[int, set[Waiter]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def park(
        self,
        key: Hashable,
        run: Callable[[], Any],
        render: Callable[[Any], bytes | None],
        *,
        topics: tuple[str, ...],
        prefixes: tuple[str, ...],
        stale: bool,
        transport: Any,
        min_index: int,
        not_found: bool,
        deadline: float,
    ) -> Waiter:
        """Join (or open) the group for ``key``; await ``waiter.done`` for the outcome."""
        full_key = (key, topics, prefixes, stale, self.core.restores)
        group = self.groups.get(full_key)
        if group is None:
            group = Group(self, full_key, run, render, topics, prefixes, stale)
            self.groups[full_key] = group
            group.arm()
        waiter = Waiter(transport, min_index, not_found, self.loop.create_future(), group)
        group.waiters.add(waiter)
        self.watches.shared_waiters += 1
        bucket = math.ceil(deadline / BUCKET_SECONDS)
        waiter.bucket = bucket
        members = self.buckets.get(bucket)
        if members is None:
            members = self.buckets[bucket] = set()
            self.loop.call_at(bucket * BUCKET_SECONDS, self._expire, bucket)
        members.add(waiter)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)
        return waiter

    def _sweep(self) -> None:
        """Let go of queries whose connection closed, so their tasks and sockets are freed."""
        self._sweeper = None
        for group in list(self.groups.values()):
            gone = [w for w in group.waiters if w.transport is None or w.transport.is_closing()]
            for waiter in gone:
                group.waiters.discard(waiter)
                self.finish(waiter, Outcome.RERUN)
            if not group.waiters:
                self.drop(group)
        if self.groups:
            self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)

    def finish(self, waiter: Waiter, outcome: Outcome) -> None:
        members = self.buckets.get(waiter.bucket)
        if members is not None:
            members.discard(waiter)
        self.watches.shared_waiters -= 1
        if not waiter.done.done():
            waiter.done.set_result(outcome)

    def leave(self, waiter: Waiter) -> None:
        """A waiter whose task went away (cancelled) before its group answered it."""
        group = waiter.group
        if waiter in group.waiters:
            group.waiters.discard(waiter)
            self.finish(waiter, Outcome.RERUN)
            if not group.waiters:
                self.drop(group)

    def drop(self, group: Group) -> None:
        group.disarm()
        if self.groups.get(group.key) is group:
            del self.groups[group.key]

    def _expire(self, bucket: int) -> None:
        members = self.buckets.pop(bucket, None)
        if not members:
            return
        for waiter in members:
            group = waiter.group
            group.waiters.discard(waiter)
            self.watches.shared_waiters -= 1
            if not waiter.done.done():
                waiter.done.set_result(Outcome.EXPIRED)
            if not group.waiters:
                self.drop(group)

    def close(self) -> None:
        """Hand every parked waiter back to its task (the agent is stopping)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for group in list(self.groups.values()):
            for waiter in list(group.waiters):
                self.finish(waiter, Outcome.RERUN)
            group.waiters.clear()
            self.drop(group)
        self.buckets.clear()
