"""``/v1/agent/*``: what a local agent owns, which is how Nomad registers services in Consul.

Nomad clients register each task's services with ``PUT /v1/agent/service/register`` (IDs such as
``_nomad-task-<alloc>-<task>-<service>-<label>``, HTTP/TCP checks, ``external-source: nomad``
meta), read them back through ``/v1/agent/services`` and ``/v1/agent/checks``, and refresh their
script checks with ``/v1/agent/check/update``. The work is done in ``devstack.consul.local``.
"""

from __future__ import annotations

import asyncio
import hashlib
import platform
from typing import Any

from aiohttp import web

from devstack.consul import local
from devstack.consul.acl import READ, WRITE
from devstack.consul.api.common import (
    DEFAULT_WAIT,
    MAX_WAIT,
    QueryOptions,
    authorizer,
    can_read_service,
    core_of,
    ok_empty,
    ok_json,
    parse_query_options,
    read_json,
    read_object,
    require,
)
from devstack.consul.api.mux import tail
from devstack.consul.bexpr import apply_filter_map
from devstack.consul.catalog import service_from
from devstack.consul.checks import CheckDefinition, parse_definition
from devstack.consul.core import VERSION, Core
from devstack.consul.encoding import CI, dumps, parse_duration, parse_uint
from devstack.consul.errors import ConsulError, bad_request, go_quote
from devstack.consul.gojson import unmarshal_type_error
from devstack.consul.state import Check


def _require_check_write(request: web.Request, check: Check) -> None:
    if check.service_id:
        require(request, "service", check.service_name, WRITE)
    else:
        require(request, "node", check.node, WRITE)


# -- services ------------------------------------------------------------------------------------


