"""Shared waits of the embedded Consul (``devstack.consul.api.parking``) on a real event loop.

The HTTP-level behaviour is pinned by ``tests/contract/consul/test_blocking.py``; these cover
what a client cannot provoke on cue: a read that fails while a group is answering.
"""

from __future__ import annotations

import asyncio

import pytest

from devstack.consul.api.parking import Outcome, Parking
from devstack.consul.api.reads import Result
from devstack.consul.core import Config, Core


class Sink:
    """Stands in for a connection's transport: records what the group writes."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def is_closing(self) -> bool:
        return False


@pytest.mark.anyio
async def test_a_failing_read_hands_every_waiter_back_and_leaves_no_dead_group() -> None:
    core = Core(Config(node_name="unit"))
    parking = Parking(core, asyncio.get_running_loop())
    loop = asyncio.get_running_loop()
    state = {"fail": True, "index": 5}

    def run() -> Result:
        if state["fail"]:
            raise RuntimeError("read failed")
        return Result(state["index"], raw=b"[]")

    def render(result: Result) -> bytes:
        return b"answer %d" % result.index

    def park(sink: Sink):
        return parking.park(
            "k",
            run,
            render,
            topics=("t",),
            prefixes=(),
            stale=False,
            transport=sink,
            min_index=5,
            not_found=False,
            deadline=loop.time() + 30,
        )

    sinks = [Sink() for _ in range(3)]
    waiters = [park(s) for s in sinks]
    assert core.state.watches.count() == 3
    state["index"] = 6
    core.state.watches.notify("t")
    outcomes = await asyncio.wait_for(asyncio.gather(*(w.done for w in waiters)), 5)
    assert outcomes == [Outcome.RERUN] * 3
    assert all(not s.data for s in sinks)
    assert parking.groups == {}
    assert core.state.watches.count() == 0

    # The next waiters get a fresh group that a later change answers.
    state["fail"] = False
    sink = Sink()
    waiter = park(sink)
    state["index"] = 7
    core.state.watches.notify("t")
    assert await asyncio.wait_for(waiter.done, 5) is Outcome.WRITTEN
    assert sink.data == [b"answer 7"]
    assert parking.groups == {}
    parking.close()


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_its_group() -> None:
    """A handler task cancelled while parked (the server stopping, say) leaves its group as
    ``reads.blocking_respond`` does (the awaited future is cancelled with it): it is no longer
    counted and is never written to."""
    core = Core(Config(node_name="unit"))
    parking = Parking(core, asyncio.get_running_loop())
    loop = asyncio.get_running_loop()
    state = {"index": 5}
    sink = Sink()

    async def handler() -> None:
        waiter = parking.park(
            "k",
            lambda: Result(state["index"], raw=b"[]"),
            lambda result: b"answer",
            topics=("t",),
            prefixes=(),
            stale=False,
            transport=sink,
            min_index=5,
            not_found=False,
            deadline=loop.time() + 30,
        )
        try:
            await waiter.done
        finally:
            if not waiter.done.done() or waiter.done.cancelled():
                parking.leave(waiter)

    task = asyncio.create_task(handler())
    await asyncio.sleep(0)
    assert core.state.watches.count() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert core.state.watches.count() == 0
    assert parking.groups == {}
    state["index"] = 6
    core.state.watches.notify("t")
    await asyncio.sleep(0.01)
    assert sink.data == []
