"""KV contract: shapes, flags, CAS, locks by PUT, deletes, indexes, limits and bad input."""

from __future__ import annotations

import base64

import httpx
import pytest


def test_put_get_shape_and_field_order(consul_http: httpx.Client, kv_prefix: str) -> None:
    key = kv_prefix + "a"
    r = consul_http.put(f"/v1/kv/{key}", content=b"hello")
    assert r.status_code == 200
    assert r.text == "true"
    r = consul_http.get(f"/v1/kv/{key}")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert isinstance(body, list)
    assert len(body) == 1
    entry = body[0]
    assert list(entry) == ["LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"]
    assert entry["Key"] == key
    assert base64.b64decode(entry["Value"]) == b"hello"
    assert entry["LockIndex"] == 0
    assert entry["Flags"] == 0
    assert int(r.headers["X-Consul-Index"]) == entry["ModifyIndex"]
    assert r.headers["X-Consul-KnownLeader"] == "true"
    assert "X-Consul-LastContact" in r.headers


def test_empty_value_is_null(consul_client, kv_prefix: str) -> None:
    consul_client.kv.put(kv_prefix + "empty", "")
    consul_client.kv.put(kv_prefix + "none", None)
    _, data = consul_client.kv.get(kv_prefix + "empty")
    assert data["Value"] is None
    _, data = consul_client.kv.get(kv_prefix + "none")
    assert data["Value"] is None


