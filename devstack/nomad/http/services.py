"""Native service discovery (``/v1/services``, ``/v1/service/<name>``) and the event stream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any

from aiohttp import web

from devstack.nomad.errors import NomadError
from devstack.nomad.events import TopicError, parse_topics

from .common import (
    READ,
    APIBase,
    dumps,
    json_response,
    methods,
    ns_match,
    query_namespace,
)

_MALFORMED_CHOOSE = "Parameter for choose must be in form '<number>|<key>'"


def _choose(services: list[dict[str, Any]], parameter: str) -> list[dict[str, Any]]:
    """``choose=<n>|<key>``: rendezvous hashing, a stable subset of ``n`` per key.

    Each registration is ranked by a hash of the key with the registration's identity, and
    the lowest ``n`` are returned, so every caller with the same key gets the same subset and
    removing one registration moves only the callers that had it.
    """
    count, sep, key = parameter.partition("|")
    if not sep or not key:
        raise ValueError(_MALFORMED_CHOOSE)
    try:
        n = int(count)
    except ValueError as exc:
        raise ValueError(_MALFORMED_CHOOSE) from exc

    def rank(s: dict[str, Any]) -> str:
        ident = "|".join(str(s.get(k, "")) for k in ("ID", "ServiceName", "AllocID", "NodeID"))
        return hashlib.sha256(f"{key}|{ident}".encode()).hexdigest()

    return sorted(services, key=rank)[: max(n, 0)]


class ServicesAPI(APIBase):
    async def services(self, request: web.Request) -> web.Response:
        methods(request, READ)

        def compute() -> tuple[int, Any]:
            by_ns: dict[str, dict[str, set[str]]] = {}
            for s in self.state.services.values():
                if ns_match(request, s["Namespace"]):
                    tags = by_ns.setdefault(s["Namespace"], {}).setdefault(s["ServiceName"], set())
                    tags.update(s["Tags"] or [])
            out = [
                {
                    "Namespace": ns,
                    "Services": [
                        {"ServiceName": name, "Tags": sorted(tags)}
                        for name, tags in sorted(services.items())
                    ],
                }
                for ns, services in sorted(by_ns.items())
            ]
            return self.state.table_index["services"], out

        return await self.blocking(request, compute)

    async def service(self, request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        name, _, sid = tail.partition("/")
        if request.method == "DELETE" and sid:
            entry = self.state.services.get(sid)
            if entry is None or entry["ServiceName"] != name:
                raise NomadError(404, "service registration not found")
            self.cluster.deregister_native(entry["_owner"])
            return json_response(
                {
                    "Index": self.state.index,
                    "LastContact": 0,
                    "KnownLeader": False,
                    "NextToken": "",
                },
                self.state.index,
            )
        methods(request, READ)
        ns = query_namespace(request)
        choose = request.query.get("choose", "")

        def compute() -> tuple[int, Any]:
            out = [
                self._public(s)
                for s in sorted(self.state.services.values(), key=lambda s: s["ID"])
                if s["ServiceName"] == name and (ns == "*" or s["Namespace"] == ns)
            ]
            if choose:
                try:
                    out = _choose(out, choose)
                except ValueError as exc:
                    return self.state.table_index["services"], NomadError(500, str(exc))
            return self.state.table_index["services"], out

        return await self.blocking(request, compute)

    async def event_stream(self, request: web.Request) -> web.StreamResponse:
        methods(request, READ)
        try:
            topics = parse_topics(request.query.getall("topic", []))
        except TopicError as exc:
            raise NomadError(400, str(exc)) from exc
        if not topics:
            topics = {"*": {"*"}}
        try:
            index = int(request.query.get("index", "0"))
        except ValueError as exc:
            raise NomadError(400, "Invalid index") from exc
        broker = self.state.broker
        sub = broker.subscribe(
            topics, query_namespace(request), max(index - 1, 0) if index else self.state.index
        )
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        heartbeat = self.cluster.config.event_heartbeat
        try:
            await resp.write(b"{}\n")
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), heartbeat)
                except TimeoutError:
                    await resp.write(b"{}\n")
                    continue
                if item is None:
                    break
                idx, events = item
                line = {"Index": idx, "Events": [e.to_json() for e in events]}
                await resp.write(dumps(line) + b"\n")
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            broker.unsubscribe(sub)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await resp.write_eof()
        return resp
