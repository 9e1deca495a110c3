"""The paged waiting-list codec: what it reads, how it lays users out, what it writes."""

from __future__ import annotations

import base64
import json
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.api.ids import WAITING_KEY
from controllers.api.waiting import (
    PAGE_BUDGET,
    TXN_BUDGET,
    VALUE_LIMIT,
    PageWrite,
    WaitingEntry,
    WaitingList,
    decode_values,
    encode_page,
    page_key,
    page_number,
    plan_pages,
    transactions,
)

ids = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=12)
lists = st.dictionaries(
    ids,
    st.builds(
        WaitingEntry,
        queue=st.integers(0, 10_000),
        claimed=st.booleans(),
        since=st.none() | st.integers(0, 2_000_000_000),
    ),
    max_size=60,
).map(lambda d: {u: e.model_copy(update={"queue": i}) for i, (u, e) in enumerate(d.items())})

SMALL = 400  # bytes per page: many pages from a few users


def apply(store: dict[str, bytes], writes: tuple[PageWrite, ...] | list[PageWrite]) -> None:
    for w in writes:
        if w.value is None:
            store.pop(w.key, None)
        else:
            store[w.key] = w.value


def read(store: dict[str, bytes]) -> WaitingList:
    return decode_values(store)


def test_page_keys() -> None:
    assert page_key(0) == WAITING_KEY == "manticore/waiting/data"
    assert page_key(7) == "manticore/waiting/data-7"
    assert [page_number(page_key(n)) for n in (0, 1, 42)] == [0, 1, 42]
    for foreign in (
        "manticore/waiting/data-0",
        "manticore/waiting/data-x",
        "manticore/waiting/datum",
        "manticore/waiting/data/1",
        "manticore/waiting/data-01",
    ):
        assert page_number(foreign) is None


def test_manticores_shape_is_kept() -> None:
    page = encode_page(
        {
            "b": WaitingEntry(queue=2, claimed=False),
            "a": WaitingEntry(queue=1, claimed=True, since=5),
        }
    )
    assert page == b'{"a":{"claimed":true,"queue":1,"since":5},"b":{"claimed":false,"queue":2}}'
    assert json.loads(page) == {
        "a": {"claimed": True, "queue": 1, "since": 5},
        "b": {"claimed": False, "queue": 2},
    }


@settings(max_examples=150, deadline=None)
@given(first=lists, second=lists)
def test_layout_roundtrips_is_stable_and_idempotent(first, second) -> None:  # type: ignore[no-untyped-def]
    store: dict[str, bytes] = {}
    plan1 = plan_pages(first, read(store), budget=SMALL)
    apply(store, plan1.writes)
    after1 = read(store)
    assert dict(after1.entries) == first
    assert not after1.problems
    assert WAITING_KEY in store, "page 0 always exists"
    assert all(len(v) <= SMALL for v in store.values())
    # the same list again: nothing to write
    assert plan_pages(first, after1, budget=SMALL).writes == ()
    # a new list: known users keep their page, leavers' pages shrink, newcomers at the end
    next_queue = max((e.queue for e in first.values()), default=-1) + 1
    second = {
        u: (
            first[u].model_copy(update={"claimed": e.claimed})
            if u in first
            else e.model_copy(update={"queue": next_queue + e.queue})
        )
        for u, e in second.items()
    }
    plan2 = plan_pages(second, after1, budget=SMALL)
    apply(store, plan2.writes)
    after2 = read(store)
    assert dict(after2.entries) == second
    for user in second:
        if user in first:
            assert after2.page_of[user] == after1.page_of[user]
    # only pages holding a changed, removed or new user were written
    touched = {after1.page_of[u] for u in first if u not in second or first[u] != second[u]}
    touched |= {after2.page_of[u] for u in second if u not in first}
    assert {w.number for w in plan2.writes} <= touched | {0}
    assert plan_pages(second, after2, budget=SMALL).writes == ()
    assert all(len(v) <= SMALL for v in store.values())
    # pages left empty are gone (page 0 stays as {})
    for key, value in store.items():
        assert value != b"{}" or key == WAITING_KEY


def test_newcomers_fill_the_last_page_then_open_a_new_one() -> None:
    entries = {f"user-{i:03d}": WaitingEntry(queue=i, claimed=False) for i in range(30)}
    plan = plan_pages(entries, WaitingList(), budget=SMALL)
    numbers = [plan.page_of[f"user-{i:03d}"] for i in range(30)]
    assert numbers == sorted(numbers), "queue order follows page order for newcomers"
    assert len(set(numbers)) > 2


