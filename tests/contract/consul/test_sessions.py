"""Sessions: create defaults and validation, renew/info/list, invalidation and lock-delay."""

from __future__ import annotations

import time

import consul
import httpx
import pytest


def test_create_defaults_and_shape(consul_client) -> None:
    sid = consul_client.session.create()
    info = consul_client.session.info(sid)[1]
    assert info["ID"] == sid
    assert info["LockDelay"] == 15_000_000_000
    assert info["Behavior"] == "release"
    assert info["TTL"] == ""
    assert info["NodeChecks"] == ["serfHealth"]
    assert info["CreateIndex"] == info["ModifyIndex"]
    self_node = consul_client.agent.self()["Config"]["NodeName"]
    assert info["Node"] == self_node
    consul_client.session.destroy(sid)


def test_create_with_options(consul_http: httpx.Client) -> None:
    r = consul_http.put(
        "/v1/session/create",
        json={"Name": "lock", "LockDelay": "0s", "Behavior": "delete", "TTL": "30s"},
    )
    assert r.status_code == 200
    sid = r.json()["ID"]
    info = consul_http.get(f"/v1/session/info/{sid}").json()[0]
    assert info["Name"] == "lock"
    assert info["LockDelay"] == 0
    assert info["Behavior"] == "delete"
    assert info["TTL"] == "30s"
    consul_http.put(f"/v1/session/destroy/{sid}")


@pytest.mark.parametrize("ttl", ["5s", "25h"])
def test_ttl_out_of_range(consul_http: httpx.Client, ttl: str) -> None:
    r = consul_http.put("/v1/session/create", json={"TTL": ttl})
    assert r.status_code == 500
    assert r.text.startswith("Invalid Session TTL")


def test_invalid_behavior(consul_http: httpx.Client) -> None:
    r = consul_http.put("/v1/session/create", json={"Behavior": "explode"})
    assert r.status_code == 500
    assert r.text == "Invalid Behavior setting 'explode'"


def test_unknown_check_and_node(consul_http: httpx.Client) -> None:
    r = consul_http.put("/v1/session/create", json={"NodeChecks": ["no-such-check"]})
    assert r.status_code == 500
    assert r.text == "Missing check 'no-such-check' registration"
    r = consul_http.put("/v1/session/create", json={"Node": "no-such-node-xyz"})
    assert r.status_code == 500
    assert r.text == "Missing node registration"


def test_malformed_body_is_400(consul_http: httpx.Client) -> None:
    r = consul_http.put("/v1/session/create", content=b"{not json")
    assert r.status_code == 400


def test_renew(consul_client, consul_http: httpx.Client) -> None:
    sid = consul_client.session.create(ttl=20)
    renewed = consul_client.session.renew(sid)
    assert renewed["ID"] == sid
    assert renewed["TTL"] == "20s"
    consul_client.session.destroy(sid)
    with pytest.raises(consul.NotFound):
        consul_client.session.renew(sid)
    r = consul_http.put(f"/v1/session/renew/{sid}")
    assert r.status_code == 404
    assert r.text == f"Session id '{sid}' not found"


def test_info_unknown_and_list_node(consul_client, consul_http: httpx.Client) -> None:
    assert consul_client.session.info("1" * 36)[1] is None
    r = consul_http.get("/v1/session/info/" + "1" * 36)
    assert r.json() == []
    assert int(r.headers["X-Consul-Index"]) >= 1
    sid = consul_client.session.create(name="listed")
    _, sessions = consul_client.session.list()
    assert sid in [s["ID"] for s in sessions]
    node = consul_client.agent.self()["Config"]["NodeName"]
    _, on_node = consul_client.session.node(node)
    assert sid in [s["ID"] for s in on_node]
    assert consul_client.session.destroy(sid) is True
    assert consul_client.session.destroy(sid) is True


def test_acquire_release_semantics(consul_client, kv_prefix: str) -> None:
    key = kv_prefix + "lock"
    s1 = consul_client.session.create(lock_delay=0)
    s2 = consul_client.session.create(lock_delay=0)
    assert consul_client.kv.put(key, "a", acquire=s1) is True
    _, entry = consul_client.kv.get(key)
    assert entry["Session"] == s1
    assert entry["LockIndex"] == 1
    # re-acquire by the holder: value updated, LockIndex unchanged
    assert consul_client.kv.put(key, "b", acquire=s1) is True
    _, entry = consul_client.kv.get(key)
    assert entry["LockIndex"] == 1
    assert entry["Value"] == b"b"
    assert consul_client.kv.put(key, "c", acquire=s2) is False
    # plain PUT on a locked key succeeds and keeps the lock
    assert consul_client.kv.put(key, "plain") is True
    assert consul_client.kv.get(key)[1]["Session"] == s1
    assert consul_client.kv.put(key, "x", release=s2) is False
    assert consul_client.kv.put(key, "released", release=s1) is True
    _, entry = consul_client.kv.get(key)
    assert "Session" not in entry
    assert entry["Value"] == b"released"
    assert entry["LockIndex"] == 1
    # an explicit release starts no lock-delay
    assert consul_client.kv.put(key, "d", acquire=s2) is True
    assert consul_client.kv.get(key)[1]["LockIndex"] == 2
    consul_client.session.destroy(s1)
    consul_client.session.destroy(s2)


