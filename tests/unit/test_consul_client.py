"""The Consul client: py-consul over the httpx transport, against real HTTP on 127.0.0.1.

These tests serve scripted answers from a small aiohttp server so that every status code, header
and timing the transport must handle can be produced on demand (the embedded Consul answers
correctly, which is exactly what error-path tests cannot use). Behaviour against the embedded
Consul itself is covered in ``test_sources_consul.py``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from aiohttp import web

from reconciler.clients.config import ConsulConfig
from reconciler.clients.consul import (
    ConsulClient,
    HttpxTransport,
    KVEntry,
    KVOp,
    aggregate_status,
    translate_status,
)
from reconciler.clients.errors import (
    BadRequest,
    ClientError,
    Conflict,
    NotFound,
    PermissionDenied,
    Throttled,
    Timeout,
    TooLarge,
    TransactionRolledBack,
    Unavailable,
)

pytestmark = pytest.mark.anyio

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Scripted:
    """An HTTP server whose answers the test sets per ``(method, path)``."""

    url: str = ""
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def on(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def reply(
        self,
        method: str,
        path: str,
        status: int = 200,
        body: Any = None,
        *,
        index: int | None = 10,
        text: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            hdrs = dict(headers or {})
            if index is not None:
                hdrs["X-Consul-Index"] = str(index)
            hdrs.setdefault("X-Consul-KnownLeader", "true")
            payload = text if text is not None else ("" if body is None else json.dumps(body))
            return web.Response(status=status, text=payload, headers=hdrs)

        self.on(method, path, handler)

    def count(self, method: str, path: str) -> int:
        return sum(1 for s in self.seen if s.method == method and s.path == path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                await request.read(),
            )
        )
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return web.Response(status=599, text="no route scripted")
        return await handler(request)


@pytest.fixture
async def server(anyio_backend: str) -> AsyncIterator[Scripted]:
    scripted = Scripted()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    scripted.url = f"127.0.0.1:{port}"
    yield scripted
    await runner.cleanup()


def make_client(server: Scripted, **kwargs: Any) -> ConsulClient:
    host, port = server.url.split(":")
    config = ConsulConfig(host=host, port=int(port), token=kwargs.pop("token", None))
    kwargs.setdefault("read_attempts", 1)
    return ConsulClient(config, **kwargs)


def kv_json(key: str, value: bytes | None, modify: int = 5, **extra: Any) -> dict[str, Any]:
    return {
        "Key": key,
        "Value": base64.b64encode(value).decode() if value is not None else None,
        "Flags": extra.get("flags", 0),
        "CreateIndex": 3,
        "ModifyIndex": modify,
        "LockIndex": extra.get("lock", 0),
        **({"Session": extra["session"]} if "session" in extra else {}),
    }


# ----------------------------------------------------------------------------- reads


async def test_kv_get_decodes_entry_and_exposes_known_leader(server: Scripted) -> None:
    server.reply(
        "GET",
        "/v1/kv/a/b",
        body=[kv_json("a/b", b"hello", modify=7, flags=3, lock=1, session="s-1")],
        index=7,
        headers={"X-Consul-KnownLeader": "false"},
    )
    async with make_client(server) as client:
        index, entry = await client.kv_get("a/b")
        assert index == 7
        assert entry == KVEntry(
            key="a/b",
            value=b"hello",
            flags=3,
            create_index=3,
            modify_index=7,
            lock_index=1,
            session="s-1",
        )
        assert entry.text == "hello"
        assert client.known_leader is False


async def test_missing_key_returns_the_404_index_and_no_entry(server: Scripted) -> None:
    server.reply("GET", "/v1/kv/missing", status=404, index=42)
    server.reply("GET", "/v1/kv/prefix/", status=404, index=43)
    async with make_client(server) as client:
        assert await client.kv_get("missing") == (42, None)
        assert await client.kv_list("prefix/") == (43, [])


async def test_index_zero_from_the_server_is_read_as_one(server: Scripted) -> None:
    server.reply("GET", "/v1/kv/k", body=[kv_json("k", None)], index=0)
    async with make_client(server) as client:
        index, entry = await client.kv_get("k")
    assert index == 1
    assert entry is not None
    assert entry.value is None


async def test_missing_index_header_is_unavailable(server: Scripted) -> None:
    server.reply("GET", "/v1/kv/k", body=[kv_json("k", b"v")], index=None)
    async with make_client(server) as client:
        with pytest.raises(Unavailable, match="index"):
            await client.kv_get("k")


async def test_blocking_list_sends_index_and_wait(server: Scripted) -> None:
    server.reply("GET", "/v1/kv/p/", body=[kv_json("p/x", b"1"), kv_json("p/y", b"2")], index=12)
    async with make_client(server) as client:
        index, entries = await client.kv_list("p/", index=11, wait=2.5)
    assert index == 12
    assert [e.key for e in entries] == ["p/x", "p/y"]
    query = server.seen[-1].query
    assert query["index"] == "11"
    assert query["wait"] == "2500ms"
    assert "recurse" in query


async def test_answers_are_asked_for_uncompressed_unless_configured(server: Scripted) -> None:
    # A local agent compressing every prefix list costs both sides CPU for nothing.
    server.reply("GET", "/v1/kv/p/", body=[kv_json("p/x", b"1")], index=12)
    server.reply("GET", "/v1/kv/p/x", body=[kv_json("p/x", b"1")], index=12)
    async with make_client(server) as client:
        await client.kv_list("p/", index=11, wait=1)  # the long-poll pool
        await client.kv_get("p/x")  # the short-request pool
    assert [s.headers.get("Accept-Encoding") for s in server.seen] == ["identity", "identity"]
    host, port = server.url.split(":")
    config = ConsulConfig(host=host, port=int(port), compress=True)
    async with ConsulClient(config, read_attempts=1) as client:
        await client.kv_list("p/")
    assert "gzip" in server.seen[-1].headers["Accept-Encoding"]


async def test_a_non_blocking_read_sends_no_index(server: Scripted) -> None:
    server.reply("GET", "/v1/kv/p/", body=[], index=12)
    async with make_client(server) as client:
        await client.kv_list("p/", index=0, wait=60)
    assert "index" not in server.seen[-1].query
    assert "wait" not in server.seen[-1].query


async def test_token_is_sent_on_every_endpoint_even_where_py_consul_forgets(
    server: Scripted,
) -> None:
    server.reply("PUT", "/v1/txn", body={"Results": [], "Errors": None}, index=None)
    server.reply("GET", "/v1/status/leader", body="127.0.0.1:8300", index=None)
    server.reply("GET", "/v1/kv/k", status=404, index=3)
    async with make_client(server, token="tok-123") as client:
        await client.txn([KVOp.set("k", b"v")])
        assert await client.status_leader() == "127.0.0.1:8300"
        await client.kv_get("k")
    assert [s.headers.get("X-Consul-Token") for s in server.seen] == ["tok-123"] * 3


async def test_health_service_parses_instances_and_aggregates_checks(server: Scripted) -> None:
    entry = {
        "Node": {"Node": "n1", "Address": "10.0.0.1"},
        "Service": {"ID": "web-1", "Service": "web", "Tags": ["v1"], "Address": "", "Port": 8080},
        "Checks": [
            {"CheckID": "serfHealth", "Name": "Serf", "Status": "passing"},
            {"CheckID": "service:web-1", "Name": "http", "Status": "warning", "Output": "slow"},
        ],
    }
    server.reply("GET", "/v1/health/service/web", body=[entry], index=30)
    async with make_client(server) as client:
        index, instances = await client.health_service("web", passing=True, index=29, wait=1)
    assert index == 30
    (inst,) = instances
    assert (inst.service_id, inst.address, inst.port, inst.tags) == (
        "web-1",
        "10.0.0.1",
        8080,
        ("v1",),
    )
    assert inst.status == "warning"
    assert not inst.passing
    assert server.seen[-1].query["passing"] == "1"


def test_aggregate_status_order() -> None:
    assert aggregate_status([]) == "passing"
    assert aggregate_status(["passing", "warning"]) == "warning"
    assert aggregate_status(["warning", "critical", "passing"]) == "critical"
    assert aggregate_status(["critical", "maintenance"]) == "maintenance"
    assert aggregate_status(["bogus"]) == "critical"


async def test_catalog_services_and_session_info(server: Scripted) -> None:
    server.reply("GET", "/v1/catalog/services", body={"consul": [], "web": ["a"]}, index=4)
    server.reply(
        "GET",
        "/v1/session/info/s1",
        body=[{"ID": "s1", "Name": "lock", "TTL": "15s", "LockDelay": 0, "Behavior": "delete"}],
    )
    server.reply("GET", "/v1/session/info/gone", body=[])
    async with make_client(server) as client:
        assert await client.catalog_services() == (4, {"consul": [], "web": ["a"]})
        info = await client.session_info("s1")
        assert info is not None
        assert (info.id, info.ttl, info.behavior) == ("s1", "15s", "delete")
        assert await client.session_info("gone") is None


# ----------------------------------------------------------------------------- writes


async def test_kv_put_sends_raw_body_and_flags(server: Scripted) -> None:
    server.reply("PUT", "/v1/kv/k", body=True, index=None)
    async with make_client(server) as client:
        assert await client.kv_put("k", b"\x00bin", cas=0, flags=9) is True
    seen = server.seen[-1]
    assert seen.body == b"\x00bin"
    assert (seen.query["cas"], seen.query["flags"]) == ("0", "9")


async def test_failed_cas_is_false_not_an_error(server: Scripted) -> None:
    server.reply("PUT", "/v1/kv/k", body=False, index=None)
    server.reply("DELETE", "/v1/kv/k", body=False, index=None)
    async with make_client(server) as client:
        assert await client.kv_put("k", "v", cas=3) is False
        assert await client.kv_delete("k", cas=3) is False


async def test_oversized_values_and_transactions_fail_before_sending(server: Scripted) -> None:
    async with make_client(server) as client:
        with pytest.raises(TooLarge):
            await client.kv_put("k", b"x" * (512 * 1024 + 1))
        with pytest.raises(TooLarge):
            await client.txn([KVOp.delete(f"k{i}") for i in range(129)])
        with pytest.raises(BadRequest):
            await client.kv_put("/abs", b"x")
    assert server.seen == []


async def test_txn_success_decodes_results(server: Scripted) -> None:
    server.reply(
        "PUT",
        "/v1/txn",
        body={"Results": [{"KV": kv_json("k", b"v", modify=8)}], "Errors": None},
        index=None,
    )
    async with make_client(server) as client:
        result = await client.txn([KVOp.check_session("lock", "s1"), KVOp.set("k", b"v")])
    assert result.results[0].value == b"v"
    sent = json.loads(server.seen[-1].body)
    assert sent[0] == {"KV": {"Verb": "check-session", "Key": "lock", "Session": "s1"}}
    assert sent[1]["KV"]["Value"] == base64.b64encode(b"v").decode()


async def test_txn_rollback_is_a_conflict_listing_every_failed_op(server: Scripted) -> None:
    errors = [
        {"OpIndex": 0, "What": 'failed session check for key "lock", current session "a" != "b"'},
        {"OpIndex": 2, "What": 'failed to set key "x", index is stale'},
    ]
    server.reply("PUT", "/v1/txn", status=409, body={"Results": None, "Errors": errors})
    async with make_client(server) as client:
        with pytest.raises(TransactionRolledBack) as info:
            await client.txn(
                [KVOp.check_session("lock", "b"), KVOp.get("y"), KVOp.cas("x", b"", index=1)]
            )
    assert isinstance(info.value, Conflict)
    assert [i for i, _ in info.value.errors] == [0, 2]
    assert "failed session check" in info.value.errors[0][1]


async def test_txn_too_large_from_the_server(server: Scripted) -> None:
    server.reply("PUT", "/v1/txn", status=413, text='Value for key "k" is too large')
    async with make_client(server) as client:
        with pytest.raises(TooLarge):
            await client.txn([KVOp.set("k", b"v")])


async def test_session_lifecycle_calls(server: Scripted) -> None:
    server.reply("PUT", "/v1/session/create", body={"ID": "sess-1"}, index=None)
    server.reply(
        "PUT", "/v1/session/renew/sess-1", body=[{"ID": "sess-1", "TTL": "30s"}], index=None
    )
    server.reply("PUT", "/v1/session/renew/gone", status=404, text="Session id 'gone' not found")
    server.reply("PUT", "/v1/session/destroy/sess-1", body=True, index=None)
    async with make_client(server) as client:
        sid = await client.session_create(
            "leader", ttl=15, lock_delay=0, behavior="delete", node_checks=[]
        )
        assert sid == "sess-1"
        body = json.loads(server.seen[-1].body)
        assert body == {
            "name": "leader",
            "checks": [],
            "lockdelay": "0s",
            "behavior": "delete",
            "ttl": "15s",
        }
        assert (await client.session_renew("sess-1")).ttl == "30s"
        with pytest.raises(NotFound):
            await client.session_renew("gone")
        assert await client.session_destroy("sess-1") is True
        with pytest.raises(ValueError):
            await client.session_create("x", ttl=5)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (400, "Conflicting flags: cas=, acquire=", BadRequest),
        (401, "ACL support disabled", PermissionDenied),
        (403, "Permission denied", PermissionDenied),
        (405, "method not allowed", ClientError),
        (413, "Request body too large", TooLarge),
        (429, "rate limited", Throttled),
        (500, 'invalid session "abc"', NotFound),
        (500, "Missing node registration", BadRequest),
        (500, "No path to datacenter", BadRequest),
        (500, "rpc error: leadership lost", Unavailable),
        (503, "", Unavailable),
    ],
)
async def test_http_errors_are_translated(
    server: Scripted, status: int, text: str, expected: type[Exception]
) -> None:
    server.reply("PUT", "/v1/kv/k", status=status, text=text, index=None)
    async with make_client(server) as client:
        with pytest.raises(expected) as info:
            await client.kv_put("k", b"v", acquire="abc")
    assert type(info.value) is expected
    assert isinstance(info.value, ClientError)
    assert info.value.status == status
    assert info.value.__cause__ is not None  # raised "from" the library's exception


def test_translate_status_without_a_response_is_unavailable() -> None:
    assert isinstance(translate_status(None, "boom", what="x"), Unavailable)


async def test_connection_refused_is_unavailable(anyio_backend: str) -> None:
    with anyio.fail_after(10):
        client = ConsulClient(ConsulConfig(host="127.0.0.1", port=1), read_attempts=1)
        async with client:
            with pytest.raises(Unavailable) as info:
                await client.kv_get("k")
    assert isinstance(info.value.__cause__, httpx.ConnectError)


# ----------------------------------------------------------------------------- timeouts, retries


def test_read_timeout_follows_the_wait_of_blocking_queries() -> None:
    transport = HttpxTransport(ConsulConfig(), timeout=7.0, blocking_margin=5.0)
    assert transport.read_timeout(None) == 7.0
    assert transport.read_timeout([("recurse", "1"), ("wait", "5m")]) == 7.0  # no index
    assert transport.read_timeout([("index", 3), ("wait", "5m")]) == 300 + 300 / 16 + 5
    assert transport.read_timeout([("index", 3), ("wait", "1m30s")]) == 90 + 90 / 16 + 5
    assert transport.read_timeout([("index", 3), ("wait", "20m")]) == 600 + 600 / 16 + 5
    assert transport.read_timeout([("index", 3)]) == 300 + 300 / 16 + 5


async def test_long_poll_times_out_after_wait_plus_margin(server: Scripted) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await anyio.sleep(5)
        return web.Response(text="[]")

    server.on("GET", "/v1/kv/slow", hang)
    async with make_client(server, timeout=10.0, blocking_margin=0.2) as client:
        start = time.monotonic()
        with pytest.raises(Timeout):
            await client.kv_get_blocking("slow", index=3, wait=0.16)
        elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 2.0


async def test_short_reads_use_the_short_timeout(server: Scripted) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await anyio.sleep(5)
        return web.Response(text="[]")

    server.on("GET", "/v1/kv/slow", hang)
    async with make_client(server, timeout=0.3) as client:
        start = time.monotonic()
        with pytest.raises(Timeout):
            await client.kv_get("slow")
    assert time.monotonic() - start < 2.0


def flaky(
    failures: int, then: Any, index: int = 9
) -> Callable[[web.Request], Awaitable[web.Response]]:
    calls = {"n": 0}

    async def handler(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] <= failures:
            return web.Response(status=500, text="rpc error: no leader")
        return web.Response(text=json.dumps(then), headers={"X-Consul-Index": str(index)})

    return handler


async def test_non_blocking_reads_are_retried(server: Scripted) -> None:
    server.on("GET", "/v1/kv/k", flaky(2, [kv_json("k", b"v")]))
    async with make_client(server, read_attempts=3) as client:
        _, entry = await client.kv_get("k")
    assert entry is not None
    assert server.count("GET", "/v1/kv/k") == 3


async def test_blocking_reads_and_writes_are_not_retried(server: Scripted) -> None:
    server.on("GET", "/v1/kv/p/", flaky(1, []))
    server.on("PUT", "/v1/kv/k", flaky(1, True))
    async with make_client(server, read_attempts=3) as client:
        with pytest.raises(Unavailable):
            await client.kv_list("p/", index=5, wait=1)
        with pytest.raises(Unavailable):
            await client.kv_put("k", b"v")
    assert server.count("GET", "/v1/kv/p/") == 1
    assert server.count("PUT", "/v1/kv/k") == 1


async def test_retries_give_up_with_the_last_error(server: Scripted) -> None:
    server.on("GET", "/v1/kv/k", flaky(10, []))
    async with make_client(server, read_attempts=2) as client:
        with pytest.raises(Unavailable, match="no leader"):
            await client.kv_get("k")
    assert server.count("GET", "/v1/kv/k") == 2


async def test_concurrent_calls_do_not_mix_up_responses(server: Scripted) -> None:
    """Each call's status is tracked per task: a failing call next to a succeeding one."""

    async def slow_ok(request: web.Request) -> web.Response:
        await anyio.sleep(0.2)
        return web.Response(text="true")

    server.on("PUT", "/v1/kv/ok", slow_ok)
    server.reply("PUT", "/v1/kv/bad", status=403, text="Permission denied", index=None)
    results: dict[str, Any] = {}
    async with make_client(server) as client:

        async def ok() -> None:
            results["ok"] = await client.kv_put("ok", b"v")

        async def bad() -> None:
            try:
                await client.kv_put("bad", b"v")
            except PermissionDenied as exc:
                results["bad"] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(ok)
            tg.start_soon(bad)
    assert results["ok"] is True
    assert isinstance(results["bad"], PermissionDenied)


@pytest.mark.parametrize("key", ["a/../b", "in/..", "./x", "a/./b"])
async def test_dot_segment_keys_are_refused_before_any_request(key: str) -> None:
    client = ConsulClient(ConsulConfig.from_env({"CONSUL_HTTP_ADDR": "127.0.0.1:1"}))
    try:
        with pytest.raises(BadRequest, match="segment"):
            await client.kv_get(key)
        with pytest.raises(BadRequest, match="segment"):
            await client.kv_put(key, b"x")
    finally:
        await client.aclose()
