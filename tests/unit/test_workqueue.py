"""The work queue's contract: client-go semantics, delays on an injected clock, metrics, drain."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import REGISTRY

from reconciler.ratelimit import TokenBucket
from reconciler.testing import ManualClock, take_ready
from reconciler.workqueue import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    QueueShutDown,
    WorkQueue,
    default_rate_limiter,
)

_names = itertools.count()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1000.0)


@pytest.fixture
def name() -> str:
    # Metrics live in the global registry: every queue gets its own label value.
    return f"test-workqueue-{next(_names)}"


@pytest.fixture
def queue(clock: ManualClock, name: str) -> WorkQueue:
    return WorkQueue(name, clock=clock)


def sample(metric: str, name: str) -> float | None:
    # controller-runtime labels work-queue series with both name and controller.
    return REGISTRY.get_sample_value(metric, {"name": name, "controller": name})


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


async def keys_until_shutdown(queue: WorkQueue) -> AsyncIterator[str]:
    """Each key a worker gets from ``queue``, until the queue shuts down."""
    while True:
        try:
            key = await queue.get()
        except QueueShutDown:
            return
        yield key


# --------------------------------------------------------------------------- basic semantics


def test_keys_come_out_in_fifo_order(queue: WorkQueue) -> None:
    for key in ("c", "a", "b"):
        queue.add(key)
    assert take_ready(queue) == ["c", "a", "b"]


def test_a_retry_that_comes_due_while_its_key_is_in_flight_is_queued_once(
    queue: WorkQueue, clock: ManualClock
) -> None:
    # Regression: done() used to promote the due retry (queueing the key) and then queue it
    # again because it was dirty, so the key was handed out twice (to two workers at once).
    queue.add("k")
    assert queue.get_nowait() == "k"
    queue.add_after("k", 0.005)
    clock.advance(0.01)  # due while still in flight
    queue.done("k")
    assert queue.get_nowait() == "k"
    with pytest.raises(anyio.WouldBlock):
        queue.get_nowait()
    queue.done("k")
    assert len(queue) == 0


def test_duplicate_adds_collapse(queue: WorkQueue) -> None:
    for key in ("a", "b", "a", "a", "b"):
        queue.add(key)
    assert queue.len() == len(queue) == 2
    assert take_ready(queue) == ["a", "b"]


def test_key_in_flight_is_not_handed_out_again_until_done(queue: WorkQueue) -> None:
    queue.add("a")
    assert queue.get_nowait() == "a"
    queue.add("a")
    queue.add("a")
    with pytest.raises(anyio.WouldBlock):
        queue.get_nowait()
    stats = queue.statistics()
    assert (stats.processing, stats.dirty, stats.ready, stats.depth) == (1, 1, 0, 1)
    queue.done("a")
    assert queue.get_nowait() == "a"
    queue.done("a")
    assert take_ready(queue) == []


def test_dirty_key_requeues_behind_keys_already_waiting(queue: WorkQueue) -> None:
    queue.add("a")
    assert queue.get_nowait() == "a"
    queue.add("a")
    queue.add("b")
    queue.done("a")
    assert take_ready(queue) == ["b", "a"]


def test_done_without_readd_does_not_requeue(queue: WorkQueue) -> None:
    queue.add("a")
    assert queue.get_nowait() == "a"
    queue.done("a")
    assert queue.len() == 0
    assert queue.statistics().processing == 0


def test_done_of_a_key_not_in_flight_is_a_no_op(queue: WorkQueue) -> None:
    queue.add("a")
    queue.done("a")  # waiting, not in flight
    queue.done("zzz")
    assert take_ready(queue) == ["a"]
    queue.done("a")  # twice
    assert queue.statistics().processing == 0


def test_get_nowait_on_an_empty_queue_would_block(queue: WorkQueue) -> None:
    with pytest.raises(anyio.WouldBlock):
        queue.get_nowait()


# --------------------------------------------------------------------------- async get


@pytest.mark.anyio
async def test_get_waits_for_an_add(queue: WorkQueue) -> None:
    got: list[str] = []
    async with anyio.create_task_group() as tg:

        async def worker() -> None:
            got.append(await queue.get())

        tg.start_soon(worker)
        await settle()
        assert got == []
        assert queue.statistics().waiting_workers == 1
        queue.add("a")
    assert got == ["a"]
    assert queue.statistics().waiting_workers == 0


@pytest.mark.anyio
async def test_get_returns_a_ready_key_at_once(queue: WorkQueue) -> None:
    queue.add("a")
    with anyio.fail_after(1):
        assert await queue.get() == "a"


@pytest.mark.anyio
async def test_parked_workers_each_get_a_distinct_key(queue: WorkQueue) -> None:
    got: list[str] = []
    async with anyio.create_task_group() as tg:

        async def worker() -> None:
            got.append(await queue.get())

        for _ in range(3):
            tg.start_soon(worker)
        await settle()
        for key in ("a", "b", "a", "c"):
            queue.add(key)
    assert sorted(got) == ["a", "b", "c"]
    assert queue.statistics().processing == 3


@pytest.mark.anyio
async def test_key_never_processed_by_two_workers_at_once(queue: WorkQueue) -> None:
    in_flight: set[str] = set()
    overlaps: list[str] = []
    handled: list[str] = []

    async def worker() -> None:
        async for key in keys_until_shutdown(queue):
            if key in in_flight:
                overlaps.append(key)
            in_flight.add(key)
            await anyio.lowlevel.checkpoint()
            queue.add(key if len(handled) < 200 else "other")  # re-added while in flight
            await anyio.lowlevel.checkpoint()
            in_flight.discard(key)
            handled.append(key)
            queue.done(key)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(worker)
        for key in ("a", "b", "c"):
            queue.add(key)
        with anyio.fail_after(5):
            while len(handled) < 300:
                await anyio.lowlevel.checkpoint()
        await queue.shutdown_with_drain(timeout=5)
    assert overlaps == []
    assert {"a", "b", "c"} <= set(handled)


@pytest.mark.anyio
async def test_cancelled_get_leaves_no_waiter_behind(queue: WorkQueue) -> None:
    with anyio.move_on_after(0.01):
        await queue.get()
    assert queue.statistics().waiting_workers == 0
    queue.add("a")
    assert queue.get_nowait() == "a"


@pytest.mark.anyio
async def test_a_woken_worker_that_is_cancelled_passes_the_key_on(queue: WorkQueue) -> None:
    got: list[str] = []
    async with anyio.create_task_group() as tg:
        first = anyio.CancelScope()

        async def cancelled_worker() -> None:
            with first:
                got.append(await queue.get())

        async def worker() -> None:
            got.append(await queue.get())

        tg.start_soon(cancelled_worker)
        await settle()
        tg.start_soon(worker)
        await settle()
        first.cancel()  # the first parked worker is being cancelled...
        queue.add("a")  # ...when the add wakes it: the key must reach the second one
        with anyio.fail_after(1):
            while not got:
                await anyio.lowlevel.checkpoint()
    assert got == ["a"]
    assert queue.statistics().waiting_workers == 0


# --------------------------------------------------------------------------- delays


def test_add_after_waits_for_the_clock(queue: WorkQueue, clock: ManualClock) -> None:
    queue.add_after("a", 10)
    assert queue.len() == 0
    assert queue.statistics().waiting == 1
    clock.advance(9.999)
    assert take_ready(queue) == []
    clock.advance(0.001)
    assert take_ready(queue) == ["a"]
    assert queue.statistics().waiting == 0


def test_add_after_without_delay_adds_at_once(queue: WorkQueue) -> None:
    queue.add_after("a", 0)
    queue.add_after("b", -1)
    assert take_ready(queue) == ["a", "b"]


def test_add_after_earliest_time_wins(queue: WorkQueue, clock: ManualClock) -> None:
    queue.add_after("a", 10)
    queue.add_after("a", 2)  # earlier: replaces
    queue.add_after("a", 5)  # later: ignored
    assert queue.statistics().waiting == 1
    clock.advance(2)
    assert take_ready(queue) == ["a"]
    clock.advance(20)
    assert take_ready(queue) == []  # the replaced entry does not fire again


def test_replaced_delayed_entry_does_not_fire_for_a_later_readd(
    queue: WorkQueue, clock: ManualClock
) -> None:
    queue.add_after("a", 10)
    queue.add_after("a", 1)  # replaces the entry due at 10
    clock.advance(1)
    assert take_ready(queue) == ["a"]
    queue.add_after("a", 10)  # due at 11: the replaced entry (due at 10) must not release it
    clock.advance(9.5)
    assert take_ready(queue) == []
    assert queue.statistics().waiting == 1
    clock.advance(0.5)
    assert take_ready(queue) == ["a"]


def test_delayed_keys_come_out_in_due_order(queue: WorkQueue, clock: ManualClock) -> None:
    queue.add_after("late", 3)
    queue.add_after("early", 1)
    queue.add_after("middle", 2)
    clock.advance(5)
    queue.add("direct")  # added after they fell due: behind them
    assert take_ready(queue) == ["early", "middle", "late", "direct"]


def test_delayed_key_already_waiting_collapses(queue: WorkQueue, clock: ManualClock) -> None:
    queue.add("a")
    queue.add_after("a", 1)
    clock.advance(1)
    assert take_ready(queue) == ["a"]


def test_delayed_key_due_while_in_flight_is_requeued_on_done(
    queue: WorkQueue, clock: ManualClock
) -> None:
    queue.add("a")
    assert queue.get_nowait() == "a"
    queue.add_after("a", 1)
    clock.advance(1)
    assert take_ready(queue) == []
    queue.done("a")
    assert take_ready(queue) == ["a"]


@pytest.mark.anyio
async def test_parked_get_wakes_when_a_delayed_key_is_due(
    queue: WorkQueue, clock: ManualClock
) -> None:
    got: list[str] = []
    async with anyio.create_task_group() as tg:

        async def worker() -> None:
            got.append(await queue.get())

        tg.start_soon(worker)
        await settle()
        queue.add_after("a", 10)
        await settle()
        assert clock.next_deadline == 1010.0  # the worker sleeps until exactly then
        clock.advance(9)
        await settle()
        assert got == []
        clock.advance(1)
    assert got == ["a"]


@pytest.mark.anyio
async def test_earlier_delayed_key_shortens_a_parked_get(
    queue: WorkQueue, clock: ManualClock
) -> None:
    got: list[str] = []
    async with anyio.create_task_group() as tg:

        async def worker() -> None:
            got.append(await queue.get())

        queue.add_after("late", 100)
        tg.start_soon(worker)
        await settle()
        queue.add_after("soon", 1)
        await settle()
        clock.advance(1)
    assert got == ["soon"]


@pytest.mark.anyio
async def test_every_parked_worker_sees_delayed_keys_in_turn(
    queue: WorkQueue, clock: ManualClock
) -> None:
    got: list[str] = []
    async with anyio.create_task_group() as tg:

        async def worker() -> None:
            got.append(await queue.get())

        for _ in range(3):
            tg.start_soon(worker)
        await settle()
        for i, key in enumerate(("a", "b", "c")):
            queue.add_after(key, i + 1)
        for _ in range(3):
            await settle()
            clock.advance(1)
    assert got == ["a", "b", "c"]


@pytest.mark.anyio
async def test_add_after_with_the_system_clock(name: str) -> None:
    queue = WorkQueue(name)
    queue.add_after("a", 0.02)
    with anyio.fail_after(2):
        started = anyio.current_time()
        assert await queue.get() == "a"
    assert anyio.current_time() - started >= 0.015


# --------------------------------------------------------------------------- rate limiting


def test_exponential_backoff_per_key() -> None:
    limiter = ItemExponentialFailureRateLimiter(base_delay=0.005, max_delay=1.0)
    delays = [limiter.when("a") for _ in range(10)]
    assert delays == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]
    assert limiter.when("b") == 0.005
    assert limiter.num_requeues("a") == 10
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0
    assert limiter.when("a") == 0.005


def test_exponential_backoff_stays_finite_after_many_failures() -> None:
    limiter = ItemExponentialFailureRateLimiter(base_delay=0.005, max_delay=300)
    for _ in range(5000):
        delay = limiter.when("a")
    assert delay == 300


def test_token_bucket_limits_retries_across_keys(clock: ManualClock) -> None:
    limiter = MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(0.005, 300),
        BucketRateLimiter(TokenBucket(rate=10, burst=100, clock=clock)),
    )
    delays = [limiter.when(f"key-{i}") for i in range(102)]
    assert delays[:100] == [0.005] * 100  # the burst: only the per-key backoff applies
    assert delays[100] == pytest.approx(0.1)  # then 10 per second overall
    assert delays[101] == pytest.approx(0.2)
    assert limiter.num_requeues("key-0") == 1


def test_add_rate_limited_backs_off_and_forget_resets(name: str, clock: ManualClock) -> None:
    queue = WorkQueue(name, clock=clock, rate_limiter=default_rate_limiter(clock))
    for failures, delay in enumerate((0.005, 0.01, 0.02)):
        assert queue.num_requeues("a") == failures
        queue.add_rate_limited("a")
        clock.advance(delay * 0.99)
        assert take_ready(queue) == []
        clock.advance(delay * 0.02)
        assert take_ready(queue) == ["a"]
    assert queue.num_requeues("a") == 3
    queue.forget("a")
    assert queue.num_requeues("a") == 0
    queue.add_rate_limited("a")
    clock.advance(0.005)
    assert take_ready(queue) == ["a"]


def test_backoff_cap_is_configurable(name: str, clock: ManualClock) -> None:
    limiter = default_rate_limiter(clock, max_delay=0.05)
    queue = WorkQueue(name, clock=clock, rate_limiter=limiter)
    for _ in range(10):
        queue.add_rate_limited("a")
        clock.advance(0.05)
        assert take_ready(queue) == ["a"]
    assert queue.num_requeues("a") == 10


def test_rate_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        ItemExponentialFailureRateLimiter(base_delay=0)
    with pytest.raises(ValueError):
        ItemExponentialFailureRateLimiter(base_delay=2, max_delay=1)
    with pytest.raises(ValueError):
        MaxOfRateLimiter()


# --------------------------------------------------------------------------- shutdown


def test_adds_after_shutdown_are_ignored(queue: WorkQueue, clock: ManualClock) -> None:
    queue.add_after("delayed", 1)
    queue.shutdown()
    assert queue.shutting_down
    queue.add("a")
    queue.add_after("b", 0)
    queue.add_after("c", 1)
    queue.add_rate_limited("d")
    clock.advance(10)
    assert queue.num_requeues("d") == 0
    stats = queue.statistics()
    assert (stats.depth, stats.waiting, stats.adds, stats.shutting_down) == (0, 0, 0, True)
    with pytest.raises(QueueShutDown):
        queue.get_nowait()


def test_ready_keys_are_still_handed_out_after_shutdown(queue: WorkQueue) -> None:
    queue.add("a")
    queue.add("b")
    assert queue.get_nowait() == "a"
    queue.add("a")
    queue.shutdown()
    assert queue.get_nowait() == "b"
    with pytest.raises(QueueShutDown):
        queue.get_nowait()
    queue.done("a")  # re-added before shutdown: still handed out again
    assert queue.get_nowait() == "a"
    queue.done("a")
    with pytest.raises(QueueShutDown):
        queue.get_nowait()


@pytest.mark.anyio
async def test_shutdown_releases_every_parked_worker(queue: WorkQueue) -> None:
    ended: list[str] = []

    async def worker(n: int) -> None:
        try:
            await queue.get()
        except QueueShutDown:
            ended.append(f"worker-{n}")

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(worker, n)
        await settle()
        queue.shutdown()
    assert sorted(ended) == ["worker-0", "worker-1", "worker-2"]


@pytest.mark.anyio
async def test_shutdown_with_drain_waits_for_work_in_flight(
    queue: WorkQueue, clock: ManualClock
) -> None:
    handled: list[str] = []
    release = anyio.Event()

    async def worker() -> None:
        async for key in keys_until_shutdown(queue):
            await release.wait()
            handled.append(key)
            queue.done(key)

    for key in ("a", "b"):
        queue.add(key)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await settle()
        drained: list[bool] = []

        async def drain() -> None:
            drained.append(await queue.shutdown_with_drain(timeout=30))

        tg.start_soon(drain)
        await settle()
        queue.add("refused")
        assert drained == []
        release.set()
    assert drained == [True]
    assert handled == ["a", "b"]


@pytest.mark.anyio
async def test_shutdown_with_drain_gives_up_after_the_timeout(
    queue: WorkQueue, clock: ManualClock
) -> None:
    queue.add("a")
    assert queue.get_nowait() == "a"  # and never done
    async with anyio.create_task_group() as tg:
        drained: list[bool] = []

        async def drain() -> None:
            drained.append(await queue.shutdown_with_drain(timeout=5))

        tg.start_soon(drain)
        await settle()
        clock.advance(4)
        await settle()
        assert drained == []
        clock.advance(1)
    assert drained == [False]
    assert queue.shutting_down


@pytest.mark.anyio
async def test_shutdown_with_drain_on_an_idle_queue_returns_at_once(queue: WorkQueue) -> None:
    with anyio.fail_after(1):
        assert await queue.shutdown_with_drain(timeout=10) is True


@pytest.mark.anyio
async def test_shutdown_with_drain_real_clock(name: str) -> None:
    queue = WorkQueue(name)
    queue.add("a")
    assert queue.get_nowait() == "a"
    with anyio.fail_after(2):
        assert await queue.shutdown_with_drain(timeout=0.02) is False


# --------------------------------------------------------------------------- metrics


def test_metrics_follow_client_go(queue: WorkQueue, name: str, clock: ManualClock) -> None:
    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert sample("workqueue_adds_total", name) == 2
    assert sample("workqueue_depth", name) == 2
    clock.advance(0.5)
    assert queue.get_nowait() == "a"
    assert sample("workqueue_depth", name) == 1
    assert sample("workqueue_queue_duration_seconds_count", name) == 1
    assert sample("workqueue_queue_duration_seconds_sum", name) == 0.5
    queue.add("a")  # dirty while in flight: counted in depth, as client-go does
    assert sample("workqueue_depth", name) == 2
    clock.advance(2)
    assert sample("workqueue_unfinished_work_seconds", name) == 2
    assert sample("workqueue_longest_running_processor_seconds", name) == 2
    queue.done("a")
    assert sample("workqueue_work_duration_seconds_count", name) == 1
    assert sample("workqueue_work_duration_seconds_sum", name) == 2
    assert sample("workqueue_unfinished_work_seconds", name) == 0
    assert sample("workqueue_longest_running_processor_seconds", name) == 0
    queue.add_rate_limited("c")
    queue.add_after("d", 1)
    assert sample("workqueue_retries_total", name) == 2
    assert sample("workqueue_adds_total", name) == 3  # delayed keys count when they are due
    clock.advance(1)
    assert queue.len() == 4
    assert sample("workqueue_adds_total", name) == 5


def test_unfinished_work_sums_every_key_in_flight(
    queue: WorkQueue, name: str, clock: ManualClock
) -> None:
    queue.add("a")
    queue.add("b")
    queue.get_nowait()
    clock.advance(3)
    queue.get_nowait()
    clock.advance(1)
    assert sample("workqueue_unfinished_work_seconds", name) == 5
    assert sample("workqueue_longest_running_processor_seconds", name) == 4
    stats = queue.statistics()
    assert (stats.unfinished_work, stats.longest_running) == (5, 4)


def test_series_exist_before_any_event(queue: WorkQueue, name: str) -> None:
    for metric in (
        "workqueue_adds_total",
        "workqueue_retries_total",
        "workqueue_depth",
        "workqueue_unfinished_work_seconds",
        "workqueue_longest_running_processor_seconds",
        "workqueue_queue_duration_seconds_count",
        "workqueue_work_duration_seconds_count",
    ):
        assert sample(metric, name) == 0, metric


@pytest.mark.parametrize("kwargs", [{"metrics": False}, {}])
def test_metrics_can_be_turned_off(kwargs: dict[str, bool], clock: ManualClock) -> None:
    name = f"test-workqueue-off-{next(_names)}"
    queue = WorkQueue(name if kwargs else None, clock=clock, **kwargs)
    queue.add("a")
    queue.done(queue.get_nowait())
    queue.add_rate_limited("a")
    assert sample("workqueue_adds_total", name) is None
    assert queue.statistics().adds == 1  # statistics are kept either way


def test_a_discarded_queue_is_not_kept_alive_by_its_metrics(name: str) -> None:
    import gc
    import weakref

    queue = WorkQueue(name)
    queue.add("a")
    ref = weakref.ref(queue)
    del queue
    gc.collect()
    assert ref() is None
    assert sample("workqueue_depth", name) == 0


# --------------------------------------------------------------------------- statistics


def test_statistics_snapshot(queue: WorkQueue, clock: ManualClock) -> None:
    for key in ("a", "b", "c"):
        queue.add(key)
    queue.add_after("d", 5)
    queue.add_rate_limited("e")
    assert queue.get_nowait() == "a"
    queue.add("a")
    clock.advance(1)
    stats = queue.statistics()
    assert stats.name == queue.name
    assert stats.ready == 3  # b, c and e (due after 5 ms)
    assert stats.processing == 1
    assert stats.dirty == 1
    assert stats.depth == 4
    assert stats.waiting == 1
    assert stats.adds == 5  # a, b, c, e, and a again while in flight
    assert stats.retries == 2
    assert stats.longest_running == 1
    assert stats.shutting_down is False
    with pytest.raises(AttributeError):
        stats.depth = 0  # type: ignore[misc]


# --------------------------------------------------------------------------- ManualClock


@pytest.mark.anyio
async def test_manual_clock_sleep_resolves_only_when_advanced(clock: ManualClock) -> None:
    woke: list[float] = []
    async with anyio.create_task_group() as tg:

        async def sleeper(seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append(clock.monotonic())

        tg.start_soon(sleeper, 2)
        tg.start_soon(sleeper, 1)
        await settle()
        assert clock.sleepers == 2
        assert clock.next_deadline == 1001
        clock.advance(0.5)
        await settle()
        assert woke == []
        assert clock.jump_to_next()
        await settle()
        assert woke == [1001]
        clock.advance(5)
    assert woke == [1001, 1006]
    assert not clock.jump_to_next()


@pytest.mark.anyio
async def test_manual_clock_forgets_cancelled_sleepers(clock: ManualClock) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await clock.sleep(5)
    assert clock.sleepers == 0
    await clock.sleep(0)  # a checkpoint only
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_take_ready_can_leave_keys_in_flight(queue: WorkQueue) -> None:
    queue.add("a")
    assert take_ready(queue, done=False) == ["a"]
    assert queue.statistics().processing == 1


# --------------------------------------------------------------------------- background keys


def test_background_keys_wait_behind_every_other_ready_key(queue: WorkQueue, name: str) -> None:
    """A resync queues every key in the background: a change arriving after it is served
    first, so 1,000 resynced users never delay the one that just changed."""
    for key in ("r1", "r2", "r3"):
        queue.add(key, background=True)
    queue.add("changed")
    assert len(queue) == 4
    assert sample("workqueue_depth", name) == 4
    assert take_ready(queue) == ["changed", "r1", "r2", "r3"]
    assert len(queue) == 0


def test_a_change_moves_its_background_key_to_the_front_once(queue: WorkQueue) -> None:
    for key in ("r1", "r2", "r3"):
        queue.add(key, background=True)
    queue.add("other")
    queue.add("r3")  # r3 changed: in line with other changes now, and only once
    queue.add("r2", background=True)  # still queued: nothing changes
    assert take_ready(queue) == ["other", "r3", "r1", "r2"]
    assert len(queue) == 0


def test_a_key_in_flight_added_in_the_background_comes_back_in_the_background(
    queue: WorkQueue,
) -> None:
    queue.add("busy")
    assert queue.get_nowait() == "busy"
    queue.add("busy", background=True)
    queue.add("fresh")
    queue.done("busy")
    assert take_ready(queue) == ["fresh", "busy"]
    # ... unless a change asks for it meanwhile.
    queue.add("busy2")
    assert queue.get_nowait() == "busy2"
    queue.add("busy2", background=True)
    queue.add("busy2")
    queue.add("later")
    queue.done("busy2")
    assert take_ready(queue) == ["later", "busy2"]


@pytest.mark.anyio
async def test_draining_waits_for_background_keys_too(queue: WorkQueue) -> None:
    queue.add("bg", background=True)
    assert not queue.shutting_down
    seen: list[str] = []

    async def worker() -> None:
        async for key in keys_until_shutdown(queue):
            seen.append(key)
            queue.done(key)

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        assert await queue.shutdown_with_drain(timeout=5)
    assert seen == ["bg"]
