"""The work queue between sources and reconcile workers, with client-go's workqueue semantics.

Sources add keys; workers take them. The queue is what makes reconciles safe to run concurrently:

- a key waiting in the queue is there once, however often it is added (events collapse);
- a key is never handed to two workers at once: a key added while in flight is marked dirty and
  handed out again after ``done(key)``;
- waiting keys come out in FIFO order;
- ``add_after`` parks a key until a given time (``requeue_after``, periodic resync), and
  ``add_rate_limited`` parks it for a per-key exponential backoff combined with a global token
  bucket (retry on failure without hammering Consul, Nomad or AWS).

Only what can block is async: every operation is sync except ``get()`` and
``shutdown_with_drain()``. There is no background task: delayed keys are moved into the queue
lazily, by whichever operation looks at the queue next, and a worker parked in ``get()`` sleeps on
the injected :class:`~reconciler.ratelimit.Clock` no longer than until the earliest delayed key is
due. Tests drive time with :class:`reconciler.testing.ManualClock` instead of sleeping.

Metrics carry client-go's names and meanings, labelled ``name=<queue name>``. The counters and
histograms are updated on the hot path through label children cached once; ``workqueue_depth``,
``workqueue_unfinished_work_seconds`` and ``workqueue_longest_running_processor_seconds`` are
computed when Prometheus scrapes (gauge functions), so they cost nothing per operation and are never
stale.
"""

from __future__ import annotations

import heapq
import itertools
import math
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.lowlevel

from reconciler import metrics as m
from reconciler.ratelimit import SYSTEM_CLOCK, Clock, SystemClock, TokenBucket

__all__ = [
    "BucketRateLimiter",
    "ItemExponentialFailureRateLimiter",
    "MaxOfRateLimiter",
    "QueueShutDown",
    "QueueStatistics",
    "RateLimiter",
    "WorkQueue",
    "default_rate_limiter",
]

DEFAULT_BASE_DELAY = 0.005
DEFAULT_MAX_DELAY = 300.0
DEFAULT_QPS = 10.0
DEFAULT_BURST = 100


class QueueShutDown(Exception):
    """Raised by ``get()`` once the queue is shut down and holds no more ready keys.

    It is the normal way for a worker loop to end, not an error.
    """


# --------------------------------------------------------------------------- rate limiters


class RateLimiter(Protocol):
    """How long a key should wait before its next attempt (client-go's ``RateLimiter``)."""

    def when(self, key: str) -> float:
        """Record one more failure of ``key`` and return the delay in seconds before a retry."""
        ...

    def forget(self, key: str) -> None:
        """Stop tracking ``key`` (it succeeded, or will never be retried)."""
        ...

    def num_requeues(self, key: str) -> int:
        """How many failures of ``key`` are being tracked."""
        ...


class ItemExponentialFailureRateLimiter:
    """Per-key exponential backoff: ``min(max_delay, base_delay * 2**failures)``.

    No jitter, as in client-go: the global token bucket is what spreads a burst of retries out.
    """

    def __init__(
        self, base_delay: float = DEFAULT_BASE_DELAY, max_delay: float = DEFAULT_MAX_DELAY
    ) -> None:
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._failures: dict[str, int] = {}
        # Past this exponent the delay is always capped; stop the float from growing to inf.
        self._max_exponent = math.ceil(math.log2(max_delay / base_delay)) + 1

    def when(self, key: str) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        return min(self.max_delay, self.base_delay * 2.0 ** min(failures, self._max_exponent))

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)


class BucketRateLimiter:
    """A global token bucket shared by every key: bounds the overall retry rate."""

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket

    def when(self, key: str) -> float:
        return self.bucket.reserve()

    def forget(self, key: str) -> None:
        pass

    def num_requeues(self, key: str) -> int:
        return 0


