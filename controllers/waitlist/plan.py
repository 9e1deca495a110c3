"""The waitlist's decision, as a pure function: what the list should be, given what is observed.

Rules (Manticore's, made strict):

* a user with a request and no entry joins at the end: its queue number is greater than every
  number in the list, newcomers of one pass in the order their requests arrived;
* a user without a request leaves the list;
* the oldest unclaimed users are claimed, in queue order, while capacity allows, and a claimed
  user stays claimed until it leaves (a claim is never taken back: a user whose job cannot be
  placed is reported, not silently re-queued);
* a user whose request is invalid keeps whatever entry it has, is never claimed and never
  joins, and blocks nobody (it is skipped, not waited for);
* the list refuses newcomers beyond ``list_limit`` users (they join as others leave).

Capacity is counted so that planning twice gives the same answer: ``fit`` is how many more
users' groups fit in what Nomad has free now, and every claimed user whose job does not hold
resources yet (``placed`` does not name it) has a slot of ``fit`` set aside for it. ``max_users``
caps the claimed users.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controllers.api.waiting import WaitingEntry


@dataclass(frozen=True)
class Observed:
    """Everything the decision depends on."""

    current: Mapping[str, WaitingEntry]
    # Valid requests: user -> arrival order (the request key's CreateIndex).
    requests: Mapping[str, int]
    # Users with a request key at all, valid or not (invalid ones keep their entry).
    present: frozenset[str]
    fit: int
    placed: frozenset[str] = frozenset()
    max_users: int | None = None
    list_limit: int = 50_000
    now: int = 0


@dataclass(frozen=True)
class Plan:
    desired: dict[str, WaitingEntry]
    joined: tuple[str, ...] = ()
    left: tuple[str, ...] = ()
    claimed: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    # Users that could still be claimed now, after this plan (for the capacity gauge).
    free: int = 0
    unplaced: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return bool(self.joined or self.left or self.claimed)


def plan(observed: Observed) -> Plan:
    current = observed.current
    left = tuple(sorted(u for u in current if u not in observed.present))
    kept = {u: e for u, e in current.items() if u in observed.present}
    top = max((e.queue for e in current.values()), default=0)
    newcomers = sorted(
        (u for u in observed.requests if u not in kept), key=lambda u: (observed.requests[u], u)
    )
    room = max(0, observed.list_limit - len(kept))
    joined, refused = tuple(newcomers[:room]), tuple(newcomers[room:])
    desired = dict(kept)
    for offset, user in enumerate(joined, start=1):
        desired[user] = WaitingEntry(queue=top + offset, claimed=False, since=observed.now)
    claimed_now = [u for u, e in desired.items() if e.claimed]
    unplaced = tuple(sorted(u for u in claimed_now if u not in observed.placed))
    free = max(0, observed.fit - len(unplaced))
    if observed.max_users is not None:
        free = min(free, max(0, observed.max_users - len(claimed_now)))
    queue = sorted(
        (u for u, e in desired.items() if not e.claimed and u in observed.requests),
        key=lambda u: (desired[u].queue, u),
    )
    claimed = tuple(queue[:free])
    for user in claimed:
        desired[user] = desired[user].model_copy(update={"claimed": True})
    return Plan(
        desired=desired,
        joined=joined,
        left=left,
        claimed=claimed,
        refused=refused,
        free=free - len(claimed),
        unplaced=unplaced + tuple(sorted(claimed)),
    )
