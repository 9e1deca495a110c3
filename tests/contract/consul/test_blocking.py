"""Blocking queries: index rules, wait parsing, wake-ups only for the watched data."""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import pytest

from devstack.consul.testing import py_consul, requires_embedded


def _index(r: httpx.Response) -> int:
    return int(r.headers["X-Consul-Index"])


def _later(delay: float, fn) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_blocking_returns_on_write(
    consul_http: httpx.Client, consul_addr: str, kv_prefix: str
) -> None:
    key = f"/v1/kv/{kv_prefix}w"
    consul_http.put(key, content=b"1")
    idx = _index(consul_http.get(key))
    with httpx.Client(base_url=f"http://{consul_addr}", headers=consul_http.headers) as other:
        t = _later(0.2, lambda: other.put(key, content=b"2"))
        started = time.monotonic()
        r = consul_http.get(key, params={"index": idx, "wait": "5s"})
        elapsed = time.monotonic() - started
        t.join()
    assert r.status_code == 200
    assert _index(r) > idx
    assert 0.1 < elapsed < 4


def test_blocking_times_out_with_same_index(consul_http: httpx.Client, kv_prefix: str) -> None:
    key = f"/v1/kv/{kv_prefix}t"
    consul_http.put(key, content=b"1")
    idx = _index(consul_http.get(key))
    started = time.monotonic()
    r = consul_http.get(key, params={"index": idx, "wait": "300ms"})
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    assert _index(r) == idx
    # wait plus at most wait/16 of jitter
    assert 0.29 <= elapsed < 1.5


def test_unrelated_write_does_not_wake_single_key(
    consul_http: httpx.Client, consul_addr: str, kv_prefix: str
) -> None:
    key = f"/v1/kv/{kv_prefix}k"
    consul_http.put(key, content=b"1")
    idx = _index(consul_http.get(key))
    with httpx.Client(base_url=f"http://{consul_addr}", headers=consul_http.headers) as other:
        t = _later(0.1, lambda: other.put(f"/v1/kv/{kv_prefix}other", content=b"x"))
        started = time.monotonic()
        r = consul_http.get(key, params={"index": idx, "wait": "600ms"})
        t.join()
    assert time.monotonic() - started >= 0.59
    assert _index(r) == idx


def test_missing_key_blocks_until_created(
    consul_http: httpx.Client, consul_addr: str, kv_prefix: str
) -> None:
    key = f"/v1/kv/{kv_prefix}later"
    r = consul_http.get(key)
    assert r.status_code == 404
    idx = _index(r)
    with httpx.Client(base_url=f"http://{consul_addr}", headers=consul_http.headers) as other:

        def writes() -> None:
            other.put(f"/v1/kv/{kv_prefix}unrelated", content=b"x")
            time.sleep(0.2)
            other.put(key, content=b"now")

        t = _later(0.1, writes)
        r = consul_http.get(key, params={"index": idx, "wait": "5s"})
        t.join()
    assert r.status_code == 200
    assert r.json()[0]["Key"] == f"{kv_prefix}later"


def test_prefix_watch_wakes_on_delete(
    consul_http: httpx.Client, consul_addr: str, kv_prefix: str
) -> None:
    consul_http.put(f"/v1/kv/{kv_prefix}p/a", content=b"1")
    consul_http.put(f"/v1/kv/{kv_prefix}p/b", content=b"1")
    r = consul_http.get(f"/v1/kv/{kv_prefix}p/", params={"recurse": ""})
    idx = _index(r)
    with httpx.Client(base_url=f"http://{consul_addr}", headers=consul_http.headers) as other:
        t = _later(0.1, lambda: other.delete(f"/v1/kv/{kv_prefix}p/b"))
        r = consul_http.get(
            f"/v1/kv/{kv_prefix}p/", params={"recurse": "", "index": idx, "wait": "5s"}
        )
        t.join()
    assert _index(r) > idx
    assert [e["Key"] for e in r.json()] == [f"{kv_prefix}p/a"]


def test_index_above_current_waits_full_wait(consul_http: httpx.Client, kv_prefix: str) -> None:
    key = f"/v1/kv/{kv_prefix}hi"
    consul_http.put(key, content=b"1")
    idx = _index(consul_http.get(key))
    started = time.monotonic()
    r = consul_http.get(key, params={"index": idx + 1_000_000, "wait": "300ms"})
    assert time.monotonic() - started >= 0.29
    assert _index(r) == idx


@pytest.mark.parametrize("wait", ["10", "abc", "5x"])
def test_invalid_wait(consul_http: httpx.Client, kv_prefix: str, wait: str) -> None:
    r = consul_http.get(f"/v1/kv/{kv_prefix}x", params={"index": "1", "wait": wait})
    assert r.status_code == 400
    assert r.text == "Invalid wait time"


def test_invalid_index(consul_http: httpx.Client, kv_prefix: str) -> None:
    r = consul_http.get(f"/v1/kv/{kv_prefix}x", params={"index": "-1"})
    assert r.status_code == 400
    assert r.text == "Invalid index"


