"""The fault controls, shared by the Python handle and the ``/_devstack/*`` admin API.

Real Consul never serves paths outside ``/v1/``, so the admin API cannot collide with anything a
client sends; it bypasses ACLs and faults so a test can always heal the agent it broke.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from devstack.consul.agent import mark_check
from devstack.consul.core import Core, core_of
from devstack.consul.http import CI, ConsulError, bad_request, ok_json, read_json
from devstack.consul.sessions import invalidate_session


def reset_index(core: Core, to: int | None = None) -> int:
    """Emulate a snapshot restore: the index goes back to ``to`` (default: half of it)."""
    target = max(1, core.state.index // 2 if to is None else to)
    core.restores += 1
    core.state.reset_index(target)
    return target


def expire_session(core: Core, session_id: str) -> bool:
    """Invalidate a session as if its TTL had run out (lock-delay applies)."""
    return invalidate_session(core, session_id)


def force_check(
    core: Core, check_id: str, status: str = "critical", output: str = "", node: str | None = None
) -> bool:
    if status not in ("passing", "warning", "critical"):
        raise ValueError(f"invalid status {status!r}")
    return mark_check(core, check_id, status, output or f"forced {status} by devstack", node)


def stats(core: Core) -> dict[str, Any]:
    return {
        "Index": core.state.index,
        "BlockingQueries": core.state.watches.count(),
        "Keys": len(core.state.kv),
        "Sessions": len(core.state.sessions),
        "Faults": core.faults.as_dict(),
    }


# -- HTTP ---------------------------------------------------------------------------------------


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
