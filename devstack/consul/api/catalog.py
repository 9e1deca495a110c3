"""``/v1/catalog/*``: register and deregister nodes, services and checks; the blocking reads.

List reads drop what the token may not read (and say so in a header when a token was sent);
``?filter=`` applies after that.
"""

from __future__ import annotations

from aiohttp import web

from devstack.consul.acl import WRITE
from devstack.consul.api.common import (
    PARKING_KEY,
    authorizer,
    can_read_node,
    can_read_service,
    core_of,
    filtered,
    node_meta_filter,
    ok_json,
    parse_query_options,
    read_object,
    request_token,
    require,
    satisfies_meta,
    token_sent,
)
from devstack.consul.api.mux import tail
from devstack.consul.api.reads import Result, blocking, blocking_respond, forward, respond
from devstack.consul.bexpr import compile_filter
from devstack.consul.catalog import (
    catalog_service_json,
    delete_check,
    delete_node,
    delete_service,
    ensure_check,
    ensure_node,
    ensure_service,
    instances,
    node_json,
    service_from,
    service_json,
    status_of,
    str_map,
)
from devstack.consul.encoding import CI
from devstack.consul.errors import bad_request, server_error
from devstack.consul.state import Check, State

# -- handlers -----------------------------------------------------------------------------------


async def datacenters(request: web.Request) -> web.StreamResponse:
    return ok_json([core_of(request).config.datacenter])