class MaxOfRateLimiter:
    """Asks every limiter and waits for the slowest (client-go's ``MaxOfRateLimiter``)."""

    def __init__(self, *limiters: RateLimiter) -> None:
        if not limiters:
            raise ValueError("MaxOfRateLimiter needs at least one limiter")
        self.limiters = limiters

    def when(self, key: str) -> float:
        # Every limiter must see the failure (the bucket spends a token, the backoff counts it).
        return max([limiter.when(key) for limiter in self.limiters])

    def forget(self, key: str) -> None:
        for limiter in self.limiters:
            limiter.forget(key)

    def num_requeues(self, key: str) -> int:
        return max(limiter.num_requeues(key) for limiter in self.limiters)


def default_rate_limiter(
    clock: Clock = SYSTEM_CLOCK,
    *,
    base_delay: float = DEFAULT_BASE_DELAY,
    max_delay: float = DEFAULT_MAX_DELAY,
    qps: float = DEFAULT_QPS,
    burst: int = DEFAULT_BURST,
) -> RateLimiter:
    """client-go's ``DefaultControllerRateLimiter``: 5 ms..5 min per key, 10 qps (burst 100)."""
    return MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(base_delay, max_delay),
        BucketRateLimiter(TokenBucket(rate=qps, burst=burst, clock=clock)),
    )


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    """A snapshot of a queue, for health endpoints, logs and tests."""

    name: str | None
    #: Keys added and not yet handed out, including keys re-added while in flight
    #: (what ``workqueue_depth`` reports, as in client-go).
    depth: int
    #: Keys ``get()`` can hand out right now (``len(queue)``).
    ready: int
    #: Keys handed out whose ``done()`` has not been called yet.
    processing: int
    #: Keys in flight that were added again and will be handed out again after ``done()``.
    dirty: int
    #: Keys parked by ``add_after`` / ``add_rate_limited`` and not yet due.
    waiting: int
    #: Workers currently parked in ``get()``.
    waiting_workers: int
    #: Keys accepted into the queue since it was created (``workqueue_adds_total``).
    adds: int
    #: Delayed adds since it was created (``workqueue_retries_total``).
    retries: int
    #: Seconds the oldest key in flight has been processed for (0 when idle).
    longest_running: float
    #: Seconds of in-flight work not yet observed by ``done()``, summed over keys.
    unfinished_work: float
    shutting_down: bool


# --------------------------------------------------------------------------- the queue


