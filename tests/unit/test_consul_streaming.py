"""Streaming decode of Consul list answers: ``/v1/health/state`` element by element.

The decoder is checked against ``json.loads`` on bodies split at every position (mid-string,
mid-escape, mid multi-byte character); the client over real HTTP on 127.0.0.1 with a server that
sends its body in small chunks; and the memory of decoding many checks with tracemalloc.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web

from reconciler.clients.config import ConsulConfig
from reconciler.clients.consul import CheckState, ConsulClient, ServiceInstance, check_key
from reconciler.clients.errors import BadRequest, Unavailable
from reconciler.clients.jsonstream import ArrayDecoder, StreamDecodeError

pytestmark = pytest.mark.anyio


def check_json(i: int, *, status: str = "passing", modify: int = 7, **extra: Any) -> dict[str, Any]:
    sid = f"_nomad-task-{i:08x}-0000-4000-8000-{i:012x}-core-hmi-user-{i:05d}-hmi-hmi"
    return {
        "Node": "node1",
        "CheckID": f"check:{sid}",
        "Name": f"Service 'core-hmi-user-{i:05d}-hmi' check",
        "Status": status,
        "Notes": "",
        "Output": extra.get("output", ""),
        "ServiceID": sid,
        "ServiceName": f"core-hmi-user-{i:05d}-hmi",
        "ServiceTags": ["manticore", "route-http"],
        "Type": "ttl",
        "Definition": {"Interval": "0s", "Timeout": "0s", "TTL": "1h0m0s"},
        "ExposedPort": 0,
        "CreateIndex": 5,
        "ModifyIndex": modify,
    }


TRICKY = [
    {"a": 'quote " backslash \\ slash / tab \t newline \n', "u": "é ü 漢字 🎉", "n": -12.5e3},
    {"nested": [[], {}, [1, [2, [3]]], {"k": None}], "t": True, "f": False},
    {"escaped": "\u00e9\U0001f389 \\u0041 \\\\\\", "empty": ""},
    {"big": 12345678901234567890, "small": 1e-9},
]


def _body(items: list[Any], *, spaced: bool = False) -> bytes:
    if spaced:
        return ("[ \n" + " ,\r\n\t".join(json.dumps(i) for i in items) + " \n]\n").encode()
    return json.dumps(items, ensure_ascii=False).encode()


def _decode(chunks: list[bytes]) -> list[Any]:
    decoder: ArrayDecoder[Any] = ArrayDecoder(lambda x: x)
    for chunk in chunks:
        decoder.feed(chunk)
    return decoder.close()


@pytest.mark.parametrize("spaced", [False, True])
def test_every_split_point_decodes_as_json_loads(spaced: bool) -> None:
    body = _body(TRICKY, spaced=spaced)
    expected = json.loads(body)
    for cut in range(len(body) + 1):
        assert _decode([body[:cut], body[cut:]]) == expected, cut
    assert _decode([body[i : i + 1] for i in range(len(body))]) == expected
    assert _decode([body[i : i + 3] for i in range(0, len(body), 3)]) == expected


@pytest.mark.parametrize("body", [b"[]", b"  [ ]  ", b"[\n]"])
def test_empty_arrays(body: bytes) -> None:
    assert _decode([body]) == []


def test_top_level_scalars_cut_at_the_end_of_a_chunk_are_not_taken_short() -> None:
    assert _decode([b"[12", b"34, tr", b"ue, nul", b"l]"]) == [1234, True, None]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b"[1 2]",
        b"[1,]",
        b"[,1]",
        b"[1",
        b'[{"a": "unterminated',
        b"[1] 2",
        b"[1]]",
        b'[{"a": 1}',
        b"[\xff]",
        b'["\xe2\x82"]',
    ],
)
def test_malformed_bodies_raise(body: bytes) -> None:
    with pytest.raises(StreamDecodeError):
        _decode([body[i : i + 2] for i in range(0, len(body), 2)] or [b""])


def test_an_element_larger_than_the_bound_is_refused() -> None:
    decoder: ArrayDecoder[Any] = ArrayDecoder(lambda x: x, max_element=100)
    decoder.feed(b'[{"a": "' + b"x" * 50)
    with pytest.raises(StreamDecodeError, match="larger than 100"):
        decoder.feed(b"x" * 100)


# ----------------------------------------------------------------------------- over HTTP


class ChunkedServer:
    """Serves ``/v1/health/state/any`` from ``body`` in ``chunk``-byte writes."""

    def __init__(self) -> None:
        self.url = ""
        self.body = b"[]"
        self.chunk = 7
        self.status = 200
        self.headers: dict[str, str] = {"X-Consul-Index": "42"}
        self.queries: list[dict[str, str]] = []
        self.tokens: list[str | None] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        self.tokens.append(request.headers.get("X-Consul-Token"))
        resp = web.StreamResponse(status=self.status, headers=self.headers)
        await resp.prepare(request)
        view = memoryview(self.body)
        for start in range(0, len(view), self.chunk):
            await resp.write(bytes(view[start : start + self.chunk]))
        await resp.write_eof()
        return resp


@pytest.fixture
async def chunked(anyio_backend: str) -> AsyncIterator[ChunkedServer]:
    server = ChunkedServer()
    app = web.Application()
    app.router.add_route("GET", "/v1/health/state/{state}", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


def _client(server: ChunkedServer, token: str | None = None) -> ConsulClient:
    host, port = server.url.split(":")
    return ConsulClient(ConsulConfig(host=host, port=int(port), token=token), read_attempts=1)


async def test_a_chunked_answer_decodes_as_the_whole_one(chunked: ChunkedServer) -> None:
    checks = [check_json(i, output=f'é {i} "quoted" \\ 漢字 🎉') for i in range(50)]
    checks.append({**check_json(99), "ServiceID": "", "ServiceName": "", "Node": "node2"})
    chunked.body = json.dumps(checks, ensure_ascii=False).encode()
    expected = [CheckState.from_api(c) for c in json.loads(chunked.body)]
    for size in (1, 7, 100, 4096, len(chunked.body)):
        chunked.chunk = size
        async with _client(chunked, token="secret") as client:
            index, states = await client.health_state(
                "any", filter='ServiceName matches "^core-hmi-"', index=5, wait=3
            )
        assert index == 42
        assert states == expected
        assert [s.check.output for s in states] == [s.check.output for s in expected]
        assert [s.check.modify_index for s in states] == [7] * 51
    assert chunked.queries[-1] == {
        "index": "5",
        "wait": "3000ms",
        "filter": 'ServiceName matches "^core-hmi-"',
    }
    assert chunked.tokens[-1] == "secret"


async def test_unchanged_checks_are_the_known_objects(chunked: ChunkedServer) -> None:
    chunked.body = json.dumps([check_json(i) for i in range(10)]).encode()
    async with _client(chunked) as client:
        _, first = await client.health_state()
        known = {check_key(s): s for s in first}
        changed = [check_json(i) for i in range(10)]
        changed[3] = check_json(3, status="critical", modify=8)
        changed[4] = check_json(4, modify=9)  # a new write, same status: decoded again
        changed[5] = {**check_json(5), "Status": "warning"}  # status moved, index did not
        chunked.body = json.dumps(changed).encode()
        _, second = await client.health_state(known=known)
    assert second == [CheckState.from_api(c) for c in changed]
    same = [a is b for a, b in zip(first, second, strict=True)]
    assert same == [True, True, True, False, False, False, True, True, True, True]


async def test_errors_are_translated(chunked: ChunkedServer) -> None:
    async with _client(chunked) as client:
        chunked.body = b'[{"Node": "n", "CheckID": "c"'  # cut short
        with pytest.raises(Unavailable, match="decode JSON"):
            await client.health_state()
        chunked.body = b"[1, 2]"
        with pytest.raises(Unavailable, match="not a JSON object"):
            await client.health_state()
        chunked.body = b"[]"
        chunked.headers = {}
        with pytest.raises(Unavailable, match="index"):
            await client.health_state()
        chunked.headers = {"X-Consul-Index": "3"}
        chunked.status = 500
        chunked.body = b"rpc error: No cluster leader"
        with pytest.raises(Unavailable, match="No cluster leader"):
            await client.health_state()
        chunked.status = 400
        chunked.body = b"filter: bad expression"
        with pytest.raises(BadRequest, match="bad expression"):
            await client.health_state(filter="nonsense ==")
        chunked.status = 404
        chunked.body = b""
        assert await client.health_state() == (3, [])
        with pytest.raises(ValueError, match="health state"):
            await client.health_state("sideways")


async def test_decoding_many_checks_holds_the_result_not_the_answer(
    chunked: ChunkedServer,
) -> None:
    """The transient memory of decoding N checks is a small fraction of the answer's size."""
    n = 6000
    chunked.body = json.dumps([check_json(i) for i in range(n)]).encode()
    chunked.chunk = 64 * 1024
    async with _client(chunked) as client:
        await client.health_state()  # warm the connection and the code paths
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            _, states = await client.health_state()
            kept, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(states) == n
    body = len(chunked.body)
    transient = peak - kept
    # What decoding the whole answer at once costs: the text plus all its dicts.
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        text = chunked.body.decode()
        whole = [CheckState.from_api(c) for c in json.loads(text)]
        del text
        whole_peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert whole == states
    assert transient < body / 4, (body, transient)
    assert peak - before < whole_peak / 2, (peak - before, whole_peak)


