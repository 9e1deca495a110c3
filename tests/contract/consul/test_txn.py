"""Transactions: every KV verb, atomic rollback, Consul's 200/409/413 bodies and texts."""

from __future__ import annotations

import base64

import httpx
import pytest


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _txn(http: httpx.Client, ops: list[dict]) -> httpx.Response:
    return http.put("/v1/txn", json=ops)


def test_set_get_and_result_shape(consul_http: httpx.Client, kv_prefix: str) -> None:
    key = kv_prefix + "a"
    r = _txn(consul_http, [{"KV": {"Verb": "set", "Key": key, "Value": _b64(b"1"), "Flags": 7}}])
    assert r.status_code == 200
    body = r.json()
    assert body["Errors"] is None
    kv = body["Results"][0]["KV"]
    assert kv["Key"] == key
    assert kv["Value"] is None
    assert kv["Flags"] == 7
    assert kv["CreateIndex"] == kv["ModifyIndex"]
    r = _txn(consul_http, [{"KV": {"Verb": "get", "Key": key}}])
    assert base64.b64decode(r.json()["Results"][0]["KV"]["Value"]) == b"1"
    assert "X-Consul-Index" not in r.headers
    assert r.headers["X-Consul-KnownLeader"] == "true"


def test_all_ops_share_one_index(consul_http: httpx.Client, kv_prefix: str) -> None:
    ops = [
        {"KV": {"Verb": "set", "Key": f"{kv_prefix}m{i}", "Value": _b64(b"x")}} for i in range(3)
    ]
    results = _txn(consul_http, ops).json()["Results"]
    assert len({res["KV"]["ModifyIndex"] for res in results}) == 1


def test_rollback_reports_every_error(consul_http: httpx.Client, kv_prefix: str) -> None:
    consul_http.put(f"/v1/kv/{kv_prefix}exists", content=b"v")
    r = _txn(
        consul_http,
        [
            {"KV": {"Verb": "set", "Key": f"{kv_prefix}new", "Value": _b64(b"v")}},
            {"KV": {"Verb": "check-not-exists", "Key": f"{kv_prefix}exists"}},
            {"KV": {"Verb": "get", "Key": f"{kv_prefix}missing"}},
        ],
    )
    assert r.status_code == 409
    body = r.json()
    assert body["Results"] is None
    assert body["Errors"] == [
        {"OpIndex": 1, "What": f'key "{kv_prefix}exists" exists'},
        {"OpIndex": 2, "What": f'key "{kv_prefix}missing" doesn\'t exist'},
    ]
    # nothing was applied
    assert consul_http.get(f"/v1/kv/{kv_prefix}new").status_code == 404


def test_cas_and_check_index_texts(consul_http: httpx.Client, kv_prefix: str) -> None:
    key = kv_prefix + "c"
    consul_http.put(f"/v1/kv/{key}", content=b"v")
    idx = consul_http.get(f"/v1/kv/{key}").json()[0]["ModifyIndex"]
    r = _txn(consul_http, [{"KV": {"Verb": "cas", "Key": key, "Value": "", "Index": idx + 99}}])
    assert r.status_code == 409
    assert r.json()["Errors"][0]["What"] == f'failed to set key "{key}", index is stale'
    r = _txn(consul_http, [{"KV": {"Verb": "check-index", "Key": key, "Index": idx + 1}}])
    assert r.json()["Errors"][0]["What"] == (
        f'failed index check for key "{key}", current modify index {idx} != {idx + 1}'
    )
    r = _txn(consul_http, [{"KV": {"Verb": "check-index", "Key": key + "x", "Index": 1}}])
    assert r.json()["Errors"][0]["What"] == f'failed to check index, key "{key}x" doesn\'t exist'
    r = _txn(
        consul_http,
        [
            {"KV": {"Verb": "check-index", "Key": key, "Index": idx}},
            {"KV": {"Verb": "cas", "Key": key, "Value": _b64(b"2"), "Index": idx}},
        ],
    )
    assert r.status_code == 200
    assert len(r.json()["Results"]) == 2
    r = _txn(consul_http, [{"KV": {"Verb": "delete-cas", "Key": key, "Index": idx}}])
    assert r.json()["Errors"][0]["What"] == f'failed to delete key "{key}", index is stale'


