"""The work queue against a plain model, driven by a hypothesis state machine.

The machine runs without an event loop: every operation the queue offers is sync except ``get()``,
so it is driven with ``get_nowait()`` and a :class:`ManualClock` that only moves when a rule says
so. The model is deliberately naive (lists, sets and a dict, re-scanned on every step) so that it
is obviously right.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from prometheus_client.metrics import MetricWrapperBase

from reconciler import metrics
from reconciler.testing import ManualClock
from reconciler.workqueue import QueueShutDown, WorkQueue, default_rate_limiter

KEYS = st.sampled_from(["a", "b", "c"])
DELAYS = st.sampled_from([-1.0, 0.0, 0.1, 0.5, 1.0, 2.5])
ADVANCES = st.sampled_from([0.05, 0.25, 0.5, 1.0, 4.0])

BASE_DELAY, MAX_DELAY, QPS, BURST = 0.25, 2.0, 4.0, 3
# One label value for every run: a run's queue takes over the depth gauge of the previous one, and
# counters are compared as increments. (A fresh name per run would grow the registry without end.)
NAME = "test-workqueue-machine"


def sample(metric: MetricWrapperBase, suffix: str = "") -> float:
    for family in metric.collect():
        for s in family.samples:
            if s.labels.get("name") == NAME and s.name == family.name + suffix:
                return s.value
    raise AssertionError(f"no sample for {metric}")


@dataclass
class Model:
    """What the queue should hold, written the obvious way."""

    now: float = 0.0
    ready: list[str] = field(default_factory=list)
    processing: set[str] = field(default_factory=set)
    # Keys in flight that were added again.
    dirty: set[str] = field(default_factory=set)
    # Delayed key -> (ready_at, order of insertion).
    waiting: dict[str, tuple[float, int]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    tokens: float = float(BURST)
    refilled_at: float = 0.0
    shut: bool = False
    adds: int = 0
    retries: int = 0
    seq: int = 0

    def add(self, key: str) -> None:
        if self.shut or key in self.ready or key in self.dirty:
            return
        self.adds += 1
        if key in self.processing:
            self.dirty.add(key)
        else:
            self.ready.append(key)

    def add_after(self, key: str, delay: float) -> None:
        if self.shut:
            return
        self.retries += 1
        if delay <= 0:
            self.add(key)
            return
        ready_at = self.now + delay
        if key in self.waiting and self.waiting[key][0] <= ready_at:
            return
        self.waiting[key] = (ready_at, self.seq)
        self.seq += 1

    def rate_limit_delay(self, key: str) -> float:
        failures = self.failures.get(key, 0)
        self.failures[key] = failures + 1
        backoff = min(MAX_DELAY, BASE_DELAY * 2.0**failures)
        # The global token bucket, spelled out.
        self.tokens = min(float(BURST), self.tokens + (self.now - self.refilled_at) * QPS)
        self.refilled_at = self.now
        self.tokens -= 1.0
        bucket = 0.0 if self.tokens >= 0 else -self.tokens / QPS
        return max(backoff, bucket)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = sorted((at, seq, key) for key, (at, seq) in self.waiting.items() if at <= self.now)
        for _, _, key in due:
            del self.waiting[key]
            self.add(key)

    def take(self) -> str | None:
        if not self.ready:
            return None
        key = self.ready.pop(0)
        self.processing.add(key)
        return key

    def done(self, key: str) -> None:
        self.processing.discard(key)
        if key in self.dirty:
            self.dirty.discard(key)
            self.ready.append(key)

    def shutdown(self) -> None:
        self.shut = True
        self.waiting.clear()

    @property
    def depth(self) -> int:
        return len(self.ready) + len(self.dirty)


class WorkQueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        limiter = default_rate_limiter(
            self.clock, base_delay=BASE_DELAY, max_delay=MAX_DELAY, qps=QPS, burst=BURST
        )
        self.queue = WorkQueue(NAME, clock=self.clock, rate_limiter=limiter)
        self.adds_before = sample(metrics.WORKQUEUE_ADDS, "_total")
        self.retries_before = sample(metrics.WORKQUEUE_RETRIES, "_total")
        self.model = Model()
        # Every key the queue ever handed out, for the "nothing is lost" check.
        self.handed_out: list[str] = []

    @rule(key=KEYS)
    def add(self, key: str) -> None:
        self.queue.add(key)
        self.model.add(key)

    @rule(key=KEYS, delay=DELAYS)
    def add_after(self, key: str, delay: float) -> None:
        self.queue.add_after(key, delay)
        self.model.add_after(key, delay)

    @rule(key=KEYS)
    def add_rate_limited(self, key: str) -> None:
        self.queue.add_rate_limited(key)
        if not self.model.shut:
            self.model.add_after(key, self.model.rate_limit_delay(key))

    @rule(key=KEYS)
    def forget(self, key: str) -> None:
        self.queue.forget(key)
        self.model.failures.pop(key, None)

    @rule(seconds=ADVANCES)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.advance(seconds)

    @rule()
    def get(self) -> None:
        expected = self.model.take()
        if expected is None:
            with pytest.raises(QueueShutDown if self.model.shut else anyio.WouldBlock):
                self.queue.get_nowait()
            return
        key = self.queue.get_nowait()
        assert key == expected
        self.handed_out.append(key)

    @precondition(lambda self: self.model.processing)
    @rule(data=st.data())
    def done(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model.processing)))
        self.queue.done(key)
        self.model.done(key)

    @rule(key=KEYS)
    def done_of_a_key_not_in_flight(self, key: str) -> None:
        if key not in self.model.processing:
            self.queue.done(key)

    @precondition(lambda self: not self.model.shut)
    @rule()
    def shutdown(self) -> None:
        self.queue.shutdown()
        self.model.shutdown()

    @invariant()
    def matches_the_model(self) -> None:
        stats = self.queue.statistics()
        model = self.model
        assert self.queue.len() == len(model.ready)
        assert stats.processing == len(model.processing)
        assert stats.dirty == len(model.dirty)
        assert stats.waiting == len(model.waiting)
        assert stats.depth == model.depth
        assert stats.adds == model.adds
        assert stats.retries == model.retries
        assert stats.shutting_down == model.shut
        for key in "abc":
            assert self.queue.num_requeues(key) == model.failures.get(key, 0)

    @invariant()
    def no_key_is_both_waiting_and_in_flight_or_waiting_twice(self) -> None:
        model = self.model
        assert len(set(model.ready)) == len(model.ready)
        assert not set(model.ready) & model.processing
        assert model.dirty <= model.processing

    @invariant()
    def metrics_match_the_model(self) -> None:
        assert sample(metrics.WORKQUEUE_DEPTH) == self.model.depth
        adds = sample(metrics.WORKQUEUE_ADDS, "_total") - self.adds_before
        retries = sample(metrics.WORKQUEUE_RETRIES, "_total") - self.retries_before
        assert (adds, retries) == (self.model.adds, self.model.retries)

    def teardown(self) -> None:
        """Nothing is lost: finish the work in flight, let time pass, and every key pending at
        the end of the run comes out."""
        model = self.model
        pending = set(model.ready) | model.dirty | set(model.waiting)
        for key in sorted(model.processing):
            self.queue.done(key)
        if model.waiting:
            self.clock.advance(max(at for at, _ in model.waiting.values()) - model.now + 1.0)
        drained: set[str] = set()
        while True:
            try:
                key = self.queue.get_nowait()
            except (anyio.WouldBlock, QueueShutDown):
                break
            drained.add(key)
            self.queue.done(key)
        assert drained == pending
        stats = self.queue.statistics()
        assert (stats.depth, stats.processing, stats.waiting) == (0, 0, 0)


WorkQueueMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
test_work_queue_machine = WorkQueueMachine.TestCase
