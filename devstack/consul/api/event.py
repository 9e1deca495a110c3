"""``/v1/event/fire/<name>`` and ``/v1/event/list``: user events, as ``agent/event_endpoint.go``.

The list is the agent's recent-events buffer; its "index" is the last event's UUID folded to 64
bits, so it is not monotonic: a blocking list returns as soon as that value differs from
``index`` (or the wait runs out). The list sets only ``X-Consul-Index``, as Consul's does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from devstack.consul.acl import READ, WRITE
from devstack.consul.api.common import (
    MAX_WAIT,
    authorizer,
    core_of,
    ok_json,
    request_token,
)
from devstack.consul.api.mux import tail
from devstack.consul.api.reads import forward
from devstack.consul.encoding import dumps, parse_duration, parse_uint
from devstack.consul.errors import ConsulError, bad_request
from devstack.consul.events import event_index, fire


async def event_fire(request: web.Request) -> web.Response:
    core = core_of(request)
    name = tail(request)
    if not name:
        raise bad_request("Missing name")
    q = request.query
    payload = await request.read() if request.content_length else None
    forward(core, q.get("dc", ""))
    authz = authorizer(request)
    if authz is not None and not authz.allowed("event", name, WRITE):
        raise ConsulError(403, "Permission denied")
    event = fire(
        core.state, name, payload, q.get("node", ""), q.get("service", ""), q.get("tag", "")
    )
    return ok_json(event.to_json())


def _wait(request: web.Request) -> tuple[int, float]:
    """``parseWait``: ``wait`` then ``index``; a blocking list waits at most 10 minutes."""
    q = request.query
    wait = 0.0
    if q.get("wait"):
        try:
            wait = parse_duration(q["wait"])
        except ValueError as exc:
            raise bad_request("Invalid wait time") from exc
    index = 0
    if q.get("index"):
        try:
            index = parse_uint(q["index"])
        except ValueError as exc:
            raise bad_request("Invalid index") from exc
    if index and (wait <= 0 or wait > MAX_WAIT):
        wait = MAX_WAIT
    return index, wait


async def event_list(request: web.Request) -> web.Response:
    core = core_of(request)
    min_index, wait = _wait(request)
    authz = authorizer(request)
    name = request.query.get("name", "")
    st = core.state
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait

    def run() -> tuple[int, list[dict[str, Any]], bool]:
        found = [e for e in st.events if not name or e.name == name]
        visible = [e for e in found if authz is None or authz.allowed("event", e.name, READ)]
        index = event_index(visible[-1].id) if visible else 1
        return index, [e.to_json() for e in visible], len(visible) != len(found)

    index, body, removed = run()
    while min_index and index == min_index:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        fut: asyncio.Future[None] = loop.create_future()
        st.watches.add(fut, ("events",), ())
        handle = loop.call_later(remaining, _wake, fut)
        try:
            await fut
        finally:
            handle.cancel()
            st.watches.remove(fut, ("events",), ())
        index, body, removed = run()
    headers = {"X-Consul-Index": str(index)}
    if removed and request_token(request):
        headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    return web.Response(body=dumps(body), content_type="application/json", headers=headers)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
