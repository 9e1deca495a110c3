"""``/_devstack/*``: the devstack's own admin API (faults, index reset, session expiry, forced
check status, stats).

Real Consul never serves paths outside ``/v1/``, so the admin API cannot collide with anything a
client sends; it bypasses faults so a test can always heal the agent it broke. With ACLs on it
is not an open door: every call needs the management token, and the 403 says so.
"""

from __future__ import annotations

from aiohttp import web

from devstack.consul.api.common import core_of, ok_json, read_json, request_token
from devstack.consul.api.mux import tail
from devstack.consul.controls import expire_session, force_check, reset_index, stats
from devstack.consul.encoding import CI
from devstack.consul.errors import ConsulError, bad_request

NEEDS_MANAGEMENT = (
    "Permission denied: the devstack admin API (/_devstack/) needs the management token "
    "(X-Consul-Token, Authorization: Bearer or ?token=) while ACLs are enabled"
)


def require_management(request: web.Request) -> None:
    """With ACLs on, only the management token may drive the admin API."""
    core = core_of(request)
    if not core.acl.enabled:
        return
    try:
        authz = core.acl.authorizer(request_token(request))
    except LookupError as exc:
        raise ConsulError(403, "ACL not found") from exc
    if authz is None or not authz.management:
        raise ConsulError(403, NEEDS_MANAGEMENT)


async def _body(request: web.Request) -> CI:
    # The admin calls take their arguments from the query string as well; a body is optional.
    if not await request.read():
        return CI({})
    data = await read_json(request)
    if not isinstance(data, dict):
        raise bad_request("expected a JSON object")
    return CI(data)


def _target(request: web.Request, action: str) -> str:
    """``<id>/<action>`` below the pattern; anything else is not an admin path."""
    target, sep, rest = tail(request).rpartition("/")
    if not sep or rest != action or not target:
        raise ConsulError(404, f"unknown admin path {request.path}")
    return target


# -- handlers -----------------------------------------------------------------------------------


async def faults(request: web.Request) -> web.Response:
    require_management(request)
    core = core_of(request)
    if request.method == "PUT":
        data = (await _body(request)).raw
        try:
            core.faults.update(**data)
        except (TypeError, ValueError) as exc:
            raise bad_request(str(exc)) from exc
    elif request.method == "DELETE":
        core.faults.clear()
    return ok_json(core.faults.as_dict())


async def index_reset(request: web.Request) -> web.Response:
    require_management(request)
    core = core_of(request)
    raw = request.query.get("to")
    try:
        to = int(raw) if raw else None
    except ValueError as exc:
        raise bad_request("to must be an integer") from exc
    return ok_json({"Index": reset_index(core, to)})


async def session_expire(request: web.Request) -> web.Response:
    require_management(request)
    if not expire_session(core_of(request), _target(request, "expire")):
        raise ConsulError(404, "session not found")
    return ok_json(True)


async def check_force(request: web.Request) -> web.Response:
    require_management(request)
    core = core_of(request)
    body = await _body(request)
    status = body.text("Status") or request.query.get("status", "critical")
    try:
        found = force_check(
            core,
            _target(request, "force"),
            status,
            body.text("Output") or request.query.get("output", ""),
            body.text("Node") or request.query.get("node") or None,
        )
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    if not found:
        raise ConsulError(404, "check not found")
    return ok_json(True)


async def stats_handler(request: web.Request) -> web.Response:
    require_management(request)
    return ok_json(stats(core_of(request)))