async def list_nodes(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    st = core.state

    meta = node_meta_filter(request)

    def run() -> Result:
        nodes = [st.nodes[n] for n in sorted(st.nodes) if satisfies_meta(st.nodes[n].meta, meta)]
        keep = [n for n in nodes if can_read_node(request, n.name)]
        body = filtered([node_json(n) for n in keep], opts.filter)
        return Result(st.table_index["nodes"], body, filtered=len(keep) != len(nodes))

    result = await blocking(core, opts, run, topics=("nodes",), meta_on_error=True)
    return respond(core, result, opts, token_sent=token_sent(request), consistency=True)


async def list_services(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    st = core.state

    meta = node_meta_filter(request)

    def run() -> Result:
        tags: dict[str, set[str]] = {}
        hidden = False
        for node in sorted(st.services):
            known = st.nodes.get(node)
            if meta and (known is None or not satisfies_meta(known.meta, meta)):
                continue
            if not can_read_node(request, node):
                hidden = hidden or bool(st.services[node])
                continue
            for svc in st.services[node].values():
                if not can_read_service(request, svc.name):
                    hidden = True
                    continue
                tags.setdefault(svc.name, set()).update(svc.tags)
        body = {name: sorted(tags[name]) for name in sorted(tags)}
        return Result(st.table_index["services"], body, filtered=hidden)

    result = await blocking(core, opts, run, topics=("services",), meta_on_error=True)
    return respond(core, result, opts, token_sent=token_sent(request), consistency=True)


async def service_nodes(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    name = tail(request)
    if not name:
        raise bad_request("Missing service name")
    tags = request.query.getall("tag", [])
    st = core.state

    meta = node_meta_filter(request)

    def run() -> Result:
        found = [(n, s) for n, s in instances(st, name, tags) if satisfies_meta(n.meta, meta)]
        if not can_read_service(request, name):
            return Result(st.health_service_index(name), [], filtered=bool(found))
        keep = [(n, s) for n, s in found if can_read_node(request, n.name)]
        body = filtered([catalog_service_json(n, s) for n, s in keep], opts.filter)
        return Result(st.health_service_index(name), body, filtered=len(keep) != len(found))

    key = (
        "catalog-service",
        name,
        tuple(tags),
        tuple(sorted(meta.items())),
        opts.filter,
        request_token(request),
    )
    return await blocking_respond(
        core,
        request.app[PARKING_KEY],
        request,
        opts,
        run,
        key,
        ("svc:" + name,),
        token_sent=token_sent(request),
        consistency=True,
        meta_on_error=True,
    )


async def node_services(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    name = tail(request)
    if not name:
        raise bad_request("Missing node name")
    st = core.state
    # Compiled before the node is looked up: a bad expression fails for any node, as the RPC
    # creates its filter first.
    wanted = compile_filter(opts.filter) if opts.filter else None

    def run() -> Result:
        index = st.max_index("nodes", "services")
        node = st.nodes.get(name)
        if node is None or not can_read_node(request, name):
            return Result(index, None, filtered=node is not None)
        services = st.services.get(name, {})
        keep = {
            sid: service_json(s)
            for sid, s in sorted(services.items())
            if can_read_service(request, s.name)
        }
        hidden = len(keep) != len(services)
        if wanted is not None:
            # ``?filter=`` selects among the node's services (``NodeServices.Services``).
            keep = {sid: shape for sid, shape in keep.items() if wanted(shape)}
        body = {"Node": node_json(node), "Services": keep}
        return Result(index, body, filtered=hidden)

    result = await blocking(core, opts, run, topics=("nodes", "services"), meta_on_error=True)
    return respond(core, result, opts, token_sent=token_sent(request), consistency=True)


def _node_writes(st: State, node: str, body: CI, skip_node: bool) -> bool:
    """``RegisterRequest.ChangesNode``: only a change to the node needs ``node:write``."""
    existing = st.nodes.get(node)
    if existing is None:
        return True
    if skip_node:
        return False
    tagged = body.get("TaggedAddresses")
    meta = body.get("NodeMeta")
    return (
        body.text("Address") != existing.address
        or (body.text("ID") not in ("", existing.id))
        or (tagged is not None and tagged != existing.tagged_addresses)
        or (meta is not None and meta != existing.meta)
    )


async def register(request: web.Request) -> web.StreamResponse:
    """``Catalog.Register``: the datacenter comes from the body, the checks run as the RPC's."""
    core = core_of(request)
    body = await read_object(request, "structs.RegisterRequest")
    forward(core, body.text("Datacenter"))
    node = body.text("Node")
    if not node:
        raise server_error("Must provide node")
    skip_node = bool(body.get("SkipNodeUpdate", default=False))
    address = body.text("Address")
    if not address and not skip_node:
        raise server_error("Must provide address if SkipNodeUpdate is not set")
    svc_body = body.obj("Service")
    service = None
    if svc_body is not None:
        if svc_body.text("ID") and not svc_body.text("Service"):
            raise server_error(
                "Must provide service name (Service.Service) when service ID is provided"
            )
        if svc_body.text("Address") in ("0.0.0.0", "::", "[::]"):
            raise server_error("Invalid service address")
        service = service_from(node, svc_body)
    check_bodies: list[CI] = []
    single = body.obj("Check")
    if single is not None:
        check_bodies.append(single)
    many = body.get("Checks")
    if many is not None:
        if not isinstance(many, list) or not all(isinstance(c, dict) for c in many):
            raise bad_request(
                "Request decode failed: json: cannot unmarshal value into Go struct field "
                "RegisterRequest.Checks of type structs.HealthChecks"
            )
        check_bodies.extend(CI(c) for c in many)
    st = core.state
    if service is not None:
        require(request, "service", service.name, WRITE)
    if _node_writes(st, node, body, skip_node):
        require(request, "node", node, WRITE)
    for cb in check_bodies:
        if not cb.text("ServiceID"):
            require(request, "node", node, WRITE)
    if not skip_node or node not in st.nodes:
        ensure_node(
            st,
            node,
            address,
            node_id=body.text("ID"),
            tagged=str_map(body.get("TaggedAddresses"), "TaggedAddresses") or None,
            meta=str_map(body.get("NodeMeta"), "NodeMeta") or None,
        )
    if service is not None:
        ensure_service(st, service)
    for cb in check_bodies:
        # checkPreApply: a check without an ID takes its name.
        cid = cb.text("CheckID", "ID") or cb.text("Name")
        definition = cb.obj("Definition")
        ensure_check(
            st,
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
    """``Catalog.Deregister``: ``node:write`` covers everything; else the service's or check's."""
    core = core_of(request)
    body = await read_object(request, "structs.DeregisterRequest")
    forward(core, body.text("Datacenter"))
    node = body.text("Node")
    if not node:
        raise server_error("Must provide node")
    service_id = body.text("ServiceID")
    check_id = body.text("CheckID")
    st = core.state
    authz = authorizer(request)
    if authz is not None and not authz.allowed("node", node, WRITE):
        if service_id:
            svc = st.services.get(node, {}).get(service_id)
            if svc is None:
                raise server_error(f"Unknown service ID '{service_id}'")
            require(request, "service", svc.name, WRITE)
        elif check_id:
            check = st.checks.get(node, {}).get(check_id)
            if check is None:
                raise server_error(f"Unknown check ID '{check_id}'")
            if check.service_id:
                require(request, "service", check.service_name, WRITE)
            else:
                require(request, "node", node, WRITE)
        else:
            require(request, "node", node, WRITE)
    if service_id:
        delete_service(st, node, service_id)
    elif check_id:
        delete_check(st, node, check_id)
    else:
        delete_node(st, node)
    return ok_json(True)
