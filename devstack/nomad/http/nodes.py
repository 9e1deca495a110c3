"""Node endpoints: ``/v1/nodes``, ``/v1/node/<id>[/drain|/eligibility|/allocations]``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from devstack.nomad.errors import NomadError
from devstack.nomad.structs import node_stub

from .common import (
    READ,
    WRITE,
    APIBase,
    bool_param,
    json_response,
    methods,
    read_body,
)


class NodesAPI(APIBase):
    async def nodes(self, request: web.Request) -> web.Response:
        methods(request, READ)
        prefix = request.query.get("prefix", "")
        if len(prefix) % 2 == 1:
            prefix = prefix[:-1]
        resources = bool_param(request, "resources")
        os_attr = bool_param(request, "os")

        def compute() -> tuple[int, Any]:
            out = [
                node_stub(n, resources, os_attr)
                for n in sorted(self.state.nodes.values(), key=lambda n: n["ID"])
                if n["ID"].startswith(prefix)
            ]
            return self.state.table_index["nodes"], out

        return await self._page(request, await self.blocking(request, compute))

    async def node(self, request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        node_id, _, action = tail.partition("/")
        if node_id in ("pools", "pool"):
            # Node pools live under /v1/node/pool(s); the devstack has only "default".
            raise NomadError(404, "")
        if action == "drain":
            methods(request, WRITE)
            reply = self.cluster.drain_node(node_id, await read_body(request))
            return json_response(reply, reply["Index"])
        if action == "eligibility":
            methods(request, WRITE)
            reply = self.cluster.set_eligibility(node_id, await read_body(request))
            return json_response(reply, reply["Index"])
        if action == "evaluate":
            methods(request, WRITE)
            reply = self.cluster.evaluate_node(node_id)
            return json_response(reply, reply["Index"])
        if action == "allocations":
            methods(request, READ)
            self.cluster.node(node_id)

            def allocs() -> tuple[int, Any]:
                return self.state.table_index["allocs"], self.state.node_allocs(node_id)

            return await self.blocking(request, allocs)
        if action:
            raise NomadError(404, "")
        methods(request, READ)

        def compute() -> tuple[int, Any]:
            n = self.state.nodes.get(node_id)
            if n is None:
                return self.state.table_index["nodes"], NomadError(404, "node not found")
            return n["ModifyIndex"], n

        return await self.blocking(request, compute)
