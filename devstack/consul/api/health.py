"""``/v1/health/*``: service instances with their checks, the feed of service discovery.

``/v1/health/service/<name>?passing`` is what the allocations controller watches; it blocks on
the per-service index, so only changes to that service (its instances, their checks, or the
node-level checks of their nodes) wake it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from devstack.consul.api.common import (
    PARKING_KEY,
    can_read_node,
    can_read_service,
    core_of,
    filtered,
    node_meta_filter,
    parse_query_options,
    request_token,
    satisfies_meta,
    token_sent,
)
from devstack.consul.api.mux import tail
from devstack.consul.api.reads import Result, blocking, blocking_respond, respond
from devstack.consul.catalog import (
    check_encoded,
    check_json,
    instances,
    node_json,
    service_json,
)
from devstack.consul.errors import bad_request
from devstack.consul.state import Check

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _go_bool(request: web.Request, name: str) -> bool:
    """``getBoolQueryParam``: present and empty is true, else ``strconv.ParseBool``."""
    if name not in request.query:
        return False
    value = request.query.get(name, "")
    if value == "" or value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise bad_request(f"Invalid value for ?{name}")


def _checks_for(checks: dict[str, Check], service_id: str) -> list[Check]:
    return [checks[cid] for cid in sorted(checks) if checks[cid].service_id in ("", service_id)]


async def service(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    name = tail(request)
    if not name:
        raise bad_request("Missing service name")
    tags = request.query.getall("tag", [])
    passing = _go_bool(request, "passing")
    meta = node_meta_filter(request)
    st = core.state

    def run() -> Result:
        index = st.health_service_index(name)
        found = [(n, s) for n, s in instances(st, name, tags) if satisfies_meta(n.meta, meta)]
        if not can_read_service(request, name):
            return Result(index, [], filtered=bool(found))
        entries: list[dict[str, Any]] = []
        hidden = False
        for node, svc in found:
            if not can_read_node(request, node.name):
                hidden = True
                continue
            checks = _checks_for(st.checks.get(node.name, {}), svc.id)
            if passing and any(c.status != "passing" for c in checks):
                continue
            entries.append(
                {
                    "Node": node_json(node),
                    "Service": service_json(svc),
                    "Checks": [check_json(c) for c in checks],
                }
            )
        return Result(index, filtered(entries, opts.filter), filtered=hidden)

    # The token's secret stands for its permissions: same secret, same visible result.
    key = (
        "health-service",
        name,
        tuple(tags),
        passing,
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


async def service_checks(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    name = tail(request)
    if not name:
        raise bad_request("Missing service name")
    st = core.state

    def run() -> Result:
        index = st.health_service_index(name)
        found = [c for c in st.all_checks() if c.service_name == name and c.service_id]
        if not can_read_service(request, name):
            return Result(index, [], filtered=bool(found))
        keep = [c for c in found if can_read_node(request, c.node)]
        body = filtered([check_json(c) for c in keep], opts.filter)
        return Result(index, body, filtered=len(keep) != len(found))

    result = await blocking(core, opts, run, topics=("svc:" + name,), meta_on_error=True)
    return respond(core, result, opts, token_sent=token_sent(request), consistency=True)


def _visible_checks(request: web.Request, checks: list[Check]) -> list[Check]:
    out = []
    for c in checks:
        if not can_read_node(request, c.node):
            continue
        if c.service_id and not can_read_service(request, c.service_name):
            continue
        out.append(c)
    return out


async def state(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    wanted = tail(request)
    if not wanted:
        raise bad_request("Missing check state")
    st = core.state

    def run() -> Result:
        found = [c for c in st.all_checks() if wanted == "any" or c.status == wanted]
        keep = _visible_checks(request, found)
        # Each check's JSON is kept on it: the answer joins them (the datacenter's every check
        # at each change would otherwise be encoded again for every watcher).
        shapes = [check_encoded(c) for c in keep]
        body = filtered([shape for shape, _ in shapes], opts.filter)
        raw = None
        if not opts.pretty:
            chosen = {id(shape) for shape in body}
            raw = b"[" + b",".join(enc for shape, enc in shapes if id(shape) in chosen) + b"]"
        return Result(st.table_index["checks"], body, filtered=len(keep) != len(found), raw=raw)

    result = await blocking(core, opts, run, topics=("checks",), meta_on_error=True)
    return respond(core, result, opts, token_sent=token_sent(request), consistency=True)


async def node(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    name = tail(request)
    if not name:
        raise bad_request("Missing node name")
    st = core.state

    def run() -> Result:
        checks = st.checks.get(name, {})
        found = [checks[cid] for cid in sorted(checks)]
        keep = _visible_checks(request, found)
        body = filtered([check_json(c) for c in keep], opts.filter)
        return Result(st.table_index["checks"], body, filtered=len(keep) != len(found))

    result = await blocking(core, opts, run, topics=("checks",), meta_on_error=True)
    return respond(core, result, opts, token_sent=token_sent(request), consistency=True)
