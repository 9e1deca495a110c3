"""The intake API's encoded statuses are byte for byte the view's model, however they are made.

A waiting user's status is spliced into a per-request template when the line moves (see
``controllers/intake/cache.py``); whatever the request, position, length of the line or
settings, the bytes must equal encoding ``user_status`` afresh.
"""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.api.requests import CoreOptions, HMIOptions, UserRequest
from controllers.api.waiting import WaitingEntry, WaitingList
from controllers.intake.cache import ClusterCache
from controllers.settings import APISettings, HAProxySettings, Settings, UsageSettings
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient

user_ids = st.from_regex(r"\A[A-Za-z0-9-]{1,64}\Z").filter(lambda u: u)
versions = st.none() | st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,12}\Z")
times = st.none() | st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)
requests = st.builds(
    UserRequest,
    core=st.none() | st.builds(CoreOptions, version=versions, build=versions),
    hmi=st.none() | st.builds(HMIOptions, type=versions, version=versions),
    requested_at=times,
    last_activity=times,
)


def cache(reset_allowed: bool = False) -> ClusterCache:
    # The sources are never run here: only the folding and encoding are exercised.
    consul = ConsulClient(ClientsConfig.from_env({"CONSUL_HTTP_ADDR": "127.0.0.1:1"}).consul)
    return ClusterCache(
        consul,
        Settings(
            api=APISettings(http_port=0),
            haproxy=HAProxySettings(domain_name="manticore.test"),
            usage=UsageSettings(reset_timer_allowed=reset_allowed),
        ),
    )


def fresh(c: ClusterCache, user: str) -> bytes | None:
    status = c.status(user)
    return None if status is None else status.model_dump_json().encode()


@settings(max_examples=100, deadline=None)
@given(
    users=st.lists(user_ids, min_size=1, max_size=8, unique=True),
    reqs=st.data(),
    reset_allowed=st.booleans(),
    moves=st.lists(st.randoms(use_true_random=False), min_size=1, max_size=4),
    claimed=st.sets(st.integers(0, 7)),
)
def test_spliced_statuses_equal_fresh_encoding(users, reqs, reset_allowed, moves, claimed) -> None:
    c = cache(reset_allowed)
    for user in users:
        c.requests[user] = reqs.draw(st.none() | requests)
    order = list(users)
    for rng in moves:
        rng.shuffle(order)
        c.waiting = WaitingList(
            {u: WaitingEntry(queue=n, claimed=n in claimed) for n, u in enumerate(order)}
        )
        c._positions = None
        c._encoded.clear()
        for user in users:
            assert c.encoded(user) == fresh(c, user), user


def test_an_id_holding_the_template_marker_is_encoded_afresh() -> None:
    c = cache()
    users = ["u1000000007", "a-1000000009-b", "plain"]
    for user in users:
        c.requests[user] = UserRequest(core=CoreOptions(version="1000000007"))
    c.waiting = WaitingList({u: WaitingEntry(queue=n, claimed=False) for n, u in enumerate(users)})
    for user in users:
        got = c.encoded(user)
        assert got == fresh(c, user)
        assert got is not None
        assert b'"position":' in got
    assert c._templates["plain"] is None  # the request itself holds the marker
    c.requests["plain"] = UserRequest()
    c._templates.pop("plain")
    c._encoded.clear()
    assert c.encoded("plain") == fresh(c, "plain")
    assert c._templates["plain"] is not None


def test_a_request_change_rebuilds_the_template() -> None:
    c = cache()
    c.requests["ada"] = UserRequest(hmi=HMIOptions(type="generic"))
    c.waiting = WaitingList({"ada": WaitingEntry(queue=1, claimed=False)})
    before = c.encoded("ada")
    c.requests["ada"] = UserRequest(hmi=HMIOptions(type="other"))
    c._encoded.clear()
    after = c.encoded("ada")
    assert before != after
    assert after == fresh(c, "ada")