def test_acquire_with_unknown_session_is_500(consul_http: httpx.Client, kv_prefix: str) -> None:
    bogus = "11111111-2222-3333-4444-555555555555"
    r = consul_http.put(f"/v1/kv/{kv_prefix}l", params={"acquire": bogus}, content=b"v")
    assert r.status_code == 500
    assert r.text == f'invalid session "{bogus}"'
    r = consul_http.put(f"/v1/kv/{kv_prefix}l", params={"release": bogus}, content=b"v")
    assert r.text == "false"


def test_destroy_releases_and_starts_lock_delay(consul_client, kv_prefix: str) -> None:
    key = kv_prefix + "delay"
    s1 = consul_client.session.create(lock_delay=1)
    s2 = consul_client.session.create(lock_delay=0)
    assert consul_client.kv.put(key, "held", acquire=s1)
    _, before = consul_client.kv.get(key)
    consul_client.session.destroy(s1)
    _, after = consul_client.kv.get(key)
    assert "Session" not in after
    assert after["ModifyIndex"] > before["ModifyIndex"]
    assert after["LockIndex"] == before["LockIndex"]
    assert after["Value"] == b"held"
    assert consul_client.kv.put(key, "mine", acquire=s2) is False
    # plain writes are not blocked by the lock-delay
    assert consul_client.kv.put(key, "plain") is True
    deadline = time.monotonic() + 5
    while not consul_client.kv.put(key, "mine", acquire=s2):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    consul_client.session.destroy(s2)


def test_behavior_delete_removes_held_keys(consul_client, kv_prefix: str) -> None:
    key = kv_prefix + "ephemeral"
    sid = consul_client.session.create(behavior="delete", lock_delay=0)
    assert consul_client.kv.put(key, "x", acquire=sid)
    consul_client.session.destroy(sid)
    assert consul_client.kv.get(key)[1] is None


def test_check_going_critical_invalidates_session(
    consul_client, consul_http: httpx.Client, kv_prefix: str
) -> None:
    check_id = kv_prefix.rstrip("/") + "-guard"
    r = consul_http.put(
        "/v1/agent/check/register",
        json={"Name": check_id, "TTL": "30s", "Status": "passing"},
    )
    assert r.status_code == 200
    try:
        sid = consul_client.session.create(checks=["serfHealth", check_id], lock_delay=0)
        assert consul_client.kv.put(kv_prefix + "g", "v", acquire=sid)
        consul_http.put(f"/v1/agent/check/fail/{check_id}", params={"note": "down"})
        deadline = time.monotonic() + 5
        while consul_client.session.info(sid)[1] is not None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "Session" not in consul_client.kv.get(kv_prefix + "g")[1]
        # a session cannot be created on a critical check
        r = consul_http.put("/v1/session/create", json={"NodeChecks": [check_id]})
        assert r.status_code == 500
        assert r.text == f"Check '{check_id}' is in critical state"
    finally:
        consul_http.put(f"/v1/agent/check/deregister/{check_id}")


def test_session_list_blocks_until_create(consul_http: httpx.Client, consul_addr: str) -> None:
    import threading

    r = consul_http.get("/v1/session/list")
    idx = int(r.headers["X-Consul-Index"])
    created: list[str] = []

    def create() -> None:
        time.sleep(0.1)
        with httpx.Client(base_url=f"http://{consul_addr}", headers=consul_http.headers) as c:
            created.append(c.put("/v1/session/create", json={"LockDelay": "0s"}).json()["ID"])

    t = threading.Thread(target=create)
    t.start()
    r = consul_http.get("/v1/session/list", params={"index": idx, "wait": "5s"})
    t.join()
    assert int(r.headers["X-Consul-Index"]) > idx
    assert created[0] in [s["ID"] for s in r.json()]
    consul_http.put(f"/v1/session/destroy/{created[0]}")


@pytest.mark.slow
def test_ttl_expiry_in_real_time(consul_client, kv_prefix: str) -> None:
    """Consul guarantees expiry no earlier than TTL and, in practice, by 2 x TTL."""
    sid = consul_client.session.create(ttl=10, lock_delay=0)
    assert consul_client.kv.put(kv_prefix + "ttl", "v", acquire=sid)
    started = time.monotonic()
    time.sleep(9.5)
    assert consul_client.session.info(sid)[1] is not None
    while consul_client.session.info(sid)[1] is not None:
        assert time.monotonic() - started < 23
        time.sleep(0.25)
    assert time.monotonic() - started >= 10
    assert "Session" not in consul_client.kv.get(kv_prefix + "ttl")[1]
