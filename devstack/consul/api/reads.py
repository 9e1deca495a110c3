"""Reads: metadata headers, the blocking-query loop and the response they end in.

Consul stamps reads with ``X-Consul-Index`` (never 0), ``X-Consul-KnownLeader`` and
``X-Consul-LastContact``. Its ``blockingquery`` package loops: run the query, return if the index
moved past ``index``, else park on the watch set until a change or the (jittered) timeout.
Handlers here get the same behaviour from one place, and the hot path writes a whole response
with one socket write.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11

from devstack.consul.api.common import JSON, QueryOptions, wrapped_headers
from devstack.consul.api.mux import GZIP_MIN_SIZE, accepts_gzip, gzip_body
from devstack.consul.api.parking import Outcome, Parking
from devstack.consul.core import Core
from devstack.consul.encoding import dumps
from devstack.consul.errors import ConsulError, server_error


@dataclass(slots=True)
class Result:
    """One run of a read: its index, its body, and whether the query found nothing."""

    index: int
    body: Any = None
    not_found: bool = False
    status: int = 200
    filtered: bool = False
    raw: bytes | None = None
    # The gzip form of ``raw``, made once for every client of a shared result that accepts it.
    gz: bytes | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)


def consistency_level(opts: QueryOptions) -> str:
    return "stale" if opts.stale else "consistent" if opts.consistent else "leader"


def meta_headers(
    core: Core, opts: QueryOptions | None, index: int | None, *, consistency: bool = False
) -> dict[str, str]:
    """``setMeta``: index (never 0), leader, last contact; the consistency only where the
    handler records it (catalog and health reads)."""
    headers: dict[str, str] = {}
    if index is not None:
        headers["X-Consul-Index"] = str(index) if index > 0 else "1"
    headers["X-Consul-KnownLeader"] = "false" if core.faults.no_leader else "true"
    headers["X-Consul-LastContact"] = "0"
    if consistency and opts is not None:
        headers["X-Consul-Effective-Consistency"] = consistency_level(opts)
    return headers


class Prewritten(web.StreamResponse):
    """A response already written to the socket in one piece; aiohttp only closes the books.

    A write under a watched prefix can wake a thousand parked reads at once. Each then needs the
    same bytes on its own connection, and aiohttp's per-response machinery (header objects,
    payload writer, three writes) costs more than the socket send itself. The hot read path
    therefore writes status line, headers and body with one ``transport.write`` and hands
    aiohttp a response that is already finished.
    """

    def __init__(self, status: int, keep_alive: bool) -> None:
        super().__init__(status=status)
        self._keep_alive = keep_alive
        self._eof_sent = True


_REASONS = {200: "OK", 403: "Forbidden", 404: "Not Found"}


def _whole_allowed(request: web.Request, status: int) -> bool:
    transport = request.transport
    return (
        request.method == "GET"
        and request.version == HttpVersion11
        and request.keep_alive
        and status in _REASONS
        and transport is not None
        and not transport.is_closing()
    )


def whole_bytes(status: int, headers: dict[str, str], body: bytes) -> bytes:
    """Status line, headers and body of an HTTP/1.1 response as one buffer."""
    head = [f"HTTP/1.1 {status} {_REASONS[status]}"]
    head.extend(f"{name}: {value}" for name, value in headers.items())
    head.append(f"Content-Length: {len(body)}")
    head.append(f"Date: {rfc822_formatted_time()}")
    head.append(f"Server: {SERVER_SOFTWARE}")
    return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body


def _write_whole(
    request: web.Request, status: int, headers: dict[str, str], body: bytes
) -> web.StreamResponse | None:
    """Write the response in one piece when the connection allows it; None otherwise."""
    if not _whole_allowed(request, status):
        return None
    assert request.transport is not None
    request.transport.write(whole_bytes(status, headers, body))
    return Prewritten(status, keep_alive=True)


def _encoded(
    core: Core,
    result: Result,
    opts: QueryOptions | None,
    *,
    token_sent: bool,
    index: bool,
    consistency: bool,
    wrapped: bool,
    gzip_ok: bool,
) -> tuple[dict[str, str], bytes]:
    """The headers and body ``respond`` sends for ``result``."""
    headers = meta_headers(core, opts, result.index if index else None, consistency=consistency)
    if result.filtered and token_sent:
        headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    if result.extra_headers:
        headers.update(result.extra_headers)
    shared = False
    if result.raw is not None:
        body = result.raw
        shared = True
    elif result.status == 404:
        # Consul writes only the status: no body, and so no Content-Type either.
        body = b""
    elif opts is not None and opts.pretty:
        body = json.dumps(result.body, indent=4, ensure_ascii=False).encode() + b"\n"
    else:
        # Encoded once per result, so parked queries sharing a cached result share the bytes.
        body = result.raw = dumps(result.body)
        shared = True
    if body or result.status != 404:
        headers.setdefault("Content-Type", JSON)
    if not wrapped:
        return headers, body
    headers.update(wrapped_headers(core))
    if gzip_ok and len(body) >= GZIP_MIN_SIZE:
        if shared:
            if result.gz is None:
                result.gz = gzip_body(body)
            body = result.gz
        else:
            body = gzip_body(body)
        headers["Content-Encoding"] = "gzip"
    return headers, body


def respond(
    core: Core,
    result: Result,
    opts: QueryOptions | None,
    *,
    token_sent: bool = False,
    index: bool = True,
    consistency: bool = False,
    request: web.Request | None = None,
) -> web.StreamResponse:
    gzip_ok = request is not None and accepts_gzip(request.headers.get("Accept-Encoding", ""))
    headers, body = _encoded(
        core,
        result,
        opts,
        token_sent=token_sent,
        index=index,
        consistency=consistency,
        wrapped=request is not None,
        gzip_ok=gzip_ok,
    )
    if request is not None:
        whole = _write_whole(request, result.status, headers, body)
        if whole is not None:
            return whole
    return web.Response(body=body, status=result.status, headers=headers)


def forward(core: Core, datacenter: str, stale: bool = False) -> None:
    """What ``ForwardRPC`` decides before an RPC runs: a known datacenter, then a leader."""
    if datacenter and datacenter != core.config.datacenter:
        raise server_error("No path to datacenter")
    core.require_leader(stale)


def _forward_read(core: Core, opts: QueryOptions, meta_on_error: bool) -> None:
    try:
        forward(core, opts.datacenter, opts.stale)
    except ConsulError as exc:
        if meta_on_error:
            exc.headers = {
                "X-Consul-Index": "1",
                "X-Consul-KnownLeader": "false",
                "X-Consul-LastContact": "0",
                **exc.headers,
            }
        raise


async def blocking(
    core: Core,
    opts: QueryOptions,
    run: Callable[[], Result],
    topics: Iterable[str] = (),
    prefixes: Iterable[str] = (),
    *,
    meta_on_error: bool = False,
) -> Result:
    """Consul's ``blockingquery.Query`` loop over an in-memory watch set.

    ``meta_on_error`` is for handlers that ``defer setMeta``: an RPC error then still carries
    the (zero) query metadata, as ``X-Consul-Index: 1`` and an unknown leader.
    """
    _forward_read(core, opts, meta_on_error)
    result = run()
    min_index = opts.min_index
    if min_index == 0:
        return result
    topics = tuple(topics)
    prefixes = tuple(prefixes)
    loop = asyncio.get_running_loop()
    timeout = opts.wait + random.uniform(0, opts.wait / 16)
    deadline = loop.time() + timeout
    not_found = result.not_found
    watches = core.state.watches
    restores = core.restores
    while result.index <= min_index:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        fut: asyncio.Future[None] = loop.create_future()
        watches.add(fut, topics, prefixes)
        handle = loop.call_later(remaining, _expire, fut)
        try:
            await fut
        finally:
            handle.cancel()
            watches.remove(fut, topics, prefixes)
        if core.restores != restores:
            # The store was replaced (snapshot restore): return whatever is there now.
            return run()
        core.require_leader(opts.stale)
        result = run()
        if result.not_found:
            if not_found:
                # Still nothing there: an unrelated write must not end the wait.
                min_index = max(min_index, result.index)
            not_found = True
    return result


async def blocking_respond(
    core: Core,
    parking: Parking,
    request: web.Request,
    opts: QueryOptions,
    run: Callable[[], Result],
    share_key: Hashable,
    topics: tuple[str, ...] = (),
    prefixes: tuple[str, ...] = (),
    *,
    token_sent: bool = False,
    consistency: bool = False,
    meta_on_error: bool = False,
) -> web.StreamResponse:
    """``blocking`` then ``respond``, with the wait shared by every query asking the same thing.

    ``share_key`` names the read (``run`` must give the same result for every request with the
    same key, so it includes whatever of the token, filter and parameters the read depends on);
    queries that would get the same bytes park in one group of ``parking``, which answers all of
    them with one run and one render when a write wakes it.
    """
    _forward_read(core, opts, meta_on_error)
    result = run()
    gzip_ok = accepts_gzip(request.headers.get("Accept-Encoding", ""))

    def answer(res: Result) -> web.StreamResponse:
        return respond(
            core, res, opts, token_sent=token_sent, consistency=consistency, request=request
        )

    if opts.min_index == 0 or result.index > opts.min_index:
        return answer(result)
    if opts.pretty or not _whole_allowed(request, 200):
        return answer(await blocking(core, opts, run, topics, prefixes))

    def render(res: Result) -> bytes | None:
        if res.status not in _REASONS:
            return None
        headers, body = _encoded(
            core,
            res,
            opts,
            token_sent=token_sent,
            index=True,
            consistency=consistency,
            wrapped=True,
            gzip_ok=gzip_ok,
        )
        return whole_bytes(res.status, headers, body)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + opts.wait + random.uniform(0, opts.wait / 16)
    waiter = parking.park(
        (share_key, token_sent, gzip_ok, consistency and consistency_level(opts)),
        run,
        render,
        topics=topics,
        prefixes=prefixes,
        stale=opts.stale,
        transport=request.transport,
        min_index=opts.min_index,
        not_found=result.not_found,
        deadline=deadline,
    )
    try:
        outcome = await waiter.done
    finally:
        # A cancelled task cancels the future it awaited: leave the group either way.
        if not waiter.done.done() or waiter.done.cancelled():
            parking.leave(waiter)
    if outcome is Outcome.WRITTEN:
        return Prewritten(waiter.status, keep_alive=True)
    if outcome is Outcome.EXPIRED:
        return answer(run())
    # A restore, a lost leader or a connection that closed: answer as the per-query loop would.
    core.require_leader(opts.stale)
    return answer(run())


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
