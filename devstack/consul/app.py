"""The aiohttp application: Consul's route table, ``wrap()``'s method rules, faults, errors.

Every request goes through one Go-style mux (``api/mux.py``) holding the patterns Consul
registers for the endpoints emulated here, with Consul's method lists in Consul's order. What the
mux does not route answers exactly as an agent answers an unknown path; a wrong method gets 405
with ``Allow``; every error an endpoint raises becomes Consul's plain-text body with its status;
and the fault middleware disturbs only ``/v1`` traffic, never the admin API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from devstack.consul.api import acl as acl_api
from devstack.consul.api import admin, agent, catalog, event, health, kv, status, txn
from devstack.consul.api import session as sessions
from devstack.consul.api.common import CORE_KEY, PARKING_KEY, wrapped_headers
from devstack.consul.api.mux import (
    GZIP_MIN_SIZE,
    Endpoint,
    ServeMux,
    accepts_gzip,
    allow_header,
    gzip_body,
)
from devstack.consul.api.parking import Parking
from devstack.consul.api.reads import Prewritten
from devstack.consul.core import Config, Core
from devstack.consul.errors import ConsulError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("devstack.consul")

GET, PUT, DELETE = "GET", "PUT", "DELETE"

# Patterns and method lists as Consul's agent/http_register.go declares them (the subset this
# agent serves); a pattern ending in "/" owns everything below it.
ENDPOINTS: list[Endpoint] = [
    Endpoint("/v1/acl/bootstrap", (PUT,), acl_api.bootstrap),
    Endpoint("/v1/acl/policies", (GET,), acl_api.policy_list),
    Endpoint("/v1/acl/policy", (PUT,), acl_api.policy_create),
    Endpoint("/v1/acl/policy/", (GET, PUT, DELETE), acl_api.policy_item),
    Endpoint("/v1/acl/policy/name/", (GET,), acl_api.policy_by_name),
    Endpoint("/v1/acl/tokens", (GET,), acl_api.token_list),
    Endpoint("/v1/acl/token", (PUT,), acl_api.token_create),
    Endpoint("/v1/acl/token/self", (GET,), acl_api.token_self),
    Endpoint("/v1/acl/token/", (GET, PUT, DELETE), acl_api.token_item),
    Endpoint("/v1/agent/self", (GET,), agent.self_),
    Endpoint("/v1/agent/maintenance", (PUT,), agent.node_maintenance),
    Endpoint("/v1/agent/services", (GET,), agent.services),
    Endpoint("/v1/agent/service/", (GET,), agent.service_get),
    Endpoint("/v1/agent/checks", (GET,), agent.checks),
    Endpoint("/v1/agent/health/service/id/", (GET,), agent.health_service_by_id),
    Endpoint("/v1/agent/health/service/name/", (GET,), agent.health_service_by_name),
    Endpoint("/v1/agent/members", (GET,), agent.members),
    Endpoint("/v1/agent/check/register", (PUT,), agent.check_register),
    Endpoint("/v1/agent/check/deregister/", (PUT,), agent.check_deregister),
    Endpoint("/v1/agent/check/pass/", (PUT,), agent.check_pass),
    Endpoint("/v1/agent/check/warn/", (PUT,), agent.check_warn),
    Endpoint("/v1/agent/check/fail/", (PUT,), agent.check_fail),
    Endpoint("/v1/agent/check/update/", (PUT,), agent.check_update),
    Endpoint("/v1/agent/service/register", (PUT,), agent.service_register),
    Endpoint("/v1/agent/service/deregister/", (PUT,), agent.service_deregister),
    Endpoint("/v1/agent/service/maintenance/", (PUT,), agent.service_maintenance),
    Endpoint("/v1/catalog/register", (PUT,), catalog.register),
    Endpoint("/v1/catalog/deregister", (PUT,), catalog.deregister),
    Endpoint("/v1/catalog/datacenters", (GET,), catalog.datacenters),
    Endpoint("/v1/catalog/nodes", (GET,), catalog.list_nodes),
    Endpoint("/v1/catalog/services", (GET,), catalog.list_services),
    Endpoint("/v1/catalog/service/", (GET,), catalog.service_nodes),
    Endpoint("/v1/catalog/node/", (GET,), catalog.node_services),
    Endpoint("/v1/event/fire/", (PUT,), event.event_fire),
    Endpoint("/v1/event/list", (GET,), event.event_list),
    Endpoint("/v1/health/node/", (GET,), health.node),
    Endpoint("/v1/health/checks/", (GET,), health.service_checks),
    Endpoint("/v1/health/state/", (GET,), health.state),
    Endpoint("/v1/health/service/", (GET,), health.service),
    Endpoint("/v1/kv/", (GET, PUT, DELETE), kv.kv_endpoint),
    Endpoint("/v1/session/create", (PUT,), sessions.create),
    Endpoint("/v1/session/destroy/", (PUT,), sessions.destroy),
    Endpoint("/v1/session/renew/", (PUT,), sessions.renew),
    Endpoint("/v1/session/info/", (GET,), sessions.info),
    Endpoint("/v1/session/node/", (GET,), sessions.list_node),
    Endpoint("/v1/session/list", (GET,), sessions.list_all),
    Endpoint("/v1/status/leader", (GET,), status.status_leader),
    Endpoint("/v1/status/peers", (GET,), status.status_peers),
    Endpoint("/v1/txn", (PUT,), txn.txn),
]

# The devstack's own controls; real Consul serves nothing outside /v1/ (and the UI).
ADMIN_ENDPOINTS: list[Endpoint] = [
    Endpoint("/_devstack/faults", (GET, PUT, DELETE), admin.faults),
    Endpoint("/_devstack/index-reset", (PUT,), admin.index_reset),
    Endpoint("/_devstack/session/", (PUT,), admin.session_expire),
    Endpoint("/_devstack/check/", (PUT,), admin.check_force),
    Endpoint("/_devstack/stats", (GET,), admin.stats_handler),
]


def _error(exc: ConsulError) -> web.Response:
    return web.Response(
        status=exc.status,
        text=exc.text,
        headers=exc.headers,
        content_type="text/plain",
        charset="utf-8",
    )


async def _invoke(endpoint: Endpoint, request: web.Request) -> web.StreamResponse:
    """``wrap()``: OPTIONS and method checks, then the handler, errors as Consul writes them."""
    if request.method == "OPTIONS":
        return web.Response(headers={"Allow": allow_header(endpoint.methods)})
    if request.method not in endpoint.methods:
        allow = allow_header(endpoint.methods)
        return _error(ConsulError(405, f"method {request.method} not allowed", {"Allow": allow}))
    try:
        return await endpoint.handler(request)
    except ConsulError as exc:
        return _error(exc)
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(ConsulError(500, f"Unexpected error: {exc}"))


def _finish(request: web.Request, response: web.StreamResponse, core: Core) -> web.StreamResponse:
    """What gziphandler and ``wrap()`` add to every response of a registered endpoint."""
    if isinstance(response, Prewritten):
        return response
    response.headers.update(wrapped_headers(core))
    if (
        isinstance(response, web.Response)
        and response.body is not None
        and isinstance(response.body, bytes)
        and len(response.body) >= GZIP_MIN_SIZE
        and "Content-Encoding" not in response.headers
        and accepts_gzip(request.headers.get("Accept-Encoding", ""))
    ):
        response.body = gzip_body(response.body)
        response.headers["Content-Encoding"] = "gzip"
    return response


def _dispatcher(mux: ServeMux, core: Core) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        routed = mux.route(request)
        if isinstance(routed, web.StreamResponse):
            return routed
        return _finish(request, await _invoke(routed, request), core)

    return handle


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    faults = request.app[CORE_KEY].faults
    if request.path.startswith("/v1/") and faults.applies(request.path):
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000.0)
        if faults.roll_drop():
            # Close the socket without answering, like a server that died mid-request.
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise asyncio.CancelledError
        if faults.roll_error():
            return _error(ConsulError(500, "rpc error: injected fault (devstack)"))
    return await handler(request)


async def create_app(config: Config | None = None) -> web.Application:
    """Build one emulated agent; its check runner starts and stops with the application."""
    core = Core(config or Config())
    app = web.Application(middlewares=[fault_middleware], client_max_size=16 * 1024 * 1024)
    app[CORE_KEY] = core
    parking = app[PARKING_KEY] = Parking(core, asyncio.get_running_loop())
    runner = core.checks
    mux = ServeMux([*ENDPOINTS, *ADMIN_ENDPOINTS])
    app.router.add_route("*", r"/{path:[\s\S]*}", _dispatcher(mux, core))

    async def on_startup(_: web.Application) -> None:
        await runner.start()

    async def on_cleanup(_: web.Application) -> None:
        parking.close()
        await runner.close()
        for session in core.state.sessions.values():
            if session.timer is not None:
                session.timer.cancel()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
