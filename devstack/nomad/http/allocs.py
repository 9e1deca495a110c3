"""Allocation and evaluation endpoints."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from devstack.nomad.errors import NomadError
from devstack.nomad.structs import alloc_stub, strip_zero

from .common import (
    READ,
    WRITE,
    APIBase,
    bool_param,
    json_response,
    methods,
    ns_match,
)


class AllocsAPI(APIBase):
    async def allocations(self, request: web.Request) -> web.Response:
        methods(request, READ)
        prefix = request.query.get("prefix", "")
        resources = bool_param(request, "resources")
        task_states = request.query.get("task_states", "true").lower() != "false"

        def compute() -> tuple[int, Any]:
            out = [
                alloc_stub(a, resources, task_states)
                for a in self.state.allocs.values()
                if a["ID"].startswith(prefix) and ns_match(request, a["Namespace"])
            ]
            out.sort(key=lambda s: s["ID"])
            return self.state.table_index["allocs"], out

        return await self._page(request, await self.blocking(request, compute))

    async def allocation(self, request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        if tail.endswith("/stop"):
            methods(request, WRITE + READ)
            reply = self.cluster.stop_alloc(tail[: -len("/stop")])
            return json_response(reply, reply["Index"])
        if tail.endswith("/services"):
            methods(request, READ)
            alloc_id = tail[: -len("/services")]
            out = [
                self._public(s) for s in self.state.services.values() if s["AllocID"] == alloc_id
            ]
            return json_response(out, self.state.table_index["services"])
        if "/" in tail:
            # Sub-resources the devstack does not serve (checks, ...) are unknown paths.
            raise NomadError(404, "")
        methods(request, READ)

        def compute() -> tuple[int, Any]:
            a = self.state.allocs.get(tail)
            if a is None:
                return self.state.table_index["allocs"], NomadError(404, "alloc not found")
            return a["ModifyIndex"], a

        return await self.blocking(request, compute)

    async def evaluations(self, request: web.Request) -> web.Response:
        methods(request, READ)
        prefix = request.query.get("prefix", "")
        job_filter = request.query.get("job", "")
        status_filter = request.query.get("status", "")

        def compute() -> tuple[int, Any]:
            out = [
                strip_zero(e)
                for e in self.state.evals.values()
                if e["ID"].startswith(prefix)
                and ns_match(request, e["Namespace"])
                and (not job_filter or e["JobID"] == job_filter)
                and (not status_filter or e["Status"] == status_filter)
            ]
            out.sort(key=lambda e: e["ID"])
            return self.state.table_index["evals"], out

        return await self._page(request, await self.blocking(request, compute))

    _EVAL_STUB = (
        "ID",
        "Namespace",
        "Priority",
        "Type",
        "TriggeredBy",
        "JobID",
        "NodeID",
        "DeploymentID",
        "Status",
        "StatusDescription",
        "WaitUntil",
        "NextEval",
        "PreviousEval",
        "BlockedEval",
        "CreateIndex",
        "ModifyIndex",
        "CreateTime",
        "ModifyTime",
    )

    def _related_evals(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
        """``EvalsRelatedToID``: the evaluations linked to ``ev`` through next, previous and
        blocked evaluations, transitively, as stubs in creation order."""
        later: dict[str, list[str]] = {}
        for other in self.state.evals.values():
            for link in ("PreviousEval",):
                if other.get(link):
                    later.setdefault(other[link], []).append(other["ID"])
        seen = {ev["ID"]}
        todo = [ev]
        found = []
        while todo:
            cur = todo.pop()
            links = [cur.get("NextEval"), cur.get("PreviousEval"), cur.get("BlockedEval")]
            for eid in [*links, *later.get(cur["ID"], [])]:
                if not eid or eid in seen or eid not in self.state.evals:
                    continue
                seen.add(eid)
                nxt = self.state.evals[eid]
                found.append(nxt)
                todo.append(nxt)
        found.sort(key=lambda x: x["CreateIndex"])
        return [{k: x.get(k) for k in self._EVAL_STUB} for x in found]

    async def evaluation(self, request: web.Request) -> web.Response:
        methods(request, READ)
        tail = request.match_info["tail"]
        if tail.endswith("/allocations"):
            eval_id = tail[: -len("/allocations")]
            out = [alloc_stub(a) for a in self.state.allocs.values() if a["EvalID"] == eval_id]
            return json_response(out, self.state.table_index["allocs"])
        if "/" in tail:
            raise NomadError(404, "")

        related = bool_param(request, "related")

        def compute() -> tuple[int, Any]:
            e = self.state.evals.get(tail)
            if e is None:
                return self.state.table_index["evals"], NomadError(404, "eval not found")
            out = strip_zero(e)
            if related:
                out = {**out, "RelatedEvals": self._related_evals(e) or None}
            return e["ModifyIndex"], out

        return await self.blocking(request, compute)
