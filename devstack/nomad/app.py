"""Nomad's HTTP API over the embedded server: routes, blocking queries, ACLs, error texts.

Conventions copied from ``command/agent/http.go``: writes accept PUT or POST, another method is
405 ``Invalid method``; errors are ``text/plain`` bodies holding only the message; an unknown
route is a 404 with an empty body; reads carry ``X-Nomad-Index``/``X-Nomad-KnownLeader``/
``X-Nomad-LastContact`` and block on ``?index=&wait=`` with each endpoint's own index rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .cluster import (
    NOMAD_VERSION,
    NomadCluster,
    NomadConfig,
    NomadError,
    alloc_stub,
    job_stub,
    node_stub,
    strip_zero,
)
from .events import TopicError, parse_topics
from .util import MINUTE, SECOND, parse_go_duration

CLUSTER_KEY: web.AppKey[NomadCluster] = web.AppKey("nomad_cluster", NomadCluster)
READ = ("GET",)
WRITE = ("PUT", "POST")
MAX_WAIT = 10 * MINUTE
DEFAULT_WAIT = 5 * MINUTE
# Paths readable without a token even when ACLs are enabled.
PUBLIC = {"/v1/status/leader", "/v1/status/peers", "/v1/agent/health", "/v1/regions"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json(obj: Any, index: int | None = None, status: int = 200) -> web.Response:
    headers = {}
    if index is not None:
        headers = {
            "X-Nomad-Index": str(max(index, 1)),
            "X-Nomad-KnownLeader": "true",
            "X-Nomad-LastContact": "0",
        }
    return web.Response(
        body=_dumps(obj), status=status, content_type="application/json", headers=headers
    )


def _text(status: int, message: str, index: int | None = None) -> web.Response:
    headers = {}
    if index is not None:
        headers = {
            "X-Nomad-Index": str(max(index, 1)),
            "X-Nomad-KnownLeader": "true",
            "X-Nomad-LastContact": "0",
        }
    return web.Response(text=message, status=status, content_type="text/plain", headers=headers)


def _methods(request: web.Request, allowed: tuple[str, ...]) -> None:
    if request.method not in allowed:
        raise NomadError(405, "Invalid method")


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return False
    if raw == "":
        return True
    lowered = raw.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise NomadError(
        500,
        f'Failed to parse value of "{name}" ({raw}) as a bool: strconv.ParseBool: '
        f'parsing "{raw}": invalid syntax',
    )


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise NomadError(400, "Request body is empty")
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise NomadError(400, "invalid character in JSON input") from exc
    except json.JSONDecodeError as exc:
        ch = exc.doc[exc.pos : exc.pos + 1] if exc.pos < len(exc.doc) else ""
        if not ch:
            raise NomadError(400, "unexpected EOF") from exc
        raise NomadError(400, f"invalid character {ch!r} looking for beginning of value") from exc


def _namespace(request: web.Request) -> str:
    return request.query.get("namespace") or "default"


def _ns_match(request: web.Request, ns: str) -> bool:
    want = _namespace(request)
    return want == "*" or want == ns


# --- go-bexpr subset for ?filter= ------------------------------------------------------------

_CLAUSE = re.compile(
    r"^\s*(?:(?P<sel>[A-Za-z_][\w.]*)\s*(?P<op>==|!=|contains|not contains|matches)\s*"
    r'"(?P<val>(?:[^"\\]|\\.)*)"|"(?P<ival>(?:[^"\\]|\\.)*)"\s*(?P<iop>in|not in)\s*'
    r"(?P<isel>[A-Za-z_][\w.]*)|(?P<esel>[A-Za-z_][\w.]*)\s*(?P<eop>is empty|is not empty))\s*$"
)


def _select(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        else:
            return None
    return obj


def compile_filter(expr: str) -> Callable[[dict[str, Any]], bool]:
    """A small subset of go-bexpr: clauses joined by ``and`` / ``or`` (no parentheses)."""
    alternatives = []
    for disj in re.split(r"\s+or\s+", expr.strip()):
        clauses = []
        for part in re.split(r"\s+and\s+", disj):
            m = _CLAUSE.match(part)
            if m is None:
                raise NomadError(400, f"failed to read filter expression: {expr}")
            clauses.append(m)
        alternatives.append(clauses)

    def matches(m: re.Match[str], obj: dict[str, Any]) -> bool:
        if m.group("sel"):
            value = _select(obj, m.group("sel"))
            want = m.group("val").replace('\\"', '"')
            op = m.group("op")
            if op == "==":
                return (
                    str(value) == want
                    if not isinstance(value, bool)
                    else str(value).lower() == want
                )
            if op == "!=":
                return str(value) != want
            if op == "matches":
                return isinstance(value, str) and re.search(want, value) is not None
            has = want in value if isinstance(value, (list, str, dict)) else False
            return has if op == "contains" else not has
        if m.group("isel"):
            value = _select(obj, m.group("isel"))
            want = m.group("ival").replace('\\"', '"')
            has = want in value if isinstance(value, (list, str, dict)) else False
            return has if m.group("iop") == "in" else not has
        value = _select(obj, m.group("esel"))
        empty = not value
        return empty if m.group("eop") == "is empty" else not empty

    return lambda obj: any(all(matches(m, obj) for m in cl) for cl in alternatives)


def _paginate(
    request: web.Request, items: list[dict[str, Any]], key: str = "ID"
) -> tuple[list, str]:
    if request.query.get("filter"):
        keep = compile_filter(request.query["filter"])
        items = [i for i in items if keep(i)]
    if _bool_param(request, "reverse"):
        items = list(reversed(items))
    token = request.query.get("next_token", "")
    if token:
        reverse = _bool_param(request, "reverse")
        items = [i for i in items if (str(i[key]) <= token if reverse else str(i[key]) >= token)]
    per_page = request.query.get("per_page", "")
    if per_page:
        try:
            n = int(per_page)
        except ValueError as exc:
            raise NomadError(400, "Invalid per_page") from exc
        if 0 < n < len(items):
            return items[:n], str(items[n][key])
    return items, ""


# --- the application -------------------------------------------------------------------------


class NomadAPI:
    def __init__(self, cluster: NomadCluster) -> None:
        self.cluster = cluster
        self.state = cluster.state

    async def blocking(
        self, request: web.Request, compute: Callable[[], tuple[int, Any]]
    ) -> web.Response:
        """Answer now, or once ``compute``'s index passes ``?index=`` (until ``?wait=``)."""
        q = request.query
        min_index = 0
        if "index" in q:
            try:
                min_index = int(q["index"])
                if min_index < 0:
                    raise ValueError
            except ValueError as exc:
                raise NomadError(400, "Invalid index") from exc
        wait = DEFAULT_WAIT
        if "wait" in q:
            try:
                wait = parse_go_duration(q["wait"])
            except ValueError as exc:
                raise NomadError(400, "Invalid wait time") from exc
            wait = min(max(wait, 0), MAX_WAIT)
        index, payload = compute()
        if min_index > 0 and index <= min_index:
            loop = asyncio.get_running_loop()
            seconds = wait / SECOND
            deadline = loop.time() + seconds + random.uniform(0, seconds / 16)
            while index <= min_index:
                remaining = deadline - loop.time()
                if remaining <= 0 or not self.cluster.running:
                    break
                await self.state.wait_change(remaining)
                index, payload = compute()
        if isinstance(payload, NomadError):
            return _text(payload.status, payload.message, index)
        return _json(payload, index)

    # jobs ------------------------------------------------------------------------------------

    async def jobs(self, request: web.Request) -> web.Response:
        _methods(request, READ + WRITE)
        if request.method in WRITE:
            reply = self.cluster.register_job(await _body(request), None, _namespace(request))
            return _json(reply, reply["Index"])
        prefix = request.query.get("prefix", "")
        meta = _bool_param(request, "meta")

        def compute() -> tuple[int, Any]:
            items = [
                job_stub(j, self.state.summaries.get(k), meta)
                for k, j in sorted(self.state.jobs.items(), key=lambda kv: (kv[0][1], kv[0][0]))
                if j["ID"].startswith(prefix) and _ns_match(request, j["Namespace"])
            ]
            index = max(self.state.table_index["jobs"], self.state.table_index["job_summary"])
            return index, items

        items_resp = await self.blocking(request, compute)
        return await self._page(request, items_resp)

    async def _page(self, request: web.Request, resp: web.Response) -> web.Response:
        if not any(k in request.query for k in ("filter", "per_page", "next_token", "reverse")):
            return resp
        if resp.status != 200 or resp.body is None:
            return resp
        assert isinstance(resp.body, bytes)
        items, token = _paginate(request, json.loads(resp.body))
        out = _json(items, int(resp.headers["X-Nomad-Index"]))
        if token:
            out.headers["X-Nomad-NextToken"] = token
        return out

    async def job(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        ns = _namespace(request)
        for suffix, handler in (
            ("/allocations", self.job_allocations),
            ("/evaluations", self.job_evaluations),
            ("/versions", self.job_versions),
            ("/summary", self.job_summary),
            ("/evaluate", self.job_evaluate),
            ("/deployments", self.job_deployments),
            ("/deployment", self.job_deployment),
            ("/services", self.job_services),
        ):
            if tail.endswith(suffix) and len(tail) > len(suffix):
                return await handler(request, tail[: -len(suffix)], ns)
        job_id = tail
        if request.method == "DELETE":
            purge = _bool_param(request, "purge")
            reply = self.cluster.deregister_job(job_id, ns, purge)
            return _json(reply, reply["Index"])
        _methods(request, READ + WRITE)
        if request.method in WRITE:
            reply = self.cluster.register_job(await _body(request), job_id, ns)
            return _json(reply, reply["Index"])

        def compute() -> tuple[int, Any]:
            job = self.state.jobs.get((ns, job_id))
            if job is None:
                return self.state.table_index["jobs"], NomadError(404, "job not found")
            return job["ModifyIndex"], job

        return await self.blocking(request, compute)

    async def job_allocations(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        _methods(request, READ)
        every = _bool_param(request, "all")

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
        _methods(request, READ)

        def compute() -> tuple[int, Any]:
            evals = [strip_zero(e) for e in self.state.job_evals((ns, job_id))]
            evals.sort(key=lambda e: e["CreateIndex"], reverse=True)
            return self.state.table_index["evals"], evals

        return await self.blocking(request, compute)

    async def job_versions(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        _methods(request, READ)

        def compute() -> tuple[int, Any]:
            versions = self.state.versions.get((ns, job_id))
            if not versions:
                return self.state.table_index["job_version"], NomadError(
                    404, "job versions not found"
                )
            return self.state.table_index["job_version"], {
                "Versions": versions,
                "Diffs": None,
                "Index": self.state.table_index["job_version"],
                "LastContact": 0,
                "KnownLeader": True,
                "NextToken": "",
            }

        return await self.blocking(request, compute)

    async def job_summary(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        _methods(request, READ)

        def compute() -> tuple[int, Any]:
            summary = self.state.summaries.get((ns, job_id))
            if summary is None:
                return self.state.table_index["job_summary"], NomadError(404, "job not found")
            return summary["ModifyIndex"], summary

        return await self.blocking(request, compute)

    async def job_evaluate(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        _methods(request, WRITE)
        reply = self.cluster.evaluate_job(job_id, ns)
        return _json(reply, reply["Index"])

    async def job_deployments(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        _methods(request, READ)
        return _json([], self.state.index)

    async def job_deployment(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        _methods(request, READ)
        return _json(None, self.state.index)

    async def job_services(self, request: web.Request, job_id: str, ns: str) -> web.Response:
        _methods(request, READ)

        def compute() -> tuple[int, Any]:
            out = [
                self._public(s)
                for s in self.state.services.values()
                if s["JobID"] == job_id and s["Namespace"] == ns
            ]
            return self.state.table_index["services"], out

        return await self.blocking(request, compute)

    async def validate(self, request: web.Request) -> web.Response:
        _methods(request, WRITE)
        from . import jobs as jobspec

        body = await _body(request)
        try:
            raw, _ = jobspec.decode_register_body(body)
            job = jobspec.canonicalize(raw, _namespace(request))
            jobspec.validate(job)
        except jobspec.DecodeError as exc:
            raise NomadError(400, str(exc)) from exc
        except jobspec.ValidationError as exc:
            return _json(
                {
                    "DriverConfigValidated": True,
                    "ValidationErrors": [str(exc)],
                    "Error": str(exc),
                    "Warnings": "",
                }
            )
        return _json(
            {"DriverConfigValidated": True, "ValidationErrors": None, "Error": "", "Warnings": ""}
        )

    # allocations -----------------------------------------------------------------------------

    async def allocations(self, request: web.Request) -> web.Response:
        _methods(request, READ)
        prefix = request.query.get("prefix", "")
        resources = _bool_param(request, "resources")
        task_states = request.query.get("task_states", "true").lower() != "false"

        def compute() -> tuple[int, Any]:
            out = [
                alloc_stub(a, resources, task_states)
                for a in self.state.allocs.values()
                if a["ID"].startswith(prefix) and _ns_match(request, a["Namespace"])
            ]
            out.sort(key=lambda s: s["ID"])
            return self.state.table_index["allocs"], out

        return await self._page(request, await self.blocking(request, compute))

    async def allocation(self, request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        if tail.endswith("/stop"):
            _methods(request, WRITE + READ)
            reply = self.cluster.stop_alloc(tail[: -len("/stop")])
            return _json(reply, reply["Index"])
        if tail.endswith("/services"):
            _methods(request, READ)
            alloc_id = tail[: -len("/services")]
            out = [
                self._public(s) for s in self.state.services.values() if s["AllocID"] == alloc_id
            ]
            return _json(out, self.state.table_index["services"])
        _methods(request, READ)

        def compute() -> tuple[int, Any]:
            a = self.state.allocs.get(tail)
            if a is None:
                return self.state.table_index["allocs"], NomadError(404, "alloc not found")
            return a["ModifyIndex"], a

        return await self.blocking(request, compute)

    # evaluations -----------------------------------------------------------------------------

    async def evaluations(self, request: web.Request) -> web.Response:
        _methods(request, READ)
        prefix = request.query.get("prefix", "")
        job_filter = request.query.get("job", "")
        status_filter = request.query.get("status", "")

        def compute() -> tuple[int, Any]:
            out = [
                strip_zero(e)
                for e in self.state.evals.values()
                if e["ID"].startswith(prefix)
                and _ns_match(request, e["Namespace"])
                and (not job_filter or e["JobID"] == job_filter)
                and (not status_filter or e["Status"] == status_filter)
            ]
            out.sort(key=lambda e: e["ID"])
            return self.state.table_index["evals"], out

        return await self._page(request, await self.blocking(request, compute))

    async def evaluation(self, request: web.Request) -> web.Response:
        _methods(request, READ)
        tail = request.match_info["tail"]
        if tail.endswith("/allocations"):
            eval_id = tail[: -len("/allocations")]
            out = [alloc_stub(a) for a in self.state.allocs.values() if a["EvalID"] == eval_id]
            return _json(out, self.state.table_index["allocs"])

        def compute() -> tuple[int, Any]:
            e = self.state.evals.get(tail)
            if e is None:
                return self.state.table_index["evals"], NomadError(404, "eval not found")
            return e["ModifyIndex"], strip_zero(e)

        return await self.blocking(request, compute)

    # nodes -----------------------------------------------------------------------------------

    async def nodes(self, request: web.Request) -> web.Response:
        _methods(request, READ)
        prefix = request.query.get("prefix", "")
        if len(prefix) % 2 == 1:
            prefix = prefix[:-1]
        resources = _bool_param(request, "resources")
        os_attr = _bool_param(request, "os")

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
        if action == "drain":
            _methods(request, WRITE)
            reply = self.cluster.drain_node(node_id, await _body(request))
            return _json(reply, reply["Index"])
        if action == "eligibility":
            _methods(request, WRITE)
            reply = self.cluster.set_eligibility(node_id, await _body(request))
            return _json(reply, reply["Index"])
        if action == "allocations":
            _methods(request, READ)
            self.cluster.node(node_id)

            def allocs() -> tuple[int, Any]:
                return self.state.table_index["allocs"], self.state.node_allocs(node_id)

            return await self.blocking(request, allocs)
        if action:
            raise NomadError(404, "")
        _methods(request, READ)

        def compute() -> tuple[int, Any]:
            n = self.state.nodes.get(node_id)
            if n is None:
                return self.state.table_index["nodes"], NomadError(404, "node not found")
            return n["ModifyIndex"], n

        return await self.blocking(request, compute)

    # native services -------------------------------------------------------------------------

    @staticmethod
    def _public(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if k != "_owner"}

    async def services(self, request: web.Request) -> web.Response:
        _methods(request, READ)

        def compute() -> tuple[int, Any]:
            by_ns: dict[str, dict[str, set[str]]] = {}
            for s in self.state.services.values():
                if _ns_match(request, s["Namespace"]):
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
            return _json(
                {
                    "Index": self.state.index,
                    "LastContact": 0,
                    "KnownLeader": False,
                    "NextToken": "",
                },
                self.state.index,
            )
        _methods(request, READ)
        ns = _namespace(request)

        def compute() -> tuple[int, Any]:
            out = [
                self._public(s)
                for s in sorted(self.state.services.values(), key=lambda s: s["ID"])
                if s["ServiceName"] == name and (ns == "*" or s["Namespace"] == ns)
            ]
            return self.state.table_index["services"], out

        return await self.blocking(request, compute)

    # events ----------------------------------------------------------------------------------

    async def event_stream(self, request: web.Request) -> web.StreamResponse:
        _methods(request, READ)
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
            topics, _namespace(request), max(index - 1, 0) if index else self.state.index
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
                await resp.write(_dumps(line) + b"\n")
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            broker.unsubscribe(sub)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await resp.write_eof()
        return resp

    # agent, status, acl ------------------------------------------------------------------------

    def _member(self) -> dict[str, Any]:
        cfg = self.cluster.config
        return {
            "Name": f"devstack.{cfg.region}",
            "Addr": "127.0.0.1",
            "Port": 4648,
            "Tags": {
                "role": "nomad",
                "region": cfg.region,
                "dc": cfg.datacenter,
                "build": NOMAD_VERSION,
                "port": "4647",
                "bootstrap": "1",
            },
            "Status": "alive",
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        }

    async def agent_self(self, request: web.Request) -> web.Response:
        _methods(request, READ)
        cfg = self.cluster.config
        return _json(
            {
                "config": {
                    "Region": cfg.region,
                    "Datacenter": cfg.datacenter,
                    "NodeName": "devstack",
                    "Version": {
                        "Version": NOMAD_VERSION,
                        "Revision": "devstack",
                        "VersionPrerelease": "",
                        "VersionMetadata": "",
                    },
                    "ACL": {"Enabled": cfg.acl_master_token is not None},
                    "Server": {"Enabled": True, "BootstrapExpect": 1},
                    "Client": {"Enabled": True},
                    "Consul": {"Address": cfg.consul_addr or ""},
                },
                "member": self._member(),
                "stats": {"nomad": {"leader": "true", "server": "true", "known_regions": "1"}},
            }
        )

    async def agent_members(self, request: web.Request) -> web.Response:
        _methods(request, READ)
        cfg = self.cluster.config
        return _json(
            {
                "ServerName": f"devstack.{cfg.region}",
                "ServerRegion": cfg.region,
                "ServerDC": cfg.datacenter,
                "Members": [self._member()],
            }
        )

    async def agent_health(self, request: web.Request) -> web.Response:
        _methods(request, READ)
        ok = {"ok": True, "message": "ok"}
        return _json({"client": ok, "server": ok})

    async def status_leader(self, request: web.Request) -> web.Response:
        _methods(request, READ)
        return _json(self.cluster.leader)

    async def status_peers(self, request: web.Request) -> web.Response:
        _methods(request, READ)
        return _json([self.cluster.leader])

    async def regions(self, request: web.Request) -> web.Response:
        _methods(request, READ)
        return _json([self.cluster.config.region])

    async def acl_token_self(self, request: web.Request) -> web.Response:
        _methods(request, READ)
        token = self.cluster.config.acl_master_token
        if token is None:
            raise NomadError(400, "ACL support disabled")
        return _json(
            {
                "AccessorID": "00000000-0000-0000-0000-000000000001",
                "SecretID": token,
                "Name": "Bootstrap Token",
                "Type": "management",
                "Policies": None,
                "Roles": None,
                "Global": True,
                "CreateTime": "2024-01-01T00:00:00Z",
                "ExpirationTime": None,
                "CreateIndex": 1,
                "ModifyIndex": 1,
            },
            1,
        )

    # emulator-only administration (no Nomad equivalent) ---------------------------------------

    async def admin_nodes(self, request: web.Request) -> web.Response:
        _methods(request, WRITE)
        body = await _body(request)
        if not isinstance(body, dict):
            raise NomadError(400, "request body is not a JSON object")
        try:
            node_id = self.cluster.add_node(
                name=body.get("Name"),
                datacenter=body.get("Datacenter"),
                cpu=body.get("CPU"),
                memory_mb=body.get("MemoryMB"),
                disk_mb=body.get("DiskMB"),
                meta=body.get("Meta"),
                attributes=body.get("Attributes"),
                node_class=body.get("NodeClass") or "",
                node_pool=body.get("NodePool") or "default",
                drivers=tuple(body.get("Drivers") or ("docker", "raw_exec")),
            )
        except (TypeError, ValueError) as exc:
            raise NomadError(400, f"invalid node: {exc}") from exc
        return _json({"ID": node_id}, self.state.index)

    async def admin_node_status(self, request: web.Request) -> web.Response:
        _methods(request, WRITE)
        body = await _body(request)
        if not isinstance(body, dict) or not isinstance(body.get("Status"), str):
            raise NomadError(400, "Status must be given")
        evals = self.cluster.set_node_status(request.match_info["id"], body["Status"])
        return _json({"EvalIDs": evals or None}, self.state.index)

    async def not_found(self, request: web.Request) -> web.Response:
        return web.Response(status=404)


def _token(request: web.Request) -> str:
    token = request.headers.get("X-Nomad-Token", "")
    if not token:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
    return token


def build_app(cluster: NomadCluster) -> web.Application:
    api = NomadAPI(cluster)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = cluster.config.acl_master_token
        if token is not None and request.path not in PUBLIC and _token(request) != token:
            return _text(403, "Permission denied")
        region = request.query.get("region")
        if region and region != cluster.config.region:
            return _text(500, "No path to region")
        try:
            return await handler(request)
        except NomadError as exc:
            if exc.status == 404 and not exc.message:
                return web.Response(status=404)
            return _text(exc.status, exc.message)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            return _text(500, str(exc) or exc.__class__.__name__)

    app = web.Application(middlewares=[errors], client_max_size=8 * 1024 * 1024)
    app[CLUSTER_KEY] = cluster
    r = app.router
    r.add_route("*", "/v1/jobs", api.jobs)
    r.add_route("*", "/v1/job/{tail:.+}", api.job)
    r.add_route("*", "/v1/validate/job", api.validate)
    r.add_route("*", "/v1/allocations", api.allocations)
    r.add_route("*", "/v1/allocation/{tail:.+}", api.allocation)
    r.add_route("*", "/v1/evaluations", api.evaluations)
    r.add_route("*", "/v1/evaluation/{tail:.+}", api.evaluation)
    r.add_route("*", "/v1/nodes", api.nodes)
    r.add_route("*", "/v1/node/{tail:.+}", api.node)
    r.add_route("*", "/v1/services", api.services)
    r.add_route("*", "/v1/service/{tail:.+}", api.service)
    r.add_route("*", "/v1/event/stream", api.event_stream)
    r.add_route("*", "/v1/agent/self", api.agent_self)
    r.add_route("*", "/v1/agent/members", api.agent_members)
    r.add_route("*", "/v1/agent/health", api.agent_health)
    r.add_route("*", "/v1/status/leader", api.status_leader)
    r.add_route("*", "/v1/status/peers", api.status_peers)
    r.add_route("*", "/v1/regions", api.regions)
    r.add_route("*", "/v1/acl/token/self", api.acl_token_self)
    r.add_route("*", "/v1/devstack/nodes", api.admin_nodes)
    r.add_route("*", "/v1/devstack/node/{id}/status", api.admin_node_status)
    r.add_route("*", "/{tail:.*}", api.not_found)

    async def on_startup(app: web.Application) -> None:
        await cluster.start()

    async def on_shutdown(app: web.Application) -> None:
        await cluster.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


def app_factory(config: NomadConfig) -> Callable[[], Awaitable[web.Application]]:
    """A factory for :mod:`devstack._server`: a fresh cluster and its app per call."""

    async def factory() -> web.Application:
        return build_app(NomadCluster(config))

    return factory