def test_20000_users_fit_with_margin() -> None:
    entries = {
        str(uuid.UUID(int=i)): WaitingEntry(queue=i, claimed=i < 5000, since=1_700_000_000 + i)
        for i in range(20_000)
    }
    plan = plan_pages(entries, WaitingList())
    sizes = [w.size for w in plan.writes]
    assert max(sizes) <= PAGE_BUDGET <= VALUE_LIMIT // 4
    assert len(plan.writes) == 14
    for group in transactions(plan.writes):
        body = json.dumps(
            [
                {
                    "KV": {
                        "Verb": "cas",
                        "Key": w.key,
                        "Index": w.index,
                        "Value": base64.b64encode(w.value or b"").decode(),
                    }
                }
                for w in group
            ]
        )
        assert len(body) < VALUE_LIMIT


def test_64_character_ids_still_fit() -> None:
    entries = {
        ("x" * 59) + f"{i:05d}": WaitingEntry(queue=i, claimed=False, since=2_000_000_000)
        for i in range(20_000)
    }
    plan = plan_pages(entries, WaitingList())
    assert max(w.size for w in plan.writes) <= PAGE_BUDGET
    assert all(sum(w.size for w in g) <= TXN_BUDGET for g in transactions(plan.writes))


def test_releases_are_written_before_claims() -> None:
    store: dict[str, bytes] = {}
    entries = {f"u{i}": WaitingEntry(queue=i, claimed=i == 0) for i in range(40)}
    plan = plan_pages(entries, read(store), budget=SMALL)
    apply(store, plan.writes)
    before = read(store)
    last = max(before.page_of.values())
    claim_target = next(u for u, n in before.page_of.items() if n == last)
    desired = {u: e for u, e in entries.items() if u != "u0"}
    desired[claim_target] = desired[claim_target].model_copy(update={"claimed": True})
    writes = plan_pages(desired, before, budget=SMALL).writes
    groups = transactions(writes, budget=SMALL)
    flat = [w for g in groups for w in g]
    assert flat[0].number == before.page_of["u0"]
    assert flat[0].removes_claimed


def test_bad_pages_and_entries_are_reported_and_skipped() -> None:
    good = encode_page({"ada": WaitingEntry(queue=1, claimed=True)})
    mixed = (
        b'{"bob":{"queue":2,"claimed":false},"eve":{"queue":-1,"claimed":false},'
        b'"b@d":{"queue":3,"claimed":false}}'
    )
    wl = decode_values(
        {
            WAITING_KEY: good,
            page_key(1): mixed,
            page_key(2): b"not json",
            page_key(3): b'{"ada":{"queue":9,"claimed":false}}',
            "manticore/waiting/data-x": b"{}",
        }
    )
    assert dict(wl.entries) == {
        "ada": WaitingEntry(queue=1, claimed=True),
        "bob": WaitingEntry(queue=2, claimed=False),
    }
    kinds = sorted((p.kind, p.user or "") for p in wl.problems)
    assert kinds == [
        ("duplicate", "ada"),
        ("foreign-key", ""),
        ("page", ""),
        ("schema", ""),
        ("schema", "eve"),
    ]
    assert not wl.pages[2].valid
    # the next write cleans up: garbage page deleted, duplicate dropped, ada stays on page 0
    plan = plan_pages(dict(wl.entries), wl)
    written = {w.number: w.value for w in plan.writes}
    assert written[2] is None
    assert written[3] is None
    assert 0 not in written
    assert plan.page_of == {"ada": 0, "bob": 1}


@given(
    user=st.from_regex(r"[A-Za-z0-9-]{1,64}", fullmatch=True),
    queue=st.integers(0, 2**62),
    claimed=st.booleans(),
    since=st.none() | st.integers(0, 2**40),
)
def test_hand_encoding_is_the_canonical_json(user, queue, claimed, since) -> None:  # type: ignore[no-untyped-def]
    from controllers.api.waiting import encode_entry

    entry = WaitingEntry(queue=queue, claimed=claimed, since=since)
    canonical = json.dumps(
        {user: entry.model_dump(mode="json", exclude_none=True)},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    assert b"{" + encode_entry(user, entry) + b"}" == canonical
    assert set(WaitingEntry.model_fields) == {"queue", "claimed", "since"}