def test_index_zero_does_not_block(consul_http: httpx.Client, kv_prefix: str) -> None:
    started = time.monotonic()
    consul_http.get(f"/v1/kv/{kv_prefix}x", params={"index": "0", "wait": "2s"})
    assert time.monotonic() - started < 1


def test_py_consul_blocking_get(consul_client, consul_addr: str, kv_prefix: str) -> None:
    key = kv_prefix + "pc"
    consul_client.kv.put(key, "1")
    index, _ = consul_client.kv.get(key)
    with py_consul(consul_addr, consul_client.token) as other:
        t = _later(0.1, lambda: other.kv.put(key, "2"))
        new_index, data = consul_client.kv.get(key, index=index, wait="5s")
        t.join()
    assert int(new_index) > int(index)
    assert data["Value"] == b"2"


@pytest.mark.anyio
async def test_many_concurrent_blocking_queries_all_wake(
    consul_addr: str, consul_http: httpx.Client, kv_prefix: str
) -> None:
    prefix = f"{kv_prefix}fan/"
    n = 150
    results: list[int] = []
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(
        base_url=f"http://{consul_addr}", headers=consul_http.headers, limits=limits, timeout=30
    ) as client:
        await client.put(f"/v1/kv/{prefix}seed", content=b"0")
        idx = _index(await client.get(f"/v1/kv/{prefix}", params={"recurse": ""}))

        async def watch() -> None:
            r = await client.get(
                f"/v1/kv/{prefix}", params={"recurse": "", "index": idx, "wait": "10s"}
            )
            results.append(_index(r))

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(watch)
            await anyio.sleep(0.5)
            started = time.monotonic()
            await client.put(f"/v1/kv/{prefix}new", content=b"1")
        elapsed = time.monotonic() - started
    assert len(results) == n
    assert all(i > idx for i in results)
    assert elapsed < 5


