"""The controller runner: the result contract, key mapping, concurrency and shutdown."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import REGISTRY

from reconciler.clients.errors import ConfigError
from reconciler.controller import (
    Context,
    Controller,
    ControllerRunner,
    Dependencies,
    Watch,
    constant_key,
    strip_prefix,
)
from reconciler.result import InvalidValue, Result, TemporaryError, TerminalError
from reconciler.sources.memory import MemorySource

pytestmark = pytest.mark.anyio

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def sample(metric: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(metric, labels)
    return 0.0 if value is None else value


class Harness:
    """One controller over a MemorySource, running in a task group."""

    def __init__(self, reconcile: Callable, **kwargs: object) -> None:
        self.source = MemorySource("items")
        self.name = unique("ctl")
        to_keys = kwargs.pop("to_keys", None)
        watch = Watch(
            "items", lambda deps: self.source, **({"to_keys": to_keys} if to_keys else {})
        )
        self.spec = Controller(
            name=self.name,
            reconcile=reconcile,
            watches=[watch],
            needs_leadership=False,
            status=False,  # no Consul here; status entries are tested against a real one
            **kwargs,  # type: ignore[arg-type]
        )
        self.runner = ControllerRunner(self.spec, Dependencies(consul=None))

    def count(self, result: str) -> float:
        return sample("controller_runtime_reconcile_total", controller=self.name, result=result)


@pytest.fixture
async def run_harness() -> AsyncIterator[Callable[[Harness], object]]:
    async with anyio.create_task_group() as tg:

        async def start(h: Harness) -> None:
            tg.start_soon(h.runner.run)
            await h.source.wait_ready()

        yield start
        tg.cancel_scope.cancel()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.005)


async def test_success_is_counted_and_not_retried(run_harness) -> None:
    seen: list[str] = []

    async def reconcile(ctx: Context, key: str) -> None:
        assert ctx.controller == h.name
        assert len(ctx.reconcile_id) == 16
        seen.append(key)

    h = Harness(reconcile)
    h.source.set("a", 1)
    await run_harness(h)
    await eventually(lambda: h.count("success") == 1)
    await anyio.sleep(0.05)
    assert seen == ["a"]
    assert h.runner.queue.num_requeues("a") == 0


async def test_temporary_error_backs_off_then_succeeds(run_harness) -> None:
    attempts = Counter[str]()

    async def reconcile(ctx: Context, key: str) -> None:
        attempts[key] += 1
        if attempts[key] < 3:
            raise TemporaryError("not yet")

    h = Harness(reconcile)
    h.source.set("k", 1)
    await run_harness(h)
    await eventually(lambda: h.count("success") == 1)
    assert attempts["k"] == 3
    assert h.count("error") == 2
    assert sample("controller_runtime_reconcile_errors_total", controller=h.name) == 2
    assert sample("workqueue_retries_total", name=h.name, controller=h.name) == 2
    # success forgets the failures, so the next failure starts from the base delay again
    assert h.runner.queue.num_requeues("k") == 0


async def test_temporary_error_with_delay_waits_that_long(run_harness) -> None:
    times: list[float] = []

    async def reconcile(ctx: Context, key: str) -> None:
        times.append(anyio.current_time())
        if len(times) == 1:
            raise TemporaryError("come back later", delay=0.2)

    h = Harness(reconcile)
    h.source.set("k", 1)
    await run_harness(h)
    await eventually(lambda: len(times) == 2)
    assert times[1] - times[0] >= 0.19


async def test_terminal_error_is_not_retried(run_harness) -> None:
    calls = Counter[str]()

    async def reconcile(ctx: Context, key: str) -> None:
        calls[key] += 1
        raise TerminalError("never going to work")

    h = Harness(reconcile)
    h.source.set("bad", 1)
    await run_harness(h)
    await eventually(lambda: h.count("error") == 1)
    await anyio.sleep(0.1)
    assert calls["bad"] == 1
    assert sample("controller_runtime_terminal_reconcile_errors_total", controller=h.name) == 1
    # a change of the item runs it again: terminal means "not retried", not "ignored forever"
    h.source.set("bad", 2)
    await eventually(lambda: calls["bad"] == 2)


async def test_invalid_value_is_counted_by_kind(run_harness) -> None:
    async def reconcile(ctx: Context, key: str) -> None:
        raise InvalidValue("not JSON", kind="malformed-json", key=key)

    h = Harness(reconcile)
    h.source.set("x", 1)
    await run_harness(h)
    await eventually(lambda: h.count("error") == 1)
    labels = {"controller": h.name, "kind": "malformed-json"}
    assert sample("reconciler_invalid_input_total", **labels) == 1


async def test_unexpected_exception_is_retried_and_never_kills_the_runner(run_harness) -> None:
    calls = Counter[str]()

    async def reconcile(ctx: Context, key: str) -> None:
        calls[key] += 1
        if key == "boom" and calls[key] == 1:
            raise ZeroDivisionError("bug")

    h = Harness(reconcile)
    h.source.set("boom", 1)
    await run_harness(h)
    await eventually(lambda: calls["boom"] == 2)
    assert sample("controller_runtime_reconcile_panics_total", controller=h.name) == 1
    # the runner still serves other keys
    h.source.set("other", 1)
    await eventually(lambda: calls["other"] == 1)


async def test_requeue_after_runs_again(run_harness) -> None:
    calls: list[float] = []

    async def reconcile(ctx: Context, key: str) -> Result:
        calls.append(anyio.current_time())
        return Result(requeue_after=0.1) if len(calls) < 3 else Result()

    h = Harness(reconcile)
    h.source.set("p", 1)
    await run_harness(h)
    await eventually(lambda: len(calls) == 3)
    assert calls[2] - calls[0] >= 0.19
    assert h.count("requeue_after") == 2
    assert h.count("success") == 1


async def test_requeue_goes_through_the_rate_limiter(run_harness) -> None:
    calls: list[str] = []

    async def reconcile(ctx: Context, key: str) -> Result:
        calls.append(key)
        return Result(requeue=len(calls) < 2)

    h = Harness(reconcile)
    h.source.set("r", 1)
    await run_harness(h)
    await eventually(lambda: len(calls) == 2)
    assert h.count("requeue") == 1


async def test_timeout_is_an_error_and_retried(run_harness) -> None:
    calls: list[str] = []

    async def reconcile(ctx: Context, key: str) -> None:
        calls.append(key)
        if len(calls) == 1:
            await anyio.sleep(10)

    h = Harness(reconcile, reconcile_timeout=0.1)
    h.source.set("slow", 1)
    await run_harness(h)
    await eventually(lambda: len(calls) == 2)
    assert h.count("error") == 1


async def test_one_key_never_runs_twice_at_once_and_reruns_after_change(run_harness) -> None:
    running: set[str] = set()
    overlaps: list[str] = []
    calls = Counter[str]()
    gate = anyio.Event()

    async def reconcile(ctx: Context, key: str) -> None:
        if key in running:
            overlaps.append(key)
        running.add(key)
        calls[key] += 1
        try:
            if calls[key] == 1:
                await gate.wait()
        finally:
            running.discard(key)

    h = Harness(reconcile, workers=4)
    h.source.set("same", 1)
    await run_harness(h)
    await eventually(lambda: calls["same"] == 1)
    # changed while in flight: must run again, but only after the first run finishes
    h.source.set("same", 2)
    h.source.set("same", 3)
    await anyio.sleep(0.05)
    assert calls["same"] == 1
    gate.set()
    await eventually(lambda: calls["same"] == 2)
    await anyio.sleep(0.05)
    assert calls["same"] == 2, "the two changes collapse into one re-run"
    assert overlaps == []


async def test_workers_run_different_keys_concurrently(run_harness) -> None:
    running: set[str] = set()
    peak = 0
    release = anyio.Event()

    async def reconcile(ctx: Context, key: str) -> None:
        nonlocal peak
        running.add(key)
        peak = max(peak, len(running))
        await release.wait()
        running.discard(key)

    h = Harness(reconcile, workers=3)
    for key in "abcde":
        h.source.set(key, 1)
    await run_harness(h)
    await eventually(lambda: len(running) == 3)
    assert sample("controller_runtime_active_workers", controller=h.name) == 3
    assert sample("controller_runtime_max_concurrent_reconciles", controller=h.name) == 3
    release.set()
    await eventually(lambda: h.count("success") == 5)
    assert peak == 3


async def test_key_mapping_and_resync(run_harness) -> None:
    seen: list[str] = []

    async def reconcile(ctx: Context, key: str) -> None:
        seen.append(key)

    h = Harness(reconcile, to_keys=strip_prefix("app/data/"), resync_period=0.2)
    h.source.set("app/data/u1", 1)
    h.source.set("app/data/u2/sub", 1)
    h.source.set("elsewhere/x", 1)
    await run_harness(h)
    await eventually(lambda: sorted(set(seen)) == ["u1", "u2"])
    # the periodic resync queues every cached key again
    await eventually(lambda: len(seen) >= 4, timeout=3)
    assert set(seen) == {"u1", "u2"}


def test_constant_key_maps_everything_to_one_key() -> None:
    assert list(constant_key("waitlist")("anything/at/all")) == ["waitlist"]


async def test_stop_drains_in_flight_work() -> None:
    finished: list[str] = []
    started = anyio.Event()

    async def reconcile(ctx: Context, key: str) -> None:
        started.set()
        await anyio.sleep(0.2)
        finished.append(key)

    h = Harness(reconcile)
    h.source.set("inflight", 1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.runner.run)
        await started.wait()
        drained = await h.runner.stop(drain_timeout=5)
    assert drained is True
    assert finished == ["inflight"]


async def test_stop_drain_is_bounded() -> None:
    started = anyio.Event()

    async def reconcile(ctx: Context, key: str) -> None:
        started.set()
        await anyio.sleep(30)

    h = Harness(reconcile)
    h.source.set("stuck", 1)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.runner.run)
            await started.wait()
            drained = await h.runner.stop(drain_timeout=0.2)
    assert drained is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad name"}, "must be"),
        ({"workers": 0}, "workers"),
        ({"resync_period": 0}, "resync_period"),
    ],
)
def test_invalid_declarations_are_refused(kwargs: dict, message: str) -> None:
    async def reconcile(ctx: Context, key: str) -> None:
        return None

    base: dict = {"name": "ok", "reconcile": reconcile, "watches": []}
    with pytest.raises(ConfigError, match=message):
        Controller(**{**base, **kwargs})


def test_duplicate_watch_names_are_refused() -> None:
    async def reconcile(ctx: Context, key: str) -> None:
        return None

    source = MemorySource()
    watches = [Watch("w", lambda d: source), Watch("w", lambda d: source)]
    with pytest.raises(ConfigError, match="unique"):
        Controller(name="dup", reconcile=reconcile, watches=watches)


def test_strip_prefix_never_yields_dot_segment_keys() -> None:
    mapper = strip_prefix("in/")
    assert list(mapper("in/..")) == []
    assert list(mapper("in/./x")) == []
    assert list(mapper("in/a..b")) == ["a..b"]


async def test_a_change_is_reconciled_before_the_keys_of_a_resync(run_harness) -> None:
    """A resync queues every key in the background: a user that changes meanwhile does not
    wait behind the whole population (the 60 s resyncs were part of the pipeline's backlog)."""
    seen: list[str] = []

    async def reconcile(ctx: Context, key: str) -> None:
        seen.append(key)
        await anyio.lowlevel.checkpoint()

    h = Harness(reconcile, workers=1)
    keys = [f"k{i:03d}" for i in range(200)]
    for key in keys:
        h.source.set(key, 1)
    await run_harness(h)
    await eventually(lambda: len(seen) == 200)
    seen.clear()
    assert len(h.runner.resync()) == 200
    h.source.set("k199", 2)
    h.source.set("new", 1)
    await eventually(lambda: len(seen) == 201)
    assert sorted(seen[:2]) == ["k199", "new"], seen[:5]
    assert sorted(seen) == sorted([*keys, "new"])