# ----------------------------------------------------------------------------- compact instances


def _catalog_entry(i: int, role: str) -> dict[str, Any]:
    user = f"user-{i:05d}"
    return {
        "ID": f"_nomad-task-{i:08x}-{role}",
        "Service": f"core-hmi-{user}-{role}",
        "Address": "10.0.0.1",
        "Port": 20000,
        "Tags": ["manticore", "route-http"],
        "Meta": {"manticore_user": user, "manticore_role": role, "manticore_route": "http"},
    }


def test_instances_share_their_repeated_values_and_meta_is_a_mapping() -> None:
    def build(i: int) -> ServiceInstance:
        entry = json.loads(json.dumps(_catalog_entry(i, "hmi")))  # fresh strings each time
        return ServiceInstance.build("node1", "127.0.0.1", entry, [])

    a, b = build(1), build(2)
    assert a.tags == ("manticore", "route-http")
    assert a.tags is b.tags
    assert a.address is b.address
    assert a.node is b.node
    assert a.meta["manticore_role"] is b.meta["manticore_role"]
    meta = {"manticore_user": "user-00001", "manticore_role": "hmi", "manticore_route": "http"}
    assert a.meta == meta
    assert a.meta == MappingProxyType(meta)
    assert a.meta != b.meta
    assert a.meta.get("absent") is None
    assert len(a.meta) == 3
    with pytest.raises(KeyError):
        a.meta["absent"]
    assert sorted(a.meta) == sorted(meta)
    assert a == build(1)


def test_an_instance_and_its_check_share_the_service_id() -> None:
    entry = json.loads(json.dumps(_catalog_entry(1, "core")))
    state = CheckState.from_api(json.loads(json.dumps({**check_json(1), "ServiceID": entry["ID"]})))
    instance = ServiceInstance.build("node1", "127.0.0.1", entry, [state.check])
    assert instance.service_id is state.check.service_id
    assert instance.passing