async def service_register(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    body = await read_object(request, "structs.ServiceDefinition")
    svc = service_from(core.node_name, body, name_field="Name")
    raw_checks: list[CI] = []
    single = body.obj("Check")
    if single is not None and single.raw:
        raw_checks.append(single)
    many = body.get("Checks")
    if many is not None:
        if not isinstance(many, list) or not all(isinstance(c, dict) for c in many):
            raise bad_request("Request decode failed: Checks must be a list of objects")
        raw_checks.extend(CI(c) for c in many)
    defns: list[CheckDefinition] = []
    for i, cb in enumerate(raw_checks, start=1):
        default_id = f"service:{svc.id}" if len(raw_checks) == 1 else f"service:{svc.id}:{i}"
        defn = parse_definition(cb, default_id, f"Service '{svc.name}' check")
        defn.service_id = svc.id
        defns.append(defn)
    require(request, "service", svc.name, WRITE)
    local.register_service(
        core, svc, defns, replace_checks="replace-existing-checks" in request.query
    )
    return ok_empty()


async def service_deregister(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    sid = tail(request)
    svc = local.local_service(core, sid)
    if svc is None:
        raise ConsulError(
            404,
            f'Unknown service ID "{sid}". '
            "Ensure that the service ID is passed, not the service name.",
        )
    require(request, "service", svc.name, WRITE)
    local.deregister_service(core, sid)
    return ok_empty()


async def services(request: web.Request) -> web.Response:
    core = core_of(request)
    opts = parse_query_options(request, core)
    found = core.state.services.get(core.node_name, {})
    out: dict[str, Any] = {}
    for sid in sorted(found):
        if sid == "consul" or not can_read_service(request, found[sid].name):
            continue
        body = local.agent_service_json(core, sid)
        if body is not None:
            out[sid] = body
    if opts.filter:
        out = apply_filter_map(out, opts.filter)
    return ok_json(out)


async def service_get(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    sid = tail(request)
    return await _service_blocking(request, core, sid)


async def service_maintenance(request: web.Request) -> web.Response:
    core = core_of(request)
    sid = tail(request)
    enable = request.query.get("enable")
    if enable is None:
        raise bad_request("Missing value for enable")
    if enable not in ("true", "false"):
        raise bad_request(f"Invalid value for enable: {enable!r}")
    svc = core.state.services.get(core.node_name, {}).get(sid)
    if svc is None:
        raise ConsulError(404, f'Unknown service ID "{sid}"')
    require(request, "service", svc.name, WRITE)
    local.service_maintenance(core, sid, enable == "true", request.query.get("reason", ""))
    return ok_empty()


async def node_maintenance(request: web.Request) -> web.Response:
    core = core_of(request)
    enable = request.query.get("enable")
    if enable not in ("true", "false"):
        raise bad_request("Missing value for enable")
    require(request, "node", core.node_name, WRITE)
    local.node_maintenance(core, enable == "true", request.query.get("reason", ""))
    return ok_empty()


# -- checks --------------------------------------------------------------------------------------


async def check_register(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    body = await read_object(request, "structs.CheckDefinition")
    if not body.text("Name"):
        raise bad_request("Missing check name")
    if body.text("Status") not in ("", "passing", "warning", "critical"):
        raise bad_request("Bad check status")
    defn = parse_definition(body, "", body.text("Name"))
    if defn.service_id:
        svc = core.state.services.get(core.node_name, {}).get(defn.service_id)
        if svc is None:
            raise ConsulError(404, f"ServiceID {go_quote(defn.service_id)} does not exist")
        require(request, "service", svc.name, WRITE)
    else:
        require(request, "node", core.node_name, WRITE)
    local.register_check(core, defn)
    return ok_empty()


async def check_deregister(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    check = local.local_check(core, tail(request))
    _require_check_write(request, check)
    local.deregister_check(core, check.id)
    return ok_empty()


def _ttl_update(request: web.Request, check_id: str, status: str, output: str) -> None:
    core = core_of(request)
    check = local.local_check(core, check_id)
    _require_check_write(request, check)
    local.update_ttl(core, check_id, status, output)


async def check_pass(request: web.Request) -> web.Response:
    return await _check_note(request, "passing")


async def check_warn(request: web.Request) -> web.Response:
    return await _check_note(request, "warning")


async def check_fail(request: web.Request) -> web.Response:
    return await _check_note(request, "critical")


async def _check_note(request: web.Request, status: str) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    _ttl_update(request, tail(request), status, request.query.get("note", ""))
    return ok_empty()


async def check_update(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    data = await read_json(request)
    if data is not None and not isinstance(data, dict):
        raise bad_request(
            f"Request decode failed: {unmarshal_type_error(data, '', '', 'agent.checkUpdate')}"
        )
    body = CI(data or {})
    status = body.text("Status")
    if status not in ("passing", "warning", "critical"):
        raise bad_request(f"Invalid check status: '{status}'")
    _ttl_update(request, tail(request), status, body.text("Output"))
    return ok_empty()


async def checks(request: web.Request) -> web.Response:
    core = core_of(request)
    opts = parse_query_options(request, core)
    found = core.state.checks.get(core.node_name, {})
    runner = core.checks
    out: dict[str, Any] = {}
    authz = authorizer(request)
    for cid in sorted(found):
        check = found[cid]
        if cid == "serfHealth":
            continue
        if authz is not None:
            if check.service_id and not authz.allowed("service", check.service_name, READ):
                continue
            if not check.service_id and not authz.allowed("node", check.node, READ):
                continue
        out[cid] = local.agent_check_json(check, runner.definitions.get(cid))
    if opts.filter:
        out = apply_filter_map(out, opts.filter)
    return ok_json(out)


# -- local service health ------------------------------------------------------------------------

# ``agentHealthService``: the aggregated status decides the code (maintenance is critical).
_HEALTH_CODES = {"passing": 200, "warning": 429}


def _health_check_json(check: Check) -> dict[str, Any]:
    """``api.HealthCheck`` as the agent's health endpoints fill it: identity and status only."""
    return {
        **local.check_identity_json(check),
        "Type": "",
        "ExposedPort": 0,
        "Definition": {
            "Interval": "0s",
            "Timeout": "0s",
            "DeregisterCriticalServiceAfter": "0s",
            "HTTP": "",
            "Header": None,
            "Method": "",
            "Body": "",
            "TLSServerName": "",
            "TLSSkipVerify": False,
            "TCP": "",
            "TCPUseTLS": False,
            "UDP": "",
            "GRPC": "",
            "OSService": "",
            "GRPCUseTLS": False,
        },
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }


def aggregated_status(checks: list[Check]) -> str:
    """``api.HealthChecks.AggregatedStatus``: maintenance, then the worst status, else passing."""
    passing = warning = critical = maintenance = False
    for check in checks:
        if check.id == local.NODE_MAINT_ID or check.id.startswith(local.MAINT_SERVICE_PREFIX):
            maintenance = True
            continue
        if check.status == "passing":
            passing = True
        elif check.status == "warning":
            warning = True
        elif check.status == "critical":
            critical = True
        else:
            return ""
    if maintenance:
        return "maintenance"
    if critical:
        return "critical"
    if warning:
        return "warning"
    del passing
    return "passing"


def _service_health(core: Core, sid: str) -> tuple[int, str, list[dict[str, Any]]]:
    """The service's own checks and the agent's node checks (``ChecksForService(id, true)``)."""
    found = [
        c
        for c in core.state.checks.get(core.node_name, {}).values()
        if c.id != "serfHealth" and c.service_id in (sid, "")
    ]
    found.sort(key=lambda c: c.id)
    status = aggregated_status(found)
    return _HEALTH_CODES.get(status, 503), status, [_health_check_json(c) for c in found]


def _wants_text(request: web.Request) -> bool:
    """``returnTextPlain``: an ``Accept: text/plain*`` header, else ``?format=text``."""
    if request.headers.get("Accept", "").startswith("text/plain"):
        return True
    fmt = request.query.get("format", "")
    return fmt == "text" if fmt else False


def _with_payload(request: web.Request, code: int, reason: str, obj: Any) -> web.Response:
    """``CodeWithPayloadError``: the code, ``X-Consul-Reason``, then text or JSON."""
    headers = {"X-Consul-Reason": reason}
    if _wants_text(request):
        return web.Response(
            status=code, body=reason.encode(), headers={**headers, "Content-Type": "text/plain"}
        )
    return web.Response(
        status=code, body=dumps(obj), headers={**headers, "Content-Type": "application/json"}
    )


async def health_service_by_id(request: web.Request) -> web.Response:
    core = core_of(request)
    sid = tail(request)
    if not sid:
        raise bad_request("Missing serviceID")
    authorizer(request)
    svc = local.local_service(core, sid)
    if svc is not None:
        require(request, "service", svc.name, READ)
        code, status, found = _service_health(core, sid)
        if _wants_text(request):
            return _with_payload(request, code, status, None)
        body = {
            "AggregatedStatus": status,
            "Service": local.agent_service_json(core, sid),
            "Checks": found,
        }
        return _with_payload(request, code, status, body)
    reason = f"ServiceId {sid} not found"
    missing = {"AggregatedStatus": "critical", "Service": None, "Checks": None}
    return _with_payload(request, 404, reason, missing)


async def health_service_by_name(request: web.Request) -> web.Response:
    core = core_of(request)
    name = tail(request)
    if not name:
        raise bad_request("Missing service Name")
    require(request, "service", name, READ)
    code, status = 404, f"ServiceName {name} Not Found"
    results: list[dict[str, Any]] = []
    local_services = core.state.services.get(core.node_name, {})
    for sid in sorted(local_services):
        svc = local_services[sid]
        if sid == "consul" or svc.name != name:
            continue
        scode, sstatus, found = _service_health(core, sid)
        results.append(
            {
                "AggregatedStatus": sstatus,
                "Service": local.agent_service_json(core, sid),
                "Checks": found,
            }
        )
        # The worst wins: passing 200 < warning 429 < critical 503.
        if code == 404 or code < scode:
            code, status = scode, sstatus
    return _with_payload(request, code, status, results)


# -- self / members ------------------------------------------------------------------------------


def _member(core: Core) -> dict[str, Any]:
    return {
        "Name": core.node_name,
        "Addr": core.config.advertise_addr,
        "Port": 8301,
        "Tags": {
            "acls": "1" if core.acl.enabled else "0",
            "bootstrap": "1",
            "build": f"{VERSION}:devstack",
            "dc": core.config.datacenter,
            "ft_fs": "1",
            "ft_si": "1",
            "id": core.state.node_id,
            "port": "8300",
            "raft_vsn": "3",
            "role": "consul",
            "segment": "",
            "vsn": "2",
            "vsn_max": "3",
            "vsn_min": "2",
            "wan_join_port": "8302",
        },
        "Status": 1,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


async def self_(request: web.Request) -> web.Response:
    core = core_of(request)
    require(request, "agent", core.node_name, READ)
    st = core.state
    local_checks = st.checks.get(core.node_name, {})
    runner = core.checks
    ttl_checks = sum(1 for d in runner.definitions.values() if d.kind == "ttl")
    body = {
        "Config": {
            "Datacenter": core.config.datacenter,
            "PrimaryDatacenter": core.config.datacenter,
            "NodeName": core.node_name,
            "NodeID": st.node_id,
            "Revision": "devstack",
            "Server": True,
            "Version": VERSION,
            "BuildDate": "2025-10-01T00:00:00Z",
        },
        "DebugConfig": {
            "Datacenter": core.config.datacenter,
            "NodeName": core.node_name,
            "NodeID": st.node_id,
            "ServerMode": True,
            "DevMode": True,
            "ACLsEnabled": core.acl.enabled,
            "GRPCPort": -1,
            "GRPCTLSPort": -1,
            "Partition": "",
            "ConnectEnabled": False,
            "KVMaxValueSize": 524288,
            "TxnMaxReqLen": 524288,
        },
        "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
        "Member": _member(core),
        "Stats": {
            "agent": {
                "check_monitors": "0",
                "check_ttls": str(ttl_checks),
                "checks": str(max(len(local_checks) - 1, 0)),
                "services": str(max(len(st.services.get(core.node_name, {})) - 1, 0)),
            },
            "build": {"prerelease": "", "revision": "devstack", "version": VERSION},
            "consul": {
                "acl": "enabled" if core.acl.enabled else "disabled",
                "bootstrap": "true",
                "known_datacenters": "1",
                "leader": "false" if core.faults.no_leader else "true",
                "leader_addr": core.leader_addr(),
                "server": "true",
            },
            "raft": {
                "applied_index": str(st.index),
                "commit_index": str(st.index),
                "last_log_index": str(st.index),
                "num_peers": "0",
                "state": "Follower" if core.faults.no_leader else "Leader",
            },
            "runtime": {
                "arch": platform.machine(),
                "os": platform.system().lower(),
                "version": "devstack",
            },
        },
        "Meta": {"consul-network-segment": "", "consul-version": VERSION},
        "xDS": {
            "SupportedProxies": {"envoy": []},
            "Port": -1,
            "Ports": {"Plaintext": -1, "TLS": -1},
        },
    }
    return ok_json(body)


async def members(request: web.Request) -> web.Response:
    core = core_of(request)
    return ok_json([_member(core)])


# -- hash-based blocking ---------------------------------------------------------------------


def content_hash(body: dict[str, Any]) -> str:
    """A 64-bit hash of the service as served, in hex, as hashstructure gives it."""
    digest = hashlib.blake2b(dumps(body), digest_size=8).digest()
    return f"{int.from_bytes(digest, 'big'):x}"


def _service_state(core: Core, request: web.Request, sid: str) -> tuple[str, dict[str, Any]]:
    body = local.agent_service_json(core, sid) if sid != "consul" else None
    if body is None:
        raise ConsulError(404, f"unknown service ID: {sid}")
    require(request, "service", body["Service"], READ)
    digest = content_hash(body)
    body["ContentHash"] = digest
    return digest, body


async def _service_blocking(request: web.Request, core: Core, sid: str) -> web.Response:
    """``LocalBlockingQuery``: with ``?hash=`` equal to the current one, wait for a change."""
    opts = _hash_wait(request)
    wanted = request.query.get("hash", "")
    digest, body = _service_state(core, request, sid)
    if wanted and wanted == digest:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.wait
        while digest == wanted:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            fut: asyncio.Future[None] = loop.create_future()
            # Any change to the catalog's services may change this one.
            topics = ("services",)
            core.state.watches.add(fut, topics, ())
            handle = loop.call_later(remaining, _wake, fut)
            try:
                await fut
            finally:
                handle.cancel()
                core.state.watches.remove(fut, topics, ())
            digest, body = _service_state(core, request, sid)
    return web.Response(
        body=dumps(body),
        content_type="application/json",
        headers={"X-Consul-ContentHash": digest},
    )


def _hash_wait(request: web.Request) -> QueryOptions:
    """``parseWait`` only: ``wait`` (default 5 min, at most 10) and a valid ``index``."""
    opts = QueryOptions()
    q = request.query
    if q.get("wait"):
        try:
            wait = parse_duration(q["wait"])
        except ValueError as exc:
            raise bad_request("Invalid wait time") from exc
        opts.wait = wait if wait > 0 else DEFAULT_WAIT
    if q.get("index"):
        try:
            parse_uint(q["index"])
        except ValueError as exc:
            raise bad_request("Invalid index") from exc
    opts.wait = min(opts.wait, MAX_WAIT)
    return opts


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
