"""Deployment endpoints: ``/v1/deployments`` and ``/v1/deployment/...``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from devstack.nomad.errors import NomadError
from devstack.nomad.structs import alloc_stub

from .common import (
    READ,
    WRITE,
    APIBase,
    json_response,
    methods,
    ns_match,
    read_body,
)


class DeploymentsAPI(APIBase):
    async def deployments(self, request: web.Request) -> web.Response:
        methods(request, READ)
        prefix = request.query.get("prefix", "")

        def compute() -> tuple[int, Any]:
            out = [
                d
                for d in sorted(self.state.deployments.values(), key=lambda d: d["ID"])
                if d["ID"].startswith(prefix) and ns_match(request, d["Namespace"])
            ]
            return self.state.table_index["deployment"], out

        return await self._page(request, await self.blocking(request, compute))

    async def deployment(self, request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        action, _, rest = tail.partition("/")
        writes = {
            "fail": lambda body: self.cluster.fail_deployment(rest),
            "pause": lambda body: self.cluster.pause_deployment(rest, body),
            "promote": lambda body: self.cluster.promote_deployment(rest, body),
            "allocation-health": lambda body: self.cluster.set_allocs_health(rest, body),
        }
        if rest and action in writes:
            methods(request, WRITE)
            body = await read_body(request) if request.can_read_body else {}
            reply = writes[action](body)
            return json_response(reply, reply["Index"])
        if rest and action == "allocations":
            methods(request, READ)
            self.cluster.deployment(rest)

            def allocs() -> tuple[int, Any]:
                out = [
                    alloc_stub(a) for a in self.state.allocs.values() if a["DeploymentID"] == rest
                ]
                out.sort(key=lambda s: s["CreateIndex"], reverse=True)
                return self.state.table_index["allocs"], out

            return await self.blocking(request, allocs)
        if rest:
            raise NomadError(404, "")
        methods(request, READ)

        def compute() -> tuple[int, Any]:
            d = self.state.deployments.get(tail)
            if d is None:
                return self.state.table_index["deployment"], NomadError(404, "deployment not found")
            return d["ModifyIndex"], d

        return await self.blocking(request, compute)