def test_missing_key_404_with_index(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = consul_http.get(f"/v1/kv/{kv_prefix}missing")
    assert r.status_code == 404
    assert r.content == b""
    assert int(r.headers["X-Consul-Index"]) >= 1
    assert r.headers["X-Consul-KnownLeader"] == "true"


def test_py_consul_missing_key_returns_none(consul_client, kv_prefix: str) -> None:
    index, data = consul_client.kv.get(kv_prefix + "nope")
    assert data is None
    assert int(index) >= 1


def test_get_without_key_is_400(consul_http: httpx.Client) -> None:
    r = consul_http.get("/v1/kv/")
    assert r.status_code == 400
    assert r.text == "Missing key name"


def test_flags_set_and_reset_when_omitted(consul_client, kv_prefix: str) -> None:
    key = kv_prefix + "flags"
    assert consul_client.kv.put(key, "v", flags=42)
    assert consul_client.kv.get(key)[1]["Flags"] == 42
    assert consul_client.kv.put(key, "v2")
    assert consul_client.kv.get(key)[1]["Flags"] == 0


def test_bad_flags_is_500(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = consul_http.put(f"/v1/kv/{kv_prefix}x", params={"flags": "nope"}, content=b"v")
    assert r.status_code == 500


def test_cas(consul_client, kv_prefix: str) -> None:
    key = kv_prefix + "cas"
    assert consul_client.kv.put(key, "1", cas=0) is True
    assert consul_client.kv.put(key, "2", cas=0) is False
    _, entry = consul_client.kv.get(key)
    assert consul_client.kv.put(key, "3", cas=entry["ModifyIndex"] + 1000) is False
    assert consul_client.kv.put(key, "3", cas=entry["ModifyIndex"]) is True
    assert consul_client.kv.get(key)[1]["Value"] == b"3"
    assert consul_client.kv.put(kv_prefix + "absent", "x", cas=5) is False


def test_modify_index_moves_and_create_index_stays(consul_client, kv_prefix: str) -> None:
    key = kv_prefix + "idx"
    consul_client.kv.put(key, "1")
    _, first = consul_client.kv.get(key)
    consul_client.kv.put(key, "2")
    _, second = consul_client.kv.get(key)
    assert second["CreateIndex"] == first["CreateIndex"]
    assert second["ModifyIndex"] > first["ModifyIndex"]


def test_raw(consul_http: httpx.Client, kv_prefix: str) -> None:
    consul_http.put(f"/v1/kv/{kv_prefix}raw", content=b"\x00\x01binary")
    r = consul_http.get(f"/v1/kv/{kv_prefix}raw", params={"raw": ""})
    assert r.status_code == 200
    assert r.content == b"\x00\x01binary"
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Content-Security-Policy"] == "sandbox"


def test_recurse_is_plain_prefix_sorted(consul_client, kv_prefix: str) -> None:
    for k in ("foo/b", "foo", "foo1", "foo/a", "bar"):
        consul_client.kv.put(kv_prefix + k, k)
    _, entries = consul_client.kv.get(kv_prefix + "foo", recurse=True)
    assert [e["Key"] for e in entries] == [kv_prefix + k for k in ("foo", "foo/a", "foo/b", "foo1")]
    _, none = consul_client.kv.get(kv_prefix + "zzz", recurse=True)
    assert none is None


def test_keys_and_separator(consul_client, consul_http: httpx.Client, kv_prefix: str) -> None:
    base = kv_prefix + "base/"
    consul_client.kv.put(base + "foo", "1")
    consul_client.kv.put(base + "base/foo", "2")
    consul_client.kv.put(base + "base/bar", "3")
    _, keys = consul_client.kv.get(base, keys=True, separator="/")
    assert keys == [base + "base/", base + "foo"]
    _, keys = consul_client.kv.get(base, keys=True)
    assert keys == [base + "base/bar", base + "base/foo", base + "foo"]
    r = consul_http.get(f"/v1/kv/{base}", params={"keys": "", "seperator": "/"})
    assert r.json() == [base + "base/", base + "foo"]
    r = consul_http.get(f"/v1/kv/{kv_prefix}nothing/", params={"keys": ""})
    assert r.status_code == 404


def test_delete_and_recurse_and_cas(consul_client, kv_prefix: str) -> None:
    consul_client.kv.put(kv_prefix + "d/1", "1")
    consul_client.kv.put(kv_prefix + "d/2", "2")
    consul_client.kv.put(kv_prefix + "d2", "3")
    assert consul_client.kv.delete(kv_prefix + "never-existed") is True
    assert consul_client.kv.delete(kv_prefix + "d/", recurse=True) is True
    assert consul_client.kv.get(kv_prefix + "d/", recurse=True)[1] is None
    assert consul_client.kv.get(kv_prefix + "d2")[1] is not None
    _, entry = consul_client.kv.get(kv_prefix + "d2")
    assert consul_client.kv.delete(kv_prefix + "d2", cas=entry["ModifyIndex"] + 1) is False
    assert consul_client.kv.delete(kv_prefix + "d2", cas=entry["ModifyIndex"]) is True
    assert consul_client.kv.delete(kv_prefix + "gone", cas=3) is True


def test_prefix_index_includes_tombstones(consul_http: httpx.Client, kv_prefix: str) -> None:
    consul_http.put(f"/v1/kv/{kv_prefix}t/a", content=b"1")
    consul_http.put(f"/v1/kv/{kv_prefix}t/b", content=b"1")
    before = int(
        consul_http.get(f"/v1/kv/{kv_prefix}t/", params={"recurse": ""}).headers["X-Consul-Index"]
    )
    consul_http.delete(f"/v1/kv/{kv_prefix}t/b")
    r = consul_http.get(f"/v1/kv/{kv_prefix}t/", params={"recurse": ""})
    assert int(r.headers["X-Consul-Index"]) > before
    assert [e["Key"] for e in r.json()] == [kv_prefix + "t/a"]


def test_identical_put_keeps_modify_index(consul_client, kv_prefix: str) -> None:
    key = kv_prefix + "same"
    consul_client.kv.put(key, "v", flags=1)
    _, first = consul_client.kv.get(key)
    consul_client.kv.put(key, "v", flags=1)
    _, second = consul_client.kv.get(key)
    assert second["ModifyIndex"] == first["ModifyIndex"]


def test_value_size_limit(consul_http: httpx.Client, kv_prefix: str) -> None:
    ok = consul_http.put(f"/v1/kv/{kv_prefix}big", content=b"x" * 524288)
    assert ok.status_code == 200
    r = consul_http.put(f"/v1/kv/{kv_prefix}big", content=b"x" * (524288 + 1))
    assert r.status_code == 413


@pytest.mark.parametrize(
    "params",
    [{"cas": "0", "acquire": "x"}, {"cas": "0", "release": "x"}, {"acquire": "a", "release": "b"}],
)
def test_conflicting_flags(consul_http: httpx.Client, kv_prefix: str, params: dict) -> None:
    r = consul_http.put(f"/v1/kv/{kv_prefix}c", params=params, content=b"v")
    assert r.status_code == 400
    assert r.text.startswith("Conflicting flags")


def test_delete_recurse_with_cas_is_400(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = consul_http.delete(f"/v1/kv/{kv_prefix}c", params={"recurse": "", "cas": "1"})
    assert r.status_code == 400


def test_put_without_key_is_400(consul_http: httpx.Client) -> None:
    r = consul_http.put("/v1/kv/", content=b"v")
    assert r.status_code == 400
    assert r.text == "Missing key name"


def test_wrong_method_is_405(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = consul_http.post(f"/v1/kv/{kv_prefix}x", content=b"v")
    assert r.status_code == 405
    assert "Allow" in r.headers


@pytest.mark.parametrize("key", [" lead", "trail "])
def test_keys_with_outer_spaces_rejected(consul_http: httpx.Client, key: str) -> None:
    r = consul_http.put(f"/v1/kv/{key}", content=b"v")
    assert r.status_code == 400
    assert consul_http.get(f"/v1/kv/{key}").status_code in (400, 404)


def test_dot_dot_segment_is_redirected_not_aliased(
    consul_http: httpx.Client, kv_prefix: str
) -> None:
    # httpx would normalise a literal "..", so send it percent-encoded. Go's mux cleans the
    # decoded path and redirects (301) instead of letting the key alias another one.
    r = consul_http.put(f"/v1/kv/{kv_prefix}a/%2E%2E/b", content=b"v")
    assert r.status_code == 301
    assert r.headers["Location"] == f"/v1/kv/{kv_prefix}b"
    assert consul_http.get(f"/v1/kv/{kv_prefix}b").status_code == 404


def test_special_characters_round_trip(consul_client, kv_prefix: str) -> None:
    key = kv_prefix + "sp-ec_ial.key/x=1"
    assert consul_client.kv.put(key, "ok")
    assert consul_client.kv.get(key)[1]["Value"] == b"ok"


def test_stale_and_consistent_conflict(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = consul_http.get(f"/v1/kv/{kv_prefix}x", params={"stale": "", "consistent": ""})
    assert r.status_code == 400
    assert r.text == "Cannot specify ?stale with ?consistent, conflicting semantics."


def test_unknown_datacenter(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = consul_http.get(f"/v1/kv/{kv_prefix}x", params={"dc": "nowhere-dc"})
    assert r.status_code == 500
    assert "No path to datacenter" in r.text


def test_a_list_shows_every_change_of_an_entry(consul_http: httpx.Client, kv_prefix: str) -> None:
    """Each change of one entry (value, flags, lock, unlock, delete) is in the next list and
    the next single read, whatever was answered for that entry before."""
    key = kv_prefix + "l/k"
    sid = consul_http.put("/v1/session/create", json={"TTL": "30s"}).json()["ID"]

    def listed() -> dict[str, object]:
        entries = consul_http.get(f"/v1/kv/{kv_prefix}l/", params={"recurse": ""}).json()
        single = consul_http.get(f"/v1/kv/{key}").json()
        assert entries == single
        return dict(entries[0])

    try:
        consul_http.put(f"/v1/kv/{key}", content=b"one")
        first = listed()
        assert base64.b64decode(first["Value"]) == b"one"  # type: ignore[arg-type]
        consul_http.put(f"/v1/kv/{key}", params={"flags": "7"}, content=b"one")
        assert listed()["Flags"] == 7
        assert consul_http.put(f"/v1/kv/{key}", params={"acquire": sid}, content=b"two").json()
        locked = listed()
        assert locked["Session"] == sid
        assert locked["LockIndex"] == 1
        assert base64.b64decode(locked["Value"]) == b"two"  # type: ignore[arg-type]
        assert consul_http.put(f"/v1/kv/{key}", params={"release": sid}, content=b"two").json()
        released = listed()
        assert "Session" not in released
        assert released["ModifyIndex"] > locked["ModifyIndex"]  # type: ignore[operator]
        consul_http.delete(f"/v1/kv/{key}")
        assert consul_http.get(f"/v1/kv/{kv_prefix}l/", params={"recurse": ""}).status_code == 404
    finally:
        consul_http.put(f"/v1/session/destroy/{sid}")
