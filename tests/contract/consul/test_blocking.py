"""Blocking queries: index rules, wait parsing, wake-ups only for the watched data."""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import pytest

from devstack.consul.testing import py_consul


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
