"""The blocking-query index rules every watch shares, as a pure state machine."""

from __future__ import annotations

import anyio
import pytest

from reconciler.clients.consul import KVEntry
from reconciler.sources._watch import (
    IndexResets,
    PollSettings,
    PollState,
    poll_forever,
    replace_items,
)
from reconciler.sources.base import Change
from reconciler.sources.kv import same_entry


def test_index_rules() -> None:
    state = PollState()
    assert state.advance(5) is True  # first answer: always processed
    assert state.index == 5
    assert state.advance(5) is False  # same index: no change
    assert state.advance(9) is True
    assert state.index == 9
    assert state.advance(3) is True  # backwards: processed, and reset to 0
    assert (state.index, state.resets) == (0, 1)
    assert state.advance(0) is True  # a 0 from the server is never used: clamped to 1
    assert state.index == 1


def test_replace_reports_added_changed_and_removed_with_their_items() -> None:
    cache = {"a": 1, "b": 2, "c": 3}
    new = {"a": 1, "b": 20, "d": 4}
    assert replace_items(cache, new) == [
        Change("b", 20, old=2),  # a change carries the item it replaced
        Change("c", 3, deleted=True),  # a deletion carries the last item known
        Change("d", 4),
    ]
    assert cache == new
    assert replace_items(cache, dict(new)) == []


def test_replace_with_a_sameness_rule_refreshes_the_cache_silently() -> None:
    cache = {"a": (1, "v1")}
    same_value = lambda old, new: old[1] == new[1]  # noqa: E731  (index, value) pairs
    assert replace_items(cache, {"a": (2, "v1")}, same_value) == []
    assert cache == {"a": (2, "v1")}  # the newer index is kept even though nothing is emitted
    assert replace_items(cache, {"a": (3, "v2")}, same_value) == [
        Change("a", (3, "v2"), old=(2, "v1"))
    ]


def test_a_kv_entry_rewritten_with_identical_bytes_is_not_a_change() -> None:
    # What an older Consul returns for an identical PUT: same bytes, a later ModifyIndex.
    cache = {"k": KVEntry("k", b"v", modify_index=3)}
    rewritten = {"k": KVEntry("k", b"v", modify_index=9)}
    assert replace_items(cache, rewritten, same_entry) == []
    assert cache["k"].modify_index == 9
    locked = {"k": KVEntry("k", b"v", modify_index=10, session="s1")}
    assert [c.id for c in replace_items(cache, locked, same_entry)] == ["k"]  # holder changed


@pytest.mark.anyio
async def test_a_parked_query_is_cancelled_and_read_again_when_another_watch_goes_back() -> None:
    """Two watches of one server: when one sees its index go backwards, the other's parked
    query (whose index may be from before a restore) is cancelled and sent again from 0."""
    resets = IndexResets()
    asked: dict[str, list[int]] = {"parked": [], "back": []}
    answers = iter([(20, "first"), (5, "after the restore")])
    went_back = anyio.Event()

    async def parked(index: int) -> tuple[int, str]:
        asked["parked"].append(index)
        if index:
            await anyio.sleep_forever()  # a long poll with nothing to say
        return 30, "listed"

    async def back(index: int) -> tuple[int, str]:
        asked["back"].append(index)
        try:
            return next(answers)
        except StopIteration:
            went_back.set()
            await anyio.sleep_forever()
            raise

    settings = PollSettings(rate=1000.0, burst=1000)
    async with anyio.create_task_group() as tg:
        for name, fetch in (("parked", parked), ("back", back)):
            tg.start_soon(
                lambda name=name, fetch=fetch: poll_forever(
                    source=name,
                    controller="t",
                    fetch=fetch,
                    apply=lambda _data: None,
                    settings=settings,
                    what=name,
                    resets_of=resets,
                )
            )
            await anyio.sleep(0.05)  # the parked watch is parked before the other one goes back
        with anyio.fail_after(5):
            await went_back.wait()
            while len(asked["parked"]) < 3:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert asked["back"] == [0, 20, 0]
    assert asked["parked"][:3] == [0, 30, 0]  # then parked again, at the fresh index
