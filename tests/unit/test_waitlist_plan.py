"""The waitlist's pure decision: FIFO, capacity, idempotence, departures, bad input.

The state machine drives the decision the way the cluster does (requests come and go, nodes
join and leave, Nomad places claimed users' jobs, allocations of departed users stop) and stores
every result through the paged codec, so the invariants hold for what is really written.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from controllers.api.waiting import WaitingEntry, decode_values, plan_pages
from controllers.waitlist.plan import Observed, Plan, plan

USERS = [f"u{i}" for i in range(14)]


def entry(queue: int, claimed: bool = False) -> WaitingEntry:
    return WaitingEntry(queue=queue, claimed=claimed, since=0)


def observed(current: dict[str, WaitingEntry], requests: list[str], **kw: object) -> Observed:
    order = {u: i for i, u in enumerate(requests)}
    return Observed(
        current=current,
        requests=order,
        present=frozenset(requests),
        **kw,  # type: ignore[arg-type]
    )


def test_newcomers_join_at_the_end_in_arrival_order() -> None:
    current = {"a": entry(5), "b": entry(9)}
    p = plan(observed(current, ["a", "b", "z", "c"], fit=0))
    assert p.joined == ("z", "c")
    assert p.desired["z"].queue == 10
    assert p.desired["c"].queue == 11


def test_oldest_are_claimed_while_capacity_allows() -> None:
    current = {"a": entry(1), "b": entry(2), "c": entry(3)}
    p = plan(observed(current, ["a", "b", "c"], fit=2))
    assert p.claimed == ("a", "b")
    assert not p.desired["c"].claimed
    # the claimed users are not placed yet: their slots are reserved, planning again claims none
    again = plan(observed(p.desired, ["a", "b", "c"], fit=2))
    assert again.claimed == ()
    assert again.desired == p.desired


def test_departure_frees_a_slot_for_the_next_user() -> None:
    current = {"a": entry(1, True), "b": entry(2)}
    p = plan(observed(current, ["b"], fit=1, placed=frozenset()))
    assert p.left == ("a",)
    assert p.claimed == ("b",)


def test_max_users_caps_claims() -> None:
    current = {u: entry(i) for i, u in enumerate("abcd")}
    p = plan(observed(current, list("abcd"), fit=10, max_users=1))
    assert p.claimed == ("a",)
    p = plan(observed(p.desired, list("abcd"), fit=10, max_users=1, placed=frozenset("a")))
    assert p.claimed == ()


def test_invalid_requests_keep_their_entry_block_nobody_and_never_join() -> None:
    current = {"bad": entry(1), "b": entry(2)}
    obs = Observed(
        current=current,
        requests={"b": 1, "new": 2},
        present=frozenset({"bad", "b", "new", "bad2"}),
        fit=1,
    )
    p = plan(obs)
    assert p.desired["bad"] == current["bad"]
    assert "bad2" not in p.desired
    assert p.claimed == ("b",)


def test_list_limit_refuses_newcomers_without_losing_them() -> None:
    current = {"a": entry(1), "b": entry(2)}
    p = plan(observed(current, ["a", "b", "c", "d"], fit=0, list_limit=3))
    assert p.joined == ("c",)
    assert p.refused == ("d",)
    p = plan(observed(p.desired, ["b", "c", "d"], fit=0, list_limit=3))
    assert p.joined == ("d",)


def test_claimed_users_are_never_unclaimed_when_capacity_shrinks() -> None:
    current = {"a": entry(1, True), "b": entry(2, True)}
    p = plan(observed(current, ["a", "b"], fit=0, max_users=1))
    assert p.desired == current
    assert not p.changed


class WaitingListMachine(RuleBasedStateMachine):
    """The cluster around the waitlist, one rule per thing that can happen."""

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[str, bytes] = {}
        self.requests: dict[str, int] = {}
        self.invalid: set[str] = set()
        self.arrivals = 0
        self.capacity = 3
        self.max_users: int | None = None
        self.list_limit = 10
        self.running: set[str] = set()  # users whose allocation holds a slot
        self.last: Plan | None = None
        self.ran_since_change = False

    # -- the world ---------------------------------------------------------------------------
    @rule(user=st.sampled_from(USERS), valid=st.booleans())
    def request(self, user: str, valid: bool) -> None:
        if user in self.requests or user in self.invalid:
            return
        self.arrivals += 1
        if valid or len(self.invalid) > 2:
            self.requests[user] = self.arrivals
        else:
            self.invalid.add(user)
        self.ran_since_change = False

    @rule(user=st.sampled_from(USERS))
    def leave(self, user: str) -> None:
        self.requests.pop(user, None)
        self.invalid.discard(user)
        self.ran_since_change = False

    @rule(capacity=st.integers(0, 6))
    def nodes_change(self, capacity: int) -> None:
        self.capacity = capacity
        self.ran_since_change = False

    @rule(cap=st.none() | st.integers(0, 5))
    def set_max_users(self, cap: int | None) -> None:
        self.max_users = cap
        self.ran_since_change = False

    @rule()
    def nomad_places_claimed_jobs(self) -> None:
        for user in self.listed_claimed():
            if user not in self.running and len(self.running) < self.capacity:
                self.running.add(user)
                self.ran_since_change = False

    @rule()
    def departed_allocations_stop(self) -> None:
        gone = {u for u in self.running if u not in self.requests and u not in self.invalid}
        if gone:
            self.running -= gone
            self.ran_since_change = False

    # -- the waitlist ------------------------------------------------------------------------
    def current(self):  # type: ignore[no-untyped-def]
        return decode_values(self.store)

    def listed_claimed(self) -> list[str]:
        return self.current().claimed()

    def observe(self) -> Observed:
        wl = self.current()
        return Observed(
            current=dict(wl.entries),
            requests=dict(self.requests),
            present=frozenset(self.requests) | frozenset(self.invalid),
            fit=max(0, self.capacity - len(self.running)),
            placed=frozenset(self.running),
            max_users=self.max_users,
            list_limit=self.list_limit,
            now=self.arrivals,
        )

    @rule()
    def run_waitlist(self) -> None:
        before = self.current()
        obs = self.observe()
        result = plan(obs)
        writes = plan_pages(result.desired, before, budget=120).writes
        for w in writes:
            if w.value is None:
                self.store.pop(w.key, None)
            else:
                self.store[w.key] = w.value
        after = self.current()
        assert dict(after.entries) == result.desired
        # claims never exceed what was free, and never pass MAX_USERS
        claimed_before = len(before.claimed())
        unplaced = [u for u in before.claimed() if u not in self.running and u in obs.present]
        assert len(result.claimed) <= max(0, obs.fit - len(unplaced))
        if self.max_users is not None:
            assert len(after.claimed()) <= max(self.max_users, claimed_before)
        # running it again changes nothing
        again = plan(self.observe())
        assert again.desired == result.desired
        assert plan_pages(again.desired, after, budget=120).writes == ()
        self.last = result
        self.ran_since_change = True

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def queue_numbers_are_unique(self) -> None:
        queues = [e.queue for e in self.current().entries.values()]
        assert len(queues) == len(set(queues))

    @invariant()
    def claimed_users_are_a_prefix_of_the_valid_queue(self) -> None:
        order = [u for u, _ in self.current().ordered() if u in self.requests]
        flags = [self.current().entries[u].claimed for u in order]
        assert flags == sorted(flags, reverse=True), order

    @precondition(lambda self: self.ran_since_change)
    @invariant()
    def converged_list_matches_the_requests(self) -> None:
        wl = self.current()
        listed = set(wl.entries)
        assert listed <= set(self.requests) | self.invalid, "no user without a request"
        missing = set(self.requests) - listed
        assert len(missing) == 0 or len(listed) >= self.list_limit, "no request lost"
        # claimed <= capacity: only claims made while there was room, plus claims kept
        # across a shrink (claims are never taken back)
        free_now = max(0, self.capacity - len(self.running))
        unplaced = [u for u in wl.claimed() if u not in self.running]
        waiting_valid = [u for u in wl.waiting() if u in self.requests]
        if waiting_valid and (self.max_users is None or len(wl.claimed()) < self.max_users):
            assert len(unplaced) >= free_now, "nobody waits while a slot is free"


WaitingListMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None
)
TestWaitingList = WaitingListMachine.TestCase
