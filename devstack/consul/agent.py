"""``/v1/agent/*``: what a local agent owns, which is how Nomad registers services in Consul.

Nomad clients register each task's services with ``PUT /v1/agent/service/register`` (IDs such as
``_nomad-task-<alloc>-<task>-<service>-<label>``, HTTP/TCP checks, ``external-source: nomad``
meta), read them back through ``/v1/agent/services`` and ``/v1/agent/checks``, and refresh their
script checks with ``/v1/agent/check/update``. The agent keeps the local definitions, runs the
checks, and writes the catalog at once (no anti-entropy delay).
"""

from __future__ import annotations

import platform
from typing import Any

from aiohttp import web

from devstack.consul.acl import READ, WRITE
from devstack.consul.bexpr import apply_filter_map
from devstack.consul.catalog import (
    can_read_service,
    delete_check,
    delete_service,
    ensure_check,
    service_from,
    set_check_status,
)
from devstack.consul.checks import CheckDefinition, parse_definition
from devstack.consul.core import VERSION, Core, core_of
from devstack.consul.http import (
    CI,
    ConsulError,
    bad_request,
    ok_empty,
    ok_json,
    parse_query_options,
    read_json,
    read_object,
    server_error,
)
from devstack.consul.state import Check

MAINT_SERVICE_PREFIX = "_service_maintenance:"
NODE_MAINT_ID = "_node_maintenance"


def agent_service_json(core: Core, sid: str) -> dict[str, Any] | None:
    svc = core.state.services.get(core.node_name, {}).get(sid)
    if svc is None:
        return None
    out: dict[str, Any] = {}
    if svc.kind:
        out["Kind"] = svc.kind
    out.update(ID=svc.id, Service=svc.name, Tags=svc.tags, Meta=svc.meta, Port=svc.port)
    out["Address"] = svc.address
    if svc.tagged_addresses:
        out["TaggedAddresses"] = svc.tagged_addresses
    out.update(
        Weights=svc.weights,
        EnableTagOverride=svc.enable_tag_override,
        Datacenter=core.config.datacenter,
    )
    return out


def agent_check_json(check: Check, defn: CheckDefinition | None) -> dict[str, Any]:
    return {
        "Node": check.node,
        "CheckID": check.id,
        "Name": check.name,
        "Status": check.status,
        "Notes": check.notes,
        "Output": check.output,
        "ServiceID": check.service_id,
        "ServiceName": check.service_name,
        "ServiceTags": check.service_tags,
        "Type": defn.kind if defn else check.type,
        "Interval": check.interval,
        "Timeout": check.timeout,
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }


def _register_check(core: Core, defn: CheckDefinition, *, keep_status: bool = True) -> None:
    st = core.state
    existing = st.checks.get(core.node_name, {}).get(defn.id)
    status = defn.status or "critical"
    output = ""
    if keep_status and existing is not None and not defn.status:
        # Re-registering an existing check keeps its current state (as the agent does).
        status, output = existing.status, existing.output
    ensure_check(
        core,
        Check(
            node=core.node_name,
            id=defn.id,
            name=defn.name,
            status=status,
            notes=defn.notes,
            output=output,
            service_id=defn.service_id,
            service_name="",
            service_tags=[],
            type=defn.kind,
            interval=defn.interval_text,
            timeout=defn.timeout_text,
            create_index=0,
            modify_index=0,
        ),
    )
    if core.checks is not None:
        core.checks.add(defn)


def deregister_local_service(core: Core, service_id: str) -> bool:
    return delete_service(core, core.node_name, service_id)


def _local_check(core: Core, check_id: str) -> Check:
    check = core.state.checks.get(core.node_name, {}).get(check_id)
    if check is None or check.id == "serfHealth":
        raise ConsulError(
            404,
            f'Unknown check ID "{check_id}". '
            "Ensure that the check ID is passed, not the check name.",
        )
    return check