class WorkQueue:
    """A rate-limited, delaying, de-duplicating FIFO of string keys.

    A worker loop::

        while True:
            try:
                key = await queue.get()
            except QueueShutDown:
                return
            try:
                await reconcile(key)
            except TemporaryError:
                queue.add_rate_limited(key)
            else:
                queue.forget(key)
            finally:
                queue.done(key)

    ``name`` labels the Prometheus series; with ``name=None`` or ``metrics=False`` the queue
    records no metrics. ``clock`` drives delays, backoff and durations; ``rate_limiter`` defaults
    to :func:`default_rate_limiter` on the same clock.

    Shutting down (``shutdown()`` or ``shutdown_with_drain()``) follows client-go: later adds are
    ignored, delayed keys are dropped, keys already ready are still handed out, keys in flight
    that were re-added are still re-queued by ``done()``, and ``get()`` raises
    :class:`QueueShutDown` once nothing is ready.

    Not thread-safe, like everything bound to one event loop: code running in a worker thread adds
    keys through ``anyio.from_thread.run_sync(queue.add, key)``.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rate_limiter: RateLimiter | None = None,
        metrics: bool = True,
    ) -> None:
        self.name = name
        self._clock = clock
        self._now: Callable[[], float] = clock.monotonic
        # Only the system clock runs in step with the event loop's own timer, which lets a parked
        # get() use a cancel scope deadline instead of a helper task racing clock.sleep().
        self._clock_is_loop_time = isinstance(clock, SystemClock)
        self.rate_limiter: RateLimiter = (
            default_rate_limiter(clock) if rate_limiter is None else rate_limiter
        )

        self._queue: deque[str] = deque()
        # Background keys (a resync's): handed out only when no other key is ready, so a
        # periodic resync of every key never delays a key some change asked for. ``_low`` holds
        # the background keys still waiting; the deque may also hold keys since promoted (or
        # handed out), skipped when popped.
        self._background: deque[str] = deque()
        self._low: set[str] = set()
        # In-flight keys added again in the background: queued there by done().
        self._low_later: set[str] = set()
        # Every key added and not yet handed out: the ready keys plus the in-flight keys that
        # were added again. Membership is the de-duplication test.
        self._dirty: set[str] = set()
        # In-flight key -> when it was handed out.
        self._processing: dict[str, float] = {}
        # Delayed keys: a heap of (ready_at, seq, key) entries plus, per key, the entry that
        # counts. An entry replaced by an earlier one stays in the heap and is skipped when popped.
        self._heap: list[tuple[float, int, str]] = []
        self._waiting: dict[str, tuple[float, int, str]] = {}
        self._seq = itertools.count()
        # Parked get() calls, oldest first; each is woken for at most one key.
        self._waiters: deque[anyio.Event] = deque()
        self._drained: anyio.Event | None = None
        self._shutting_down = False
        self._adds = 0
        self._retries = 0

        self._metrics = False
        # Key -> when it was added, for workqueue_queue_duration_seconds; kept only with metrics.
        self._added_at: dict[str, float] = {}
        if metrics and name is not None:
            self._metrics = True
            m.init_workqueue(name)
            self._m_adds = m.WORKQUEUE_ADDS.labels(name=name, controller=name)
            self._m_retries = m.WORKQUEUE_RETRIES.labels(name=name, controller=name)
            self._m_queue_duration = m.WORKQUEUE_QUEUE_DURATION.labels(name=name, controller=name)
            self._m_work_duration = m.WORKQUEUE_WORK_DURATION.labels(name=name, controller=name)
            # A weak reference: the global registry must not keep a discarded queue alive.
            ref = weakref.ref(self)

            def on_scrape(read: Callable[[WorkQueue], float]) -> Callable[[], float]:
                def sample() -> float:
                    queue = ref()
                    return 0.0 if queue is None else read(queue)

                return sample

            m.WORKQUEUE_DEPTH.labels(name=name, controller=name).set_function(
                on_scrape(lambda q: float(len(q._dirty)))
            )
            m.WORKQUEUE_UNFINISHED_WORK.labels(name=name, controller=name).set_function(
                on_scrape(lambda q: q._unfinished_work(q._now()))
            )
            m.WORKQUEUE_LONGEST_RUNNING.labels(name=name, controller=name).set_function(
                on_scrape(lambda q: q._longest_running(q._now()))
            )

    # ----------------------------------------------------------------- adding

    def add(self, key: str, *, background: bool = False) -> None:
        """Queue ``key`` unless it is already waiting; ignored once shut down.

        A ``background`` key (a periodic resync's) waits behind every other ready key; adding
        a key that waits in the background without ``background`` moves it to the front line.
        """
        if self._heap:
            self._promote_due()
        if self._shutting_down:
            return
        if key in self._dirty:
            if not background:
                if key in self._low:
                    self._low.discard(key)
                    self._queue.append(key)
                else:
                    self._low_later.discard(key)
            return
        self._accept(key, background=background)

    def _accept(self, key: str, *, background: bool = False) -> None:
        self._adds += 1
        if self._metrics:
            self._m_adds.inc()
            self._added_at[key] = self._now()
        self._dirty.add(key)
        if key in self._processing:
            if background:
                self._low_later.add(key)
            return
        if background:
            self._low.add(key)
            self._background.append(key)
        else:
            self._queue.append(key)
        if self._waiters:
            self._waiters.popleft().set()

    def add_after(self, key: str, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds; if it is already parked, the earlier time wins."""
        if self._shutting_down:
            return
        self._retries += 1
        if self._metrics:
            self._m_retries.inc()
        if delay <= 0:
            self.add(key)
            return
        ready_at = self._now() + delay
        current = self._waiting.get(key)
        if current is not None and current[0] <= ready_at:
            return
        entry = (ready_at, next(self._seq), key)
        self._waiting[key] = entry
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry and self._waiters:
            # A parked worker may be sleeping until a later deadline: wake one to look again.
            self._waiters.popleft().set()

    def add_rate_limited(self, key: str) -> None:
        """Queue ``key`` after the delay the rate limiter gives it (one more failure of ``key``)."""
        if self._shutting_down:
            return
        self.add_after(key, self.rate_limiter.when(key))

    def forget(self, key: str) -> None:
        """Reset the failure count of ``key`` (call it when a reconcile succeeds)."""
        self.rate_limiter.forget(key)

    def num_requeues(self, key: str) -> int:
        """How many times in a row ``key`` has been rate-limited since it was last forgotten."""
        return self.rate_limiter.num_requeues(key)

    def _promote_due(self) -> None:
        heap = self._heap
        now = self._now()
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            key = entry[2]
            if self._waiting.get(key) is entry:
                del self._waiting[key]
                if not self._shutting_down and key not in self._dirty:
                    self._accept(key)

    # ----------------------------------------------------------------- taking

    def get_nowait(self) -> str:
        """Hand out the oldest ready key, marking it in flight.

        Raises :class:`anyio.WouldBlock` when no key is ready, and :class:`QueueShutDown` when
        none is ready and the queue is shut down.
        """
        if self._heap:
            self._promote_due()
        key = self._next_ready()
        if key is None:
            if self._shutting_down:
                raise QueueShutDown(self.name)
            raise anyio.WouldBlock
        self._dirty.discard(key)
        now = self._now()
        self._processing[key] = now
        if self._metrics:
            added_at = self._added_at.pop(key, None)
            if added_at is not None:
                self._m_queue_duration.observe(now - added_at)
        return key

    def _next_ready(self) -> str | None:
        """The oldest ready key, background keys only when no other is ready."""
        if self._queue:
            return self._queue.popleft()
        background, low = self._background, self._low
        while background:
            key = background.popleft()
            if key in low:
                low.discard(key)
                return key
        return None

    def _ready(self) -> int:
        return len(self._queue) + len(self._low)

    async def get(self) -> str:
        """Wait for a ready key and hand it out, marking it in flight.

        Always a checkpoint (it yields to other tasks even when a key is ready, so a worker loop
        cannot starve the event loop). Raises :class:`QueueShutDown` once the queue is shut down
        and nothing is ready.
        """
        await anyio.lowlevel.checkpoint()
        parked = False
        try:
            while True:
                try:
                    return self.get_nowait()
                except anyio.WouldBlock:
                    pass
                parked = True
                waiter = anyio.Event()
                self._waiters.append(waiter)
                try:
                    await self._wait(waiter, self._until_next_due())
                finally:
                    if not waiter.is_set():
                        self._waiters.remove(waiter)
        finally:
            # A parked worker that leaves (with a key, cancelled, or shut down) may have been the
            # one woken for a ready key, or the one sleeping until the next delayed key is due:
            # wake another parked worker to take over, or that key would sit unnoticed.
            if parked and self._waiters and (self._queue or self._low or self._heap):
                self._waiters.popleft().set()

    def _until_next_due(self) -> float | None:
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - self._now())

    async def _wait(self, event: anyio.Event, timeout: float | None) -> None:
        """Wait for ``event``, or ``timeout`` seconds of the queue's clock, whichever is first."""
        if timeout is None:
            await event.wait()
        elif self._clock_is_loop_time:
            with anyio.move_on_after(timeout):
                await event.wait()
        else:
            async with anyio.create_task_group() as tg:

                async def alarm() -> None:
                    await self._clock.sleep(timeout)
                    tg.cancel_scope.cancel()

                tg.start_soon(alarm)
                await event.wait()
                tg.cancel_scope.cancel()

    def done(self, key: str) -> None:
        """Mark ``key`` no longer in flight; if it was added meanwhile, queue it again.

        Calling it for a key that is not in flight does nothing, so it is safe in a ``finally``.
        """
        started = self._processing.pop(key, None)
        if started is None:
            return
        if self._metrics:
            self._m_work_duration.observe(self._now() - started)
        if key in self._dirty:
            # Added while in flight: its turn now. (Before promoting delayed keys: a retry of
            # this very key that just came due must not queue it a second time.)
            if key in self._low_later:
                self._low_later.discard(key)
                self._low.add(key)
                self._background.append(key)
            else:
                self._queue.append(key)
            if self._waiters:
                self._waiters.popleft().set()
        if self._heap:
            self._promote_due()
        if self._drained is not None and not self._processing and not self._ready():
            self._drained.set()

    # ----------------------------------------------------------------- shutting down

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def shutdown(self, *, discard_ready: bool = False) -> None:
        """Refuse new keys, drop delayed ones, and make idle ``get()`` calls raise.

        ``discard_ready`` also drops the keys that are ready but not handed out yet, so only
        what is in flight remains (a stopping controller: the next leader resyncs everything).
        """
        self._shutting_down = True
        self._heap.clear()
        self._waiting.clear()
        if discard_ready:
            self._queue.clear()
            self._background.clear()
            self._low.clear()
            self._low_later.clear()
            self._dirty.clear()
            self._added_at.clear()
        # Every parked worker re-checks: those that find nothing ready raise QueueShutDown.
        while self._waiters:
            self._waiters.popleft().set()

    async def shutdown_with_drain(
        self, timeout: float | None = None, *, discard_ready: bool = False
    ) -> bool:
        """Shut down, then wait until nothing is ready or in flight, at most ``timeout`` seconds.

        Workers must keep calling ``get()`` and ``done()`` meanwhile: draining means they finish
        what was already queued, including keys re-added while in flight (with
        ``discard_ready``: only what is in flight). Returns ``True`` once drained, ``False`` if
        the timeout ran out first (measured on the queue's clock).
        """
        self.shutdown(discard_ready=discard_ready)
        if not self._processing and not self._ready():
            await anyio.lowlevel.checkpoint()
            return True
        if self._drained is None:
            self._drained = anyio.Event()
        await self._wait(self._drained, timeout)
        return self._drained.is_set()

    # ----------------------------------------------------------------- observing

    def len(self) -> int:
        """How many keys are ready to be handed out now (client-go's ``Len()``)."""
        if self._heap:
            self._promote_due()
        return self._ready()

    def __len__(self) -> int:
        return self.len()

    def statistics(self) -> QueueStatistics:
        if self._heap:
            self._promote_due()
        now = self._now()
        return QueueStatistics(
            name=self.name,
            depth=len(self._dirty),
            ready=self._ready(),
            processing=len(self._processing),
            dirty=len(self._dirty) - self._ready(),
            waiting=len(self._waiting),
            waiting_workers=len(self._waiters),
            adds=self._adds,
            retries=self._retries,
            longest_running=self._longest_running(now),
            unfinished_work=self._unfinished_work(now),
            shutting_down=self._shutting_down,
        )

    # Both run on the scrape thread too: min()/sum() over a dict view run in C without releasing
    # the GIL, so they see a consistent dict while the event loop thread mutates it.
    def _longest_running(self, now: float) -> float:
        oldest = min(self._processing.values(), default=None)
        return 0.0 if oldest is None else now - oldest

    def _unfinished_work(self, now: float) -> float:
        # Clamped: with large monotonic readings the subtraction can round just below zero.
        return max(0.0, len(self._processing) * now - sum(self._processing.values()))