def test_lock_unlock_check_session(consul_http: httpx.Client, kv_prefix: str) -> None:
    key = kv_prefix + "leader"
    s1 = consul_http.put("/v1/session/create", json={"LockDelay": "0s"}).json()["ID"]
    s2 = consul_http.put("/v1/session/create", json={"LockDelay": "0s"}).json()["ID"]
    try:
        r = _txn(consul_http, [{"KV": {"Verb": "lock", "Key": key, "Value": "", "Session": s1}}])
        assert r.status_code == 200
        assert r.json()["Results"][0]["KV"]["Session"] == s1
        r = _txn(consul_http, [{"KV": {"Verb": "lock", "Key": key, "Session": s2}}])
        assert r.json()["Errors"][0]["What"] == f'failed to lock key "{key}", lock is already held'
        # the fencing pattern: write only while holding the lock
        fenced = [
            {"KV": {"Verb": "check-session", "Key": key, "Session": s2}},
            {"KV": {"Verb": "set", "Key": kv_prefix + "data", "Value": _b64(b"x")}},
        ]
        r = _txn(consul_http, fenced)
        assert r.status_code == 409
        assert r.json()["Errors"] == [
            {
                "OpIndex": 0,
                "What": f'failed session check for key "{key}", current session "{s1}" != "{s2}"',
            }
        ]
        r = _txn(consul_http, [{"KV": {"Verb": "unlock", "Key": key, "Session": s2}}])
        assert r.json()["Errors"][0]["What"] == (
            f'failed to unlock key "{key}", lock isn\'t held, or is held by another session'
        )
        r = _txn(consul_http, [{"KV": {"Verb": "unlock", "Key": key, "Session": s1}}])
        assert r.status_code == 200
        bogus = "11111111-2222-3333-4444-555555555555"
        r = _txn(consul_http, [{"KV": {"Verb": "lock", "Key": key, "Session": bogus}}])
        assert r.json()["Errors"][0]["What"] == f'invalid session "{bogus}"'
    finally:
        consul_http.put(f"/v1/session/destroy/{s1}")
        consul_http.put(f"/v1/session/destroy/{s2}")


def test_lock_delay_in_txn(consul_http: httpx.Client, kv_prefix: str) -> None:
    key = kv_prefix + "ld"
    s1 = consul_http.put("/v1/session/create", json={"LockDelay": "10s"}).json()["ID"]
    s2 = consul_http.put("/v1/session/create", json={"LockDelay": "0s"}).json()["ID"]
    try:
        assert consul_http.put(f"/v1/kv/{key}", params={"acquire": s1}, content=b"").text == "true"
        consul_http.put(f"/v1/session/destroy/{s1}")
        r = _txn(consul_http, [{"KV": {"Verb": "lock", "Key": key, "Session": s2}}])
        assert r.json()["Errors"][0]["What"] == f'failed to lock key "{key}" due to lock delay'
    finally:
        consul_http.put(f"/v1/session/destroy/{s2}")


def test_get_tree_delete_tree_and_delete(consul_http: httpx.Client, kv_prefix: str) -> None:
    for k in ("t/a", "t/b", "u"):
        consul_http.put(f"/v1/kv/{kv_prefix}{k}", content=k.encode())
    r = _txn(consul_http, [{"KV": {"Verb": "get-tree", "Key": kv_prefix + "t/"}}])
    results = r.json()["Results"]
    assert [res["KV"]["Key"] for res in results] == [kv_prefix + "t/a", kv_prefix + "t/b"]
    assert base64.b64decode(results[0]["KV"]["Value"]) == b"t/a"
    r = _txn(
        consul_http,
        [
            {"KV": {"Verb": "delete-tree", "Key": kv_prefix + "t/"}},
            {"KV": {"Verb": "delete", "Key": kv_prefix + "u"}},
        ],
    )
    assert r.status_code == 200
    assert r.json() == {"Results": None, "Errors": None}
    assert consul_http.get(f"/v1/kv/{kv_prefix}", params={"recurse": ""}).status_code == 404


def test_unknown_verb(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = _txn(consul_http, [{"KV": {"Verb": "frobnicate", "Key": kv_prefix + "x"}}])
    assert r.status_code == 409
    assert r.json()["Errors"][0]["What"] == 'unknown KV verb "frobnicate"'


def test_too_many_operations(consul_http: httpx.Client, kv_prefix: str) -> None:
    ops = [{"KV": {"Verb": "get", "Key": f"{kv_prefix}{i}"}} for i in range(129)]
    r = _txn(consul_http, ops)
    assert r.status_code == 413
    assert r.text == "Transaction contains too many operations (129 > 128)"
    ops = [{"KV": {"Verb": "set", "Key": f"{kv_prefix}{i}", "Value": ""}} for i in range(128)]
    assert _txn(consul_http, ops).status_code == 200


def test_value_too_large(consul_http: httpx.Client, kv_prefix: str) -> None:
    big = _b64(b"x" * (400 * 1024))  # 533 KiB encoded: over txn_max_req_len
    r = _txn(consul_http, [{"KV": {"Verb": "set", "Key": kv_prefix + "big", "Value": big}}])
    assert r.status_code == 413


def test_bad_json_and_base64(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = consul_http.put("/v1/txn", content=b"[{")
    assert r.status_code == 400
    assert r.text.startswith("Failed to parse body")
    r = _txn(consul_http, [{"KV": {"Verb": "set", "Key": kv_prefix + "x", "Value": "!!!"}}])
    assert r.status_code == 400
    assert r.text.startswith("Failed to parse body")


def test_py_consul_txn(consul_client, kv_prefix: str) -> None:
    import consul

    ok = consul_client.txn.put(
        [{"KV": {"Verb": "set", "Key": kv_prefix + "p", "Value": _b64(b"1")}}]
    )
    assert ok["Errors"] is None
    with pytest.raises(consul.ConsulException, match="409"):
        consul_client.txn.put([{"KV": {"Verb": "get", "Key": kv_prefix + "missing"}}])
