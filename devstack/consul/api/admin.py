"""``/_devstack/*``: the devstack's own admin API (faults, index reset, session expiry, forced
check status, stats).

Real Consul never serves paths outside ``/v1/``, so the admin API cannot collide with anything a
client sends; it bypasses faults so a test can always heal the agent it broke.
"""

from __future__ import annotations

from aiohttp import web

from devstack.consul.api.common import core_of, ok_json, read_json
from devstack.consul.controls import expire_session, force_check, reset_index, stats
from devstack.consul.encoding import CI
from devstack.consul.errors import ConsulError, bad_request

# -- handlers -----------------------------------------------------------------------------------


async def faults(request: web.Request) -> web.Response:
    core = core_of(request)
    if request.method == "PUT":
        data = await read_json(request)
        if not isinstance(data, dict):
            raise bad_request("expected a JSON object of faults")
        try:
            core.faults.update(**data)
        except (TypeError, ValueError) as exc:
            raise bad_request(str(exc)) from exc
    elif request.method == "DELETE":
        core.faults.clear()
    return ok_json(core.faults.as_dict())


async def index_reset(request: web.Request) -> web.Response:
    core = core_of(request)
    raw = request.query.get("to")
    try:
        to = int(raw) if raw else None
    except ValueError as exc:
        raise bad_request("to must be an integer") from exc
    return ok_json({"Index": reset_index(core, to)})


async def session_expire(request: web.Request) -> web.Response:
    if not expire_session(core_of(request), request.match_info["id"]):
        raise ConsulError(404, "session not found")
    return ok_json(True)


async def check_force(request: web.Request) -> web.Response:
    core = core_of(request)
    data = await read_json(request)
    body = CI(data if isinstance(data, dict) else {})
    status = body.text("Status") or request.query.get("status", "critical")
    try:
        found = force_check(
            core,
            request.match_info["id"],
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
    return ok_json(stats(core_of(request)))
