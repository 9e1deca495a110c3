"""The service catalog: nodes, service instances and health checks, and ``/v1/catalog/*``.

Writes follow ``agent/consul/state/catalog.go``: an identical re-registration changes nothing (so
periodic syncs from Nomad do not churn indexes), every change bumps its table index and the
per-service index that ``/v1/health/service/<name>`` blocks on, and a check that turns critical
or disappears invalidates the sessions linked to it.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from devstack.consul.acl import READ, WRITE
from devstack.consul.bexpr import apply_filter
from devstack.consul.core import Core, core_of
from devstack.consul.http import (
    CI,
    ConsulError,
    Result,
    bad_request,
    blocking,
    ok_json,
    parse_query_options,
    read_object,
    respond,
)
from devstack.consul.sessions import invalidate_for_check, invalidate_for_node
from devstack.consul.state import Check, Node, ServiceInstance

STATUSES = ("passing", "warning", "critical")
PROXY: dict[str, Any] = {"Mode": "", "MeshGateway": {}, "Expose": {}}


# -- JSON shapes --------------------------------------------------------------------------------


def node_json(n: Node) -> dict[str, Any]:
    return {
        "ID": n.id,
        "Node": n.name,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": n.tagged_addresses,
        "Meta": n.meta,
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    }


def service_json(s: ServiceInstance) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s.kind:
        out["Kind"] = s.kind
    out.update(ID=s.id, Service=s.name, Tags=s.tags, Address=s.address)
    if s.tagged_addresses:
        out["TaggedAddresses"] = s.tagged_addresses
    out.update(
        Meta=s.meta,
        Port=s.port,
        Weights=s.weights,
        EnableTagOverride=s.enable_tag_override,
        Proxy=PROXY,
        Connect={},
        PeerName="",
        CreateIndex=s.create_index,
        ModifyIndex=s.modify_index,
    )
    return out


def catalog_service_json(n: Node, s: ServiceInstance) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ID": n.id,
        "Node": n.name,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": n.tagged_addresses,
        "NodeMeta": n.meta,
        "ServiceKind": s.kind,
        "ServiceID": s.id,
        "ServiceName": s.name,
        "ServiceTags": s.tags,
        "ServiceAddress": s.address,
    }
    if s.tagged_addresses:
        out["ServiceTaggedAddresses"] = s.tagged_addresses
    out.update(
        ServiceWeights=s.weights,
        ServiceMeta=s.meta,
        ServicePort=s.port,
        ServiceSocketPath="",
        ServiceEnableTagOverride=s.enable_tag_override,
        ServiceProxy=PROXY,
        ServiceConnect={},
        ServicePeerName="",
        CreateIndex=s.create_index,
        ModifyIndex=s.modify_index,
    )
    return out


def check_json(c: Check) -> dict[str, Any]:
    return {
        "Node": c.node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status,
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": c.service_tags,
        "Type": c.type,
        "Interval": c.interval,
        "Timeout": c.timeout,
        "ExposedPort": 0,
        "Definition": c.definition,
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    }


# -- state writes -------------------------------------------------------------------------------


def ensure_node(
    core: Core,
    name: str,
    address: str,
    *,
    node_id: str = "",
    tagged: dict[str, str] | None = None,
    meta: dict[str, str] | None = None,
) -> None:
    st = core.state
    existing = st.nodes.get(name)
    tagged = tagged if tagged is not None else (existing.tagged_addresses if existing else {})
    meta = meta if meta is not None else (existing.meta if existing else {})
    if existing is not None:
        if (
            existing.address == address
            and existing.tagged_addresses == tagged
            and existing.meta == meta
            and (not node_id or node_id == existing.id)
        ):
            return
        idx = st.next_index()
        existing.address, existing.tagged_addresses, existing.meta = address, tagged, meta
        if node_id:
            existing.id = node_id
        existing.modify_index = idx
    else:
        idx = st.next_index()
        st.nodes[name] = Node(
            id=node_id or str(uuid.uuid4()),
            name=name,
            address=address,
            datacenter=core.config.datacenter,
            tagged_addresses=tagged,
            meta=meta,
            create_index=idx,
            modify_index=idx,
        )
    st.bump("nodes", idx)
    for svc in st.service_names_on(name):
        st.bump_service(svc, idx)


def ensure_service(core: Core, svc: ServiceInstance) -> None:
    st = core.state
    node_services = st.services.setdefault(svc.node, {})
    existing = node_services.get(svc.id)
    if existing is not None and _same_service(existing, svc):
        return
    idx = st.next_index()
    svc.create_index = existing.create_index if existing else idx
    svc.modify_index = idx
    node_services[svc.id] = svc
    st.bump("services", idx)
    st.bump_service(svc.name, idx)
    if existing is not None and existing.name != svc.name:
        st.bump_service(existing.name, idx)
    # Checks carry a copy of the service's name and tags.
    for check in st.checks.get(svc.node, {}).values():
        if check.service_id == svc.id and (
            check.service_name != svc.name or check.service_tags != svc.tags
        ):
            check.service_name, check.service_tags = svc.name, list(svc.tags)
            check.modify_index = idx
            st.bump("checks", idx)


def _same_service(a: ServiceInstance, b: ServiceInstance) -> bool:
    return (
        a.name == b.name
        and a.tags == b.tags
        and a.address == b.address
        and a.port == b.port
        and a.meta == b.meta
        and a.tagged_addresses == b.tagged_addresses
        and a.weights == b.weights
        and a.enable_tag_override == b.enable_tag_override
        and a.kind == b.kind
    )


def ensure_check(core: Core, check: Check) -> None:
    st = core.state
    node_checks = st.checks.setdefault(check.node, {})
    existing = node_checks.get(check.id)
    if check.service_id:
        svc = st.services.get(check.node, {}).get(check.service_id)
        if svc is None:
            raise ConsulError(500, f"Missing service registration for check '{check.id}'")
        check.service_name, check.service_tags = svc.name, list(svc.tags)
    if existing is not None and _same_check(existing, check):
        return
    idx = st.next_index()
    check.create_index = existing.create_index if existing else idx
    check.modify_index = idx
    node_checks[check.id] = check
    _bump_check(core, check, idx)
    if (
        existing is not None
        and existing.service_name
        and existing.service_name != check.service_name
    ):
        st.bump_service(existing.service_name, idx)
    if check.status == "critical" and (existing is None or existing.status != "critical"):
        invalidate_for_check(core, check.node, check.id)


def _same_check(a: Check, b: Check) -> bool:
    return (
        a.name == b.name
        and a.status == b.status
        and a.notes == b.notes
        and a.output == b.output
        and a.service_id == b.service_id
        and a.service_tags == b.service_tags
        and a.type == b.type
        and a.interval == b.interval
        and a.timeout == b.timeout
    )


def _bump_check(core: Core, check: Check, idx: int) -> None:
    st = core.state
    st.bump("checks", idx)
    if check.service_id:
        st.bump_service(check.service_name, idx)
    else:
        for name in st.service_names_on(check.node):
            st.bump_service(name, idx)


def set_check_status(core: Core, node: str, check_id: str, status: str, output: str) -> bool:
    """Record a check result; only a status change is a catalog write (as anti-entropy does)."""
    st = core.state
    check = st.checks.get(node, {}).get(check_id)
    if check is None:
        return False
    if check.status == status:
        # Output-only changes are held back by ``check_update_interval`` in Consul; keeping them
        # local spares every watcher of the service a wake-up per check run.
        check.output = output
        return True
    idx = st.next_index()
    check.status, check.output, check.modify_index = status, output, idx
    _bump_check(core, check, idx)
    if status == "critical":
        invalidate_for_check(core, node, check_id)
    return True


def delete_check(core: Core, node: str, check_id: str) -> bool:
    st = core.state
    check = st.checks.get(node, {}).pop(check_id, None)
    if check is None:
        return False
    idx = st.next_index()
    _bump_check(core, check, idx)
    invalidate_for_check(core, node, check_id)
    if core.checks is not None and node == core.node_name:
        core.checks.stop(check_id)
    return True


def delete_service(core: Core, node: str, service_id: str) -> bool:
    st = core.state
    svc = st.services.get(node, {}).pop(service_id, None)
    if svc is None:
        return False
    for cid in [c.id for c in st.checks.get(node, {}).values() if c.service_id == service_id]:
        delete_check(core, node, cid)
    idx = st.next_index()
    st.bump("services", idx)
    st.bump_service(svc.name, idx)
    return True


def delete_node(core: Core, node: str) -> bool:
    st = core.state
    if node not in st.nodes:
        return False
    for sid in list(st.services.get(node, {})):
        delete_service(core, node, sid)
    for cid in list(st.checks.get(node, {})):
        delete_check(core, node, cid)
    invalidate_for_node(core, node)
    del st.nodes[node]
    st.services.pop(node, None)
    st.checks.pop(node, None)
    idx = st.next_index()
    st.bump("nodes", idx)
    return True


# -- decoding registration bodies ---------------------------------------------------------------


def str_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad_request(f"Request decode failed: {field} must be a map of strings")
    return dict(value)


def str_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"Request decode failed: {field} must be a list of strings")
    return list(value)


def port_of(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise bad_request("Request decode failed: invalid Port")
    return value


def tagged_service_addresses(value: Any) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("Request decode failed: TaggedAddresses must be an object")
    out: dict[str, dict[str, Any]] = {}
    for name, addr in value.items():
        if not isinstance(addr, dict):
            raise bad_request("Request decode failed: invalid TaggedAddresses entry")
        ci = CI(addr)
        out[name] = {"Address": ci.text("Address"), "Port": port_of(ci.get("Port"))}
    return out


def weights_of(value: Any) -> dict[str, int]:
    if value is None:
        return {"Passing": 1, "Warning": 1}
    if not isinstance(value, dict):
        raise bad_request("Request decode failed: Weights must be an object")
    ci = CI(value)
    passing, warning = ci.get("Passing", default=1), ci.get("Warning", default=1)
    if not isinstance(passing, int) or not isinstance(warning, int):
        raise bad_request("Request decode failed: Weights must be integers")
    if passing < 1:
        raise bad_request("Passing must be greater than 0")
    return {"Passing": passing, "Warning": warning}


def service_from(node: str, body: CI, *, name_field: str = "Service") -> ServiceInstance:
    name = body.text(name_field, "Name")
    if not name:
        raise bad_request("Missing service name")
    address = body.text("Address")
    if address in ("0.0.0.0", "::", "[::]"):
        raise bad_request(f"Invalid service address {address}")
    return ServiceInstance(
        node=node,
        id=body.text("ID") or name,
        name=name,
        tags=str_list(body.get("Tags"), "Tags"),
        address=address,
        port=port_of(body.get("Port")),
        meta=str_map(body.get("Meta"), "Meta"),
        tagged_addresses=tagged_service_addresses(body.get("TaggedAddresses")),
        weights=weights_of(body.get("Weights")),
        enable_tag_override=bool(body.get("EnableTagOverride", default=False)),
        kind=body.text("Kind"),
        create_index=0,
        modify_index=0,
    )


def status_of(value: Any, default: str = "critical") -> str:
    if value in (None, ""):
        return default
    if value not in STATUSES:
        raise bad_request(f"Status for checks must 'passing', 'warning', 'critical', got {value!r}")
    return str(value)


# -- filtering helpers shared with health/agent -------------------------------------------------


def can_read_service(core: Core, request: web.Request, name: str) -> bool:
    authz = core.authz(request)
    return authz is None or authz.allowed("service", name, READ)


def can_read_node(core: Core, request: web.Request, name: str) -> bool:
    authz = core.authz(request)
    return authz is None or authz.allowed("node", name, READ)


def filtered(result: list[Any], opts_filter: str) -> list[Any]:
    return apply_filter(result, opts_filter) if opts_filter else result


# -- HTTP ---------------------------------------------------------------------------------------


async def datacenters(request: web.Request) -> web.StreamResponse:
    return ok_json([core_of(request).config.datacenter])


async def list_nodes(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    st = core.state

    def run() -> Result:
        nodes = [st.nodes[n] for n in sorted(st.nodes)]
        keep = [n for n in nodes if can_read_node(core, request, n.name)]
        body = filtered([node_json(n) for n in keep], opts.filter)
        return Result(st.table_index["nodes"], body, filtered=len(keep) != len(nodes))

    result = await blocking(core, opts, run, topics=("nodes",))
    return respond(core, result, opts, token_sent=core.token_sent(request))


async def list_services(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    st = core.state

    def run() -> Result:
        tags: dict[str, set[str]] = {}
        hidden = False
        for node in sorted(st.services):
            if not can_read_node(core, request, node):
                hidden = hidden or bool(st.services[node])
                continue
            for svc in st.services[node].values():
                if not can_read_service(core, request, svc.name):
                    hidden = True
                    continue
                tags.setdefault(svc.name, set()).update(svc.tags)
        body = {name: sorted(tags[name]) for name in sorted(tags)}
        return Result(st.table_index["services"], body, filtered=hidden)

    result = await blocking(core, opts, run, topics=("services",))
    return respond(core, result, opts, token_sent=core.token_sent(request))


def instances(core: Core, name: str, tags: list[str]) -> list[tuple[Node, ServiceInstance]]:
    st = core.state
    out: list[tuple[Node, ServiceInstance]] = []
    for node_name in sorted(st.services):
        node = st.nodes.get(node_name)
        if node is None:
            continue
        for sid in sorted(st.services[node_name]):
            svc = st.services[node_name][sid]
            if svc.name == name and all(t in svc.tags for t in tags):
                out.append((node, svc))
    return out


async def service_nodes(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    name = request.match_info["name"]
    tags = request.query.getall("tag", [])
    st = core.state

    def run() -> Result:
        found = instances(core, name, tags)
        if not can_read_service(core, request, name):
            return Result(st.health_service_index(name), [], filtered=bool(found))
        keep = [(n, s) for n, s in found if can_read_node(core, request, n.name)]
        body = filtered([catalog_service_json(n, s) for n, s in keep], opts.filter)
        return Result(st.health_service_index(name), body, filtered=len(keep) != len(found))

    result = await blocking(core, opts, run, topics=("svc:" + name,))
    return respond(core, result, opts, token_sent=core.token_sent(request))


async def node_services(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    name = request.match_info["node"]
    st = core.state

    def run() -> Result:
        index = st.max_index("nodes", "services")
        node = st.nodes.get(name)
        if node is None or not can_read_node(core, request, name):
            return Result(index, None, filtered=node is not None)
        services = st.services.get(name, {})
        keep = {
            sid: service_json(s)
            for sid, s in sorted(services.items())
            if can_read_service(core, request, s.name)
        }
        body = {"Node": node_json(node), "Services": keep}
        return Result(index, body, filtered=len(keep) != len(services))

    result = await blocking(core, opts, run, topics=("nodes", "services"))
    return respond(core, result, opts, token_sent=core.token_sent(request))


async def register(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    parse_query_options(request, core)
    body = await read_object(request)
    node = body.text("Node")
    if not node:
        raise bad_request("Must provide node")
    skip_node = bool(body.get("SkipNodeUpdate", default=False))
    address = body.text("Address")
    if not address and not skip_node:
        raise bad_request("Must provide address if SkipNodeUpdate is not set")
    svc_body = body.obj("Service")
    service = service_from(node, svc_body) if svc_body is not None else None
    check_bodies: list[CI] = []
    single = body.obj("Check")
    if single is not None:
        check_bodies.append(single)
    many = body.get("Checks")
    if many is not None:
        if not isinstance(many, list) or not all(isinstance(c, dict) for c in many):
            raise bad_request("Request decode failed: Checks must be a list of objects")
        check_bodies.extend(CI(c) for c in many)
    core.require(request, "node", node, WRITE)
    if service is not None:
        core.require(request, "service", service.name, WRITE)
    core.require_leader()
    st = core.state
    if not skip_node or node not in st.nodes:
        ensure_node(
            core,
            node,
            address,
            node_id=body.text("ID"),
            tagged=str_map(body.get("TaggedAddresses"), "TaggedAddresses") or None,
            meta=str_map(body.get("NodeMeta"), "NodeMeta") or None,
        )
    if service is not None:
        ensure_service(core, service)
    for cb in check_bodies:
        cid = cb.text("CheckID", "ID")
        if not cid:
            raise bad_request("Missing check ID")
        definition = cb.obj("Definition")
        ensure_check(
            core,
            Check(
                node=node,
                id=cid,
                name=cb.text("Name") or cid,
                status=status_of(cb.get("Status")),
                notes=cb.text("Notes"),
                output=cb.text("Output"),
                service_id=cb.text("ServiceID"),
                service_name="",
                service_tags=[],
                type=cb.text("Type"),
                interval=definition.text("Interval") if definition else "",
                timeout=definition.text("Timeout") if definition else "",
                create_index=0,
                modify_index=0,
                definition=definition.raw if definition else {},
            ),
        )
    return ok_json(True)


async def deregister(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    parse_query_options(request, core)
    body = await read_object(request)
    node = body.text("Node")
    if not node:
        raise bad_request("Must provide node")
    service_id = body.text("ServiceID")
    check_id = body.text("CheckID")
    st = core.state
    if service_id:
        svc = st.services.get(node, {}).get(service_id)
        core.require(request, "service", svc.name if svc else service_id, WRITE)
        core.require_leader()
        delete_service(core, node, service_id)
    elif check_id:
        check = st.checks.get(node, {}).get(check_id)
        if check is not None and check.service_id:
            core.require(request, "service", check.service_name, WRITE)
        else:
            core.require(request, "node", node, WRITE)
        core.require_leader()
        delete_check(core, node, check_id)
    else:
        core.require(request, "node", node, WRITE)
        core.require_leader()
        delete_node(core, node)
    return ok_json(True)
