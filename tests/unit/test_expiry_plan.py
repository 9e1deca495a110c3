"""The expiry controller's pure plan: deadlines, warnings, resets and departures."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.api.requests import UserRequest
from controllers.expiry import Observed, Plan, Stored, new_record, plan
from controllers.settings import UsageSettings

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
USAGE = UsageSettings(usage_duration=600, warning_duration=60)
RESETTABLE = UsageSettings(usage_duration=600, warning_duration=60, reset_timer_allowed=True)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def observe(now, *, requests, claimed, records) -> Observed:
    return Observed(
        now=now,
        requests={u: Stored(r, i) for u, (r, i) in requests.items()},
        claimed=frozenset(claimed),
        records={u: Stored(r, i) for u, (r, i) in records.items()},
    )


def apply(observed: Observed, result: Plan) -> Observed:
    """What Consul holds after the plan's writes (indexes move on)."""
    records = dict(observed.records)
    requests = dict(observed.requests)
    for user, record in result.create.items():
        records[user] = Stored(record, 1000)
    for user, (record, index) in result.update.items():
        records[user] = Stored(record, index + 1)
    for user in result.forget:
        records.pop(user)
    for user in result.expire:
        records.pop(user)
        requests.pop(user)
    return Observed(observed.now, requests, observed.claimed, records)


def test_a_claimed_user_gets_a_deadline_once() -> None:
    first = plan(observe(T0, requests={"a": (UserRequest(), 5)}, claimed={"a"}, records={}), USAGE)
    assert first.create["a"].started_at == T0
    assert first.create["a"].warn_at == at(600)
    assert first.create["a"].expires_at == at(660)
    assert first.next_at == at(600)
    # later, with the record stored: nothing to do, whatever the time (before the warning)
    stored = {"a": (first.create["a"], 7)}
    again = plan(
        observe(at(300), requests={"a": (UserRequest(), 5)}, claimed={"a"}, records=stored), USAGE
    )
    assert again.empty
    assert again.next_at == at(600)


def test_warned_then_expired() -> None:
    record = new_record(T0, USAGE)
    obs = observe(
        at(601), requests={"a": (UserRequest(), 5)}, claimed={"a"}, records={"a": (record, 7)}
    )
    warned = plan(obs, USAGE)
    assert warned.warned == ["a"]
    new, index = warned.update["a"]
    assert new.warned_at == at(601)
    assert new.started_at == T0
    assert index == 7
    assert warned.next_at == at(660)
    later = observe(
        at(660), requests={"a": (UserRequest(), 5)}, claimed={"a"}, records={"a": (new, 8)}
    )
    ended = plan(later, USAGE)
    assert ended.expire == {"a": (5, 8)}
    assert not ended.update
    assert not ended.create


def test_activity_restarts_the_clock_only_when_allowed() -> None:
    record = new_record(T0, USAGE).model_copy(update={"warned_at": at(600)})
    active = UserRequest(last_activity=at(620))
    obs = observe(at(630), requests={"a": (active, 9)}, claimed={"a"}, records={"a": (record, 7)})
    assert plan(obs, USAGE).update == {}  # not allowed: the warning stands
    reset = plan(obs, RESETTABLE)
    new, _ = reset.update["a"]
    assert new.started_at == at(620)
    assert new.warn_at == at(1220)
    assert new.warned_at is None
    assert new.resets == 1
    assert reset.reset == ["a"]


def test_activity_from_the_future_does_not_extend_past_now() -> None:
    record = new_record(T0, USAGE)
    active = UserRequest(last_activity=at(10_000))
    obs = observe(at(100), requests={"a": (active, 9)}, claimed={"a"}, records={"a": (record, 7)})
    new, _ = plan(obs, RESETTABLE).update["a"]
    assert new.started_at == at(100)


def test_records_of_departed_or_unclaimed_users_are_forgotten() -> None:
    record = new_record(T0, USAGE)
    obs = observe(
        at(1),
        requests={"b": (UserRequest(), 3)},
        claimed={"c"},
        records={"a": (record, 7), "b": (record, 8)},
    )
    result = plan(obs, USAGE)
    assert result.forget == {"a": 7, "b": 8}
    assert not result.create  # c has no request: nothing to time


def test_no_limit_configured_forgets_everything_and_times_nobody() -> None:
    record = new_record(T0, USAGE)
    obs = observe(
        at(1), requests={"a": (UserRequest(), 3)}, claimed={"a"}, records={"a": (record, 7)}
    )
    result = plan(obs, UsageSettings())
    assert result.forget == {"a": 7}
    assert not result.create
    assert result.next_at is None


def test_an_invalid_record_is_replaced_from_now() -> None:
    obs = observe(
        at(50), requests={"a": (UserRequest(), 3)}, claimed={"a"}, records={"a": (None, 7)}
    )
    new, index = plan(obs, USAGE).update["a"]
    assert index == 7
    assert new.started_at == at(50)


users = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=200, deadline=None)
@given(
    requested=st.sets(users),
    claimed=st.sets(users),
    started=st.dictionaries(users, st.integers(0, 2000)),
    activity=st.dictionaries(users, st.integers(0, 3000)),
    now=st.integers(0, 3000),
    allowed=st.booleans(),
)
def test_planning_again_after_applying_changes_nothing(
    requested, claimed, started, activity, now, allowed
) -> None:
    usage = RESETTABLE if allowed else USAGE
    requests = {
        u: (UserRequest(last_activity=at(activity[u]) if u in activity else None), 10)
        for u in requested
    }
    records = {u: (new_record(at(s), usage), 20) for u, s in started.items()}
    obs = observe(at(now), requests=requests, claimed=claimed, records=records)
    first = plan(obs, usage)
    after = apply(obs, first)
    second = plan(after, usage)
    # Expiring twice is impossible (the request is gone); creating a record that is already
    # due to expire leaves the expiry to the next pass, which is the only follow-up allowed.
    assert not second.create
    assert not second.forget
    assert not second.update
    assert all(u in first.create for u in second.expire)
    # Nobody is warned twice, and no deadline starts before it was first set.
    assert not set(first.warned) & set(second.warned)
    for user in claimed & requested:
        if user in started and not allowed:
            kept = after.records.get(user)
            if kept is not None:
                assert kept.value.started_at == at(started[user])
