"""Token bucket and backoff: the shared rate-limiting primitives, on a manual clock."""

from __future__ import annotations

import random

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.ratelimit import Backoff, TokenBucket
from reconciler.testing import ManualClock


def test_bucket_allows_a_burst_then_paces_at_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2), "reservations queue up behind each other"
    clock.advance(1.0)
    # refilled, but never beyond the burst
    assert bucket.reserve() == 0.0


@given(
    st.floats(min_value=0.5, max_value=1000),
    st.integers(min_value=1, max_value=50),
    st.lists(st.floats(min_value=0, max_value=0.05), min_size=1, max_size=200),
)
def test_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
    admitted_at = []
    for gap in gaps:
        clock.advance(gap)
        admitted_at.append(clock.monotonic() + bucket.reserve())
    admitted_at.sort()
    for count, when in enumerate(admitted_at, start=1):
        assert count <= burst + rate * when + 1e-6


@pytest.mark.anyio
async def test_acquire_sleeps_on_the_injected_clock() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=2, burst=1, clock=clock)
    await bucket.acquire()
    # the second acquire must wait 0.5 s of *clock* time, not real time
    async with anyio.create_task_group() as tg:
        done = anyio.Event()

        async def second() -> None:
            await bucket.acquire()
            done.set()

        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()
        clock.advance(0.5)
        with anyio.fail_after(1):
            await done.wait()


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError, match="burst >= 1"):
        TokenBucket(rate=1, burst=0)


def test_backoff_doubles_up_to_the_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(base=0.1, cap=1.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [min(1.0, 0.1 * 2**i) for i in range(8)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling * 0.5 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_backoff_survives_very_many_failures() -> None:
    backoff = Backoff(base=0.2, cap=30, jitter=0)
    backoff.failures = 10_000
    assert backoff.next_delay() == 30
