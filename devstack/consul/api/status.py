"""``/v1/status/*``: who the raft leader and peers are (``""`` / ``[]`` during a leaderless
period, which is what clients wait on before they start)."""

from __future__ import annotations

from aiohttp import web

from devstack.consul.api.common import core_of, ok_json


async def status_leader(request: web.Request) -> web.Response:
    return ok_json(core_of(request).leader_addr())


async def status_peers(request: web.Request) -> web.Response:
    core = core_of(request)
    if core.faults.no_leader:
        return ok_json([])
    return ok_json([f"{core.config.advertise_addr}:8300"])
