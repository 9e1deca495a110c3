"""Job endpoints: ``/v1/jobs``, ``/v1/job/<id>[/...]`` and ``/v1/validate/job``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from devstack.nomad import jobspec
from devstack.nomad.errors import NomadError
from devstack.nomad.jobspec.hcl import ParseError, parse_job_hcl
from devstack.nomad.server.jobdiff import job_diff
from devstack.nomad.structs import alloc_stub, job_stub, strip_zero

from .common import (
    READ,
    WRITE,
    APIBase,
    bool_param,
    json_response,
    methods,
    ns_match,
    query_namespace,
    read_body,
)

# Suffixes Nomad's jobSpecificRequest knows that this emulator does not serve.
UNIMPLEMENTED_SUFFIXES = ("/periodic/force", "/submission", "/actions", "/action")


class JobsAPI(APIBase):
    async def jobs(self, request: web.Request) -> web.Response:
        methods(request, READ + WRITE)
        if request.method in WRITE:
            reply = self.cluster.register_job(
                await read_body(request), None, query_namespace(request)
            )
            return json_response(reply, reply["Index"])
        prefix = request.query.get("prefix", "")
        meta = bool_param(request, "meta")

        def compute() -> tuple[int, Any]:
            items = [
                job_stub(j, self.state.summaries.get(k), meta)
                for k, j in sorted(self.state.jobs.items(), key=lambda kv: (kv[0][1], kv[0][0]))
                if j["ID"].startswith(prefix) and ns_match(request, j["Namespace"])
            ]
            index = max(self.state.table_index["jobs"], self.state.table_index["job_summary"])
            return index, items

        items_resp = await self.blocking(request, compute)
        return await self._page(request, items_resp)

    async def job(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        ns = query_namespace(request)
        for suffix, handler in (
            ("/allocations", self.job_allocations),
            ("/evaluations", self.job_evaluations),
            ("/versions", self.job_versions),
            ("/summary", self.job_summary),
            ("/evaluate", self.job_evaluate),
            ("/deployments", self.job_deployments),
            ("/deployment", self.job_deployment),
            ("/services", self.job_services),
            ("/plan", self.job_plan),
            ("/dispatch", self.job_dispatch),
            ("/revert", self.job_revert),
            ("/stable", self.job_stable),
            ("/scale", self.job_scale),
        ):
            if tail.endswith(suffix) and len(tail) > len(suffix):
                return await handler(request, tail[: -len(suffix)], ns)
        # Sub-resources Nomad routes here that the devstack does not implement answer as an
        # unknown path does, never as a job named "<id>/<suffix>".
        if any(tail.endswith(s) and len(tail) > len(s) for s in UNIMPLEMENTED_SUFFIXES) or (
            "/versions/" in tail and tail.endswith("/tag")
        ):
            raise NomadError(404, "")
        job_id = tail
        if request.method == "DELETE":
            purge = bool_param(request, "purge")
            reply = self.cluster.deregister_job(job_id, ns, purge)
            return json_response(reply, reply["Index"])
        methods(request, READ + WRITE)
        if request.method in WRITE:
            reply = self.cluster.register_job(await read_body(request), job_id, ns)
            return json_response(reply, reply["Index"])

        def compute() -> tuple[int, Any]:
            job = self.state.jobs.get((ns, job_id))
            if job is None:
                return self.state.table_index["jobs"], NomadError(404, "job not found")
            return job["ModifyIndex"], job

        return await self.blocking(request, compute)

    async def job_allocations(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        methods(request, READ)
        every = bool_param(request, "all")

        def compute() -> tuple[int, Any]:
            job = self.state.jobs.get((ns, job_id))
            out = []
            for a in self.state.job_allocs((ns, job_id)):
                if not every and job is not None and a["Job"]["CreateIndex"] != job["CreateIndex"]:
                    continue
                out.append(alloc_stub(a))
            out.sort(key=lambda s: s["CreateIndex"], reverse=True)
            return self.state.table_index["allocs"], out

        return await self.blocking(request, compute)

    async def job_evaluations(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        methods(request, READ)

        def compute() -> tuple[int, Any]:
            evals = [strip_zero(e) for e in self.state.job_evals((ns, job_id))]
            evals.sort(key=lambda e: e["CreateIndex"], reverse=True)
            return self.state.table_index["evals"], evals

        return await self.blocking(request, compute)

    async def job_versions(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        methods(request, READ)
        want_diffs = request.query.get("diffs", "").lower() in ("true", "1")

        def compute() -> tuple[int, Any]:
            versions = self.state.versions.get((ns, job_id))
            if not versions:
                return self.state.table_index["job_version"], NomadError(
                    404, "job versions not found"
                )
            diffs = None
            if want_diffs:
                # Each version against the one before it, newest first, as Nomad lists them.
                diffs = [job_diff(versions[i + 1], versions[i]) for i in range(len(versions) - 1)]
            return self.state.table_index["job_version"], {
                "Versions": versions,
                "Diffs": diffs or None,
                "Index": self.state.table_index["job_version"],
                "LastContact": 0,
                "KnownLeader": True,
                "NextToken": "",
            }

        return await self.blocking(request, compute)

    async def job_summary(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        methods(request, READ)

        def compute() -> tuple[int, Any]:
            summary = self.state.summaries.get((ns, job_id))
            if summary is None:
                return self.state.table_index["job_summary"], NomadError(404, "job not found")
            return summary["ModifyIndex"], summary

        return await self.blocking(request, compute)

    async def job_evaluate(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        methods(request, WRITE)
        body = await read_body(request) if request.can_read_body else {}
        if not isinstance(body, dict):
            raise NomadError(400, "request body is not a JSON object")
        if body.get("JobID") and body["JobID"] != job_id:
            raise NomadError(400, "Job ID does not match")
        options = body.get("EvalOptions") or {}
        force = bool(options.get("ForceReschedule")) if isinstance(options, dict) else False
        reply = self.cluster.evaluate_job(job_id, ns, force_reschedule=force)
        return json_response(reply, reply["Index"])

    async def job_deployments(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        methods(request, READ)
        every = bool_param(request, "all")

        def compute() -> tuple[int, Any]:
            job = self.state.jobs.get((ns, job_id))
            out = [
                d
                for d in self.state.job_deployments((ns, job_id))
                if every or job is None or d["JobCreateIndex"] == job["CreateIndex"]
            ]
            return self.state.table_index["deployment"], out

        return await self.blocking(request, compute)

    async def job_deployment(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        methods(request, READ)

        def compute() -> tuple[int, Any]:
            job = self.state.jobs.get((ns, job_id))
            latest = next(
                (
                    d
                    for d in self.state.job_deployments((ns, job_id))
                    if job is None or d["JobCreateIndex"] == job["CreateIndex"]
                ),
                None,
            )
            return self.state.table_index["deployment"], latest

        return await self.blocking(request, compute)

    async def job_services(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        methods(request, READ)

        def compute() -> tuple[int, Any]:
            out = [
                self._public(s)
                for s in self.state.services.values()
                if s["JobID"] == job_id and s["Namespace"] == ns
            ]
            return self.state.table_index["services"], out

        return await self.blocking(request, compute)

    async def validate(self, request: web.Request) -> web.Response:
        methods(request, WRITE)
        body = await read_body(request)
        try:
            raw, _ = jobspec.decode_register_body(body)
            job = jobspec.canonicalize(raw, query_namespace(request))
            jobspec.validate(job)
        except jobspec.DecodeError as exc:
            raise NomadError(400, str(exc)) from exc
        except jobspec.ValidationError as exc:
            return json_response(
                {
                    "DriverConfigValidated": True,
                    "ValidationErrors": [str(exc)],
                    "Error": str(exc),
                    "Warnings": "",
                }
            )
        return json_response(
            {"DriverConfigValidated": True, "ValidationErrors": None, "Error": "", "Warnings": ""}
        )

    async def _write(self, request: web.Request) -> Any:
        methods(request, WRITE)
        return await read_body(request)

    async def job_plan(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        reply = self.cluster.plan_job(await self._write(request), job_id, ns)
        return json_response(reply, reply["Index"])

    async def job_dispatch(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        reply = self.cluster.dispatch_job(job_id, ns, await self._write(request))
        return json_response(reply, reply["Index"])

    async def job_revert(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        reply = self.cluster.revert_job(job_id, ns, await self._write(request))
        return json_response(reply, reply["Index"])

    async def job_stable(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        reply = self.cluster.set_stability(job_id, ns, await self._write(request))
        return json_response(reply, reply["Index"])

    async def job_scale(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        methods(request, READ + WRITE)
        if request.method in WRITE:
            reply = self.cluster.scale_job(job_id, ns, await read_body(request))
            return json_response(reply, reply["Index"])
        return json_response(self.cluster.scale_status(job_id, ns), self.state.index)

    async def parse(self, request: web.Request) -> web.Response:
        """``POST /v1/jobs/parse``: a job file (HCL2) as the API's job JSON."""
        methods(request, WRITE)
        body = await read_body(request)
        if not isinstance(body, dict):
            raise NomadError(400, "request body is not a JSON object")
        text = body.get("JobHCL") or ""
        if not isinstance(text, str) or not text.strip():
            raise NomadError(400, "Job spec is empty")
        variables = body.get("Variables") or ""
        if not isinstance(variables, str):
            raise NomadError(
                400,
                "json: cannot unmarshal value into Go struct field "
                "JobsParseRequest.Variables of type string",
            )
        # Nomad 1.9 dropped HCLv1: the request's ``HCLv1`` field is no longer read, so the
        # text is parsed as HCL2 whatever it says.
        try:
            job = parse_job_hcl(text, variables)
        except ParseError as exc:
            raise NomadError(400, f"Failed to parse job: {exc}") from exc
        if body.get("Canonicalize"):
            try:
                job = jobspec.canonicalize(job, query_namespace(request))
            except jobspec.DecodeError as exc:
                raise NomadError(400, str(exc)) from exc
        return json_response(job)