def _require_check_write(core: Core, request: web.Request, check: Check) -> None:
    if check.service_id:
        core.require(request, "service", check.service_name, WRITE)
    else:
        core.require(request, "node", check.node, WRITE)


# -- services ------------------------------------------------------------------------------------


async def service_register(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    body = await read_object(request)
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
    core.require(request, "service", svc.name, WRITE)
    from devstack.consul.catalog import ensure_service

    ensure_service(core, svc)
    wanted = {d.id for d in defns}
    if "replace-existing-checks" in request.query:
        for check in list(core.state.checks.get(core.node_name, {}).values()):
            if check.service_id == svc.id and check.id not in wanted:
                delete_check(core, core.node_name, check.id)
    for defn in defns:
        _register_check(core, defn)
    return ok_empty()


async def service_deregister(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    sid = request.match_info["id"]
    svc = core.state.services.get(core.node_name, {}).get(sid)
    if svc is None or sid == "consul":
        raise ConsulError(
            404,
            f'Unknown service ID "{sid}". '
            "Ensure that the service ID is passed, not the service name.",
        )
    core.require(request, "service", svc.name, WRITE)
    deregister_local_service(core, sid)
    return ok_empty()


async def services(request: web.Request) -> web.Response:
    core = core_of(request)
    opts = parse_query_options(request, core)
    local = core.state.services.get(core.node_name, {})
    out: dict[str, Any] = {}
    for sid in sorted(local):
        if sid == "consul" or not can_read_service(core, request, local[sid].name):
            continue
        body = agent_service_json(core, sid)
        if body is not None:
            out[sid] = body
    if opts.filter:
        out = apply_filter_map(out, opts.filter)
    return ok_json(out)


async def service_get(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    sid = request.match_info["id"]
    body = agent_service_json(core, sid) if sid != "consul" else None
    if body is None:
        raise ConsulError(404, f"unknown service ID: {sid}")
    core.require(request, "service", body["Service"], READ)
    return ok_json(body)


async def service_maintenance(request: web.Request) -> web.Response:
    core = core_of(request)
    sid = request.match_info["id"]
    enable = request.query.get("enable")
    if enable is None:
        raise bad_request("Missing value for enable")
    if enable not in ("true", "false"):
        raise bad_request(f"Invalid value for enable: {enable!r}")
    svc = core.state.services.get(core.node_name, {}).get(sid)
    if svc is None:
        raise ConsulError(404, f'Unknown service ID "{sid}"')
    core.require(request, "service", svc.name, WRITE)
    check_id = MAINT_SERVICE_PREFIX + sid
    if enable == "true":
        reason = request.query.get("reason") or "Maintenance mode is enabled for this service, "
        ensure_check(
            core,
            Check(
                node=core.node_name,
                id=check_id,
                name="Service Maintenance Mode",
                status="critical",
                notes=reason,
                output="",
                service_id=sid,
                service_name="",
                service_tags=[],
                type="maintenance",
                interval="",
                timeout="",
                create_index=0,
                modify_index=0,
            ),
        )
    else:
        delete_check(core, core.node_name, check_id)
    return ok_empty()


async def node_maintenance(request: web.Request) -> web.Response:
    core = core_of(request)
    enable = request.query.get("enable")
    if enable not in ("true", "false"):
        raise bad_request("Missing value for enable")
    core.require(request, "node", core.node_name, WRITE)
    if enable == "true":
        ensure_check(
            core,
            Check(
                node=core.node_name,
                id=NODE_MAINT_ID,
                name="Node Maintenance Mode",
                status="critical",
                notes=request.query.get("reason") or "Maintenance mode is enabled for this node",
                output="",
                service_id="",
                service_name="",
                service_tags=[],
                type="maintenance",
                interval="",
                timeout="",
                create_index=0,
                modify_index=0,
            ),
        )
    else:
        delete_check(core, core.node_name, NODE_MAINT_ID)
    return ok_empty()


# -- checks --------------------------------------------------------------------------------------


async def check_register(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    body = await read_object(request)
    if not body.text("Name"):
        raise bad_request("Missing check name")
    defn = parse_definition(body, "", body.text("Name"))
    if defn.service_id:
        svc = core.state.services.get(core.node_name, {}).get(defn.service_id)
        if svc is None:
            raise bad_request(f'ServiceID "{defn.service_id}" does not exist')
        core.require(request, "service", svc.name, WRITE)
    else:
        core.require(request, "node", core.node_name, WRITE)
    _register_check(core, defn)
    return ok_empty()


async def check_deregister(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    check = _local_check(core, request.match_info["id"])
    _require_check_write(core, request, check)
    delete_check(core, core.node_name, check.id)
    return ok_empty()


def _ttl_update(core: Core, request: web.Request, check_id: str, status: str, output: str) -> None:
    check = _local_check(core, check_id)
    _require_check_write(core, request, check)
    runner = core.checks
    defn = runner.definitions.get(check_id) if runner is not None else None
    if defn is None or defn.kind != "ttl" or runner is None:
        raise server_error(f'CheckID "{check_id}" does not have associated TTL')
    runner.refresh_ttl(check_id)
    runner.report(check_id, status, output, direct=True)


async def check_pass(request: web.Request) -> web.Response:
    return await _check_note(request, "passing")


async def check_warn(request: web.Request) -> web.Response:
    return await _check_note(request, "warning")


async def check_fail(request: web.Request) -> web.Response:
    return await _check_note(request, "critical")


async def _check_note(request: web.Request, status: str) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    _ttl_update(core, request, request.match_info["id"], status, request.query.get("note", ""))
    return ok_empty()


async def check_update(request: web.Request) -> web.Response:
    core = core_of(request)
    parse_query_options(request, core)
    data = await read_json(request)
    body = CI(data if isinstance(data, dict) else {})
    status = body.text("Status")
    if status not in ("passing", "warning", "critical"):
        raise bad_request(f"Invalid check status: '{status}'")
    _ttl_update(core, request, request.match_info["id"], status, body.text("Output"))
    return ok_empty()


async def checks(request: web.Request) -> web.Response:
    core = core_of(request)
    opts = parse_query_options(request, core)
    local = core.state.checks.get(core.node_name, {})
    runner = core.checks
    out: dict[str, Any] = {}
    authz = core.authz(request)
    for cid in sorted(local):
        check = local[cid]
        if cid == "serfHealth":
            continue
        if authz is not None:
            if check.service_id and not authz.allowed("service", check.service_name, READ):
                continue
            if not check.service_id and not authz.allowed("node", check.node, READ):
                continue
        defn = runner.definitions.get(cid) if runner is not None else None
        out[cid] = agent_check_json(check, defn)
    if opts.filter:
        out = apply_filter_map(out, opts.filter)
    return ok_json(out)


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
    core.require(request, "agent", core.node_name, READ)
    st = core.state
    local_checks = st.checks.get(core.node_name, {})
    runner = core.checks
    ttl_checks = sum(1 for d in (runner.definitions.values() if runner else []) if d.kind == "ttl")
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


# -- status --------------------------------------------------------------------------------------


async def status_leader(request: web.Request) -> web.Response:
    return ok_json(core_of(request).leader_addr())


async def status_peers(request: web.Request) -> web.Response:
    core = core_of(request)
    if core.faults.no_leader:
        return ok_json([])
    return ok_json([f"{core.config.advertise_addr}:8300"])


def mark_check(
    core: Core, check_id: str, status: str, output: str, node: str | None = None
) -> bool:
    """Force a check's status (fault injection); a local probe may overwrite it on its next run."""
    target = node or core.node_name
    check = core.state.find_check(check_id, target)
    if check is None:
        return False
    if core.checks is not None and target == core.node_name:
        core.checks.report(check_id, status, output, direct=True)
        if check_id not in core.checks.definitions:
            set_check_status(core, target, check_id, status, output)
        return True
    return set_check_status(core, target, check_id, status, output)