@pytest.mark.anyio
async def test_one_write_answers_every_parked_query_with_the_same_bytes(
    consul_addr: str, consul_http: httpx.Client, kv_prefix: str
) -> None:
    """Hundreds of queries parked on one prefix (plain, gzip, keys, exact key, missing key) are
    all answered by one write, each with what a fresh read at that index returns."""
    prefix = f"{kv_prefix}share/"
    n = 200
    # Room for every parked query (n lists plus 4 more kinds every 10th) and the writes.
    limits = httpx.Limits(max_connections=2 * n, max_keepalive_connections=2 * n)
    async with httpx.AsyncClient(
        base_url=f"http://{consul_addr}", headers=consul_http.headers, limits=limits, timeout=30
    ) as client:
        await client.put(f"/v1/kv/{prefix}a", content=b"0")
        idx = _index(await client.get(f"/v1/kv/{prefix}", params={"recurse": ""}))
        got: dict[str, list[httpx.Response]] = {
            "list": [],
            "gzip": [],
            "keys": [],
            "key": [],
            "missing": [],
        }
        wait = {"index": idx, "wait": "20s"}

        async def park(kind: str, path: str, params: dict, headers: dict | None = None) -> None:
            r = await client.get(path, params={**params, **wait}, headers=headers or {})
            got[kind].append(r)

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(park, "list", f"/v1/kv/{prefix}", {"recurse": ""})
                if i % 10 == 0:
                    tg.start_soon(
                        park,
                        "gzip",
                        f"/v1/kv/{prefix}",
                        {"recurse": ""},
                        {"Accept-Encoding": "gzip"},
                    )
                    tg.start_soon(park, "keys", f"/v1/kv/{prefix}", {"keys": ""})
                    tg.start_soon(park, "key", f"/v1/kv/{prefix}a", {})
                    tg.start_soon(park, "missing", f"/v1/kv/{prefix}b", {})
            await anyio.sleep(1.0)
            # Nothing has answered before the write.
            assert not any(got.values())
            started = time.monotonic()
            await client.put(f"/v1/kv/{prefix}b", content=b"x" * 2000)
            fresh = await client.get(f"/v1/kv/{prefix}", params={"recurse": ""})
            while sum(len(v) for k, v in got.items() if k != "key") < n + 3 * (n // 10):
                assert time.monotonic() - started < 10
                await anyio.sleep(0.01)
            # The exact-key watchers wake only for their own key.
            assert not got["key"]
            await client.put(f"/v1/kv/{prefix}a", content=b"1")
        elapsed = time.monotonic() - started
    assert elapsed < 10
    assert fresh.status_code == 200
    assert len(got["list"]) == n
    for r in got["list"] + got["gzip"]:
        assert r.status_code == 200
        assert _index(r) > idx
        assert r.headers["Content-Type"] == "application/json"
    # Every woken list read returned what a fresh read at that index returns, byte for byte.
    assert {_index(r) for r in got["list"]} == {_index(fresh)}
    assert {r.content for r in got["list"]} == {fresh.content}
    for r in got["gzip"]:
        # httpx decoded it; the body was compressed on the wire (2 kB value > 1400 bytes).
        assert r.headers.get("Content-Encoding") == "gzip"
        keys = [e["Key"] for e in r.json()]
        assert keys[0] == f"{prefix}a"
    for r in got["keys"]:
        assert r.status_code == 200
        assert set(r.json()) <= {f"{prefix}a", f"{prefix}b"}
        assert f"{prefix}b" in r.json()
    for r in got["missing"]:
        assert r.status_code == 200
        assert r.json()[0]["Key"] == f"{prefix}b"
    for r in got["key"]:
        assert r.status_code == 200
        assert r.json()[0]["Value"] == "MQ=="
        assert _index(r) > _index(fresh)


@requires_embedded
@pytest.mark.anyio
async def test_parked_queries_are_counted_and_released(consul_server, kv_prefix: str) -> None:
    """Queries sharing one wait still count one each in the stats, and leave nothing behind
    when they time out, are answered, or their client goes away."""
    prefix = f"{kv_prefix}count/"
    limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
    async with httpx.AsyncClient(base_url=consul_server.url, limits=limits, timeout=30) as client:
        await client.put(f"/v1/kv/{prefix}a", content=b"0")
        idx = _index(await client.get(f"/v1/kv/{prefix}", params={"recurse": ""}))

        async def park(wait: str) -> None:
            await client.get(f"/v1/kv/{prefix}", params={"recurse": "", "index": idx, "wait": wait})

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(park, "400ms")
            for _ in range(20):
                tg.start_soon(park, "30s")
            deadline = time.monotonic() + 5
            while consul_server.stats()["BlockingQueries"] < 50 and time.monotonic() < deadline:
                await anyio.sleep(0.02)
            assert consul_server.stats()["BlockingQueries"] == 50
            await anyio.sleep(1.0)
            # The short waits timed out on their own.
            assert consul_server.stats()["BlockingQueries"] == 20
            await client.put(f"/v1/kv/{prefix}b", content=b"1")
        assert consul_server.stats()["BlockingQueries"] == 0
        idx = _index(await client.get(f"/v1/kv/{prefix}", params={"recurse": ""}))
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(park, "60s")
            deadline = time.monotonic() + 5
            while consul_server.stats()["BlockingQueries"] < 20 and time.monotonic() < deadline:
                await anyio.sleep(0.02)
            assert consul_server.stats()["BlockingQueries"] == 20
            tg.cancel_scope.cancel()
    # The client closed its connections: the parked queries are let go within a sweep.
    deadline = time.monotonic() + 6
    while consul_server.stats()["BlockingQueries"] and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    assert consul_server.stats()["BlockingQueries"] == 0
    assert consul_server.call(lambda core: core.state.watches.kv_prefixes) == {}


@pytest.mark.anyio
async def test_parked_health_and_catalog_reads_of_a_service_all_wake_with_its_state(
    consul_addr: str, consul_http: httpx.Client
) -> None:
    """Many watchers of one service (``?passing``, plain, catalog, a stale one) are all answered
    by the check change that moves it, each with what a fresh read returns."""
    import uuid

    name = f"fan-{uuid.uuid4().hex[:8]}"
    n = 60
    kinds = {
        "passing": (f"/v1/health/service/{name}", {"passing": ""}),
        "all": (f"/v1/health/service/{name}", {}),
        "stale": (f"/v1/health/service/{name}", {"stale": ""}),
        "catalog": (f"/v1/catalog/service/{name}", {}),
    }
    got: dict[str, list[httpx.Response]] = {k: [] for k in kinds}
    limits = httpx.Limits(max_connections=5 * n, max_keepalive_connections=5 * n)
    async with httpx.AsyncClient(
        base_url=f"http://{consul_addr}", headers=consul_http.headers, limits=limits, timeout=30
    ) as client:
        r = await client.put(
            "/v1/agent/service/register", json={"Name": name, "Check": {"TTL": "30s"}}
        )
        assert r.status_code == 200
        try:
            idx = _index(await client.get(f"/v1/health/service/{name}"))

            async def park(kind: str) -> None:
                path, params = kinds[kind]
                r = await client.get(path, params={**params, "index": idx, "wait": "20s"})
                got[kind].append(r)

            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    for kind in kinds:
                        tg.start_soon(park, kind)
                await anyio.sleep(1.0)
                assert not any(got.values())
                await client.put(f"/v1/agent/check/pass/service:{name}")
            fresh = {
                kind: await client.get(path, params=params)
                for kind, (path, params) in kinds.items()
            }
        finally:
            await client.put(f"/v1/agent/service/deregister/{name}")
    for kind, responses in got.items():
        assert len(responses) == n, kind
        assert {r.status_code for r in responses} == {200}
        assert {_index(r) for r in responses} == {_index(fresh[kind])}, kind
        assert {r.content for r in responses} == {fresh[kind].content}, kind
        assert {r.headers["X-Consul-Effective-Consistency"] for r in responses} == {
            fresh[kind].headers["X-Consul-Effective-Consistency"]
        }
    assert len(got["passing"][0].json()) == 1
    assert got["stale"][0].headers["X-Consul-Effective-Consistency"] == "stale"
    assert got["all"][0].headers["X-Consul-Effective-Consistency"] == "leader"
