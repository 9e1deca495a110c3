"""The aiohttp application: Consul's route table, its method rules, faults and error mapping.

One path maps to one table of methods, so a wrong method gets Consul's 405 with an ``Allow``
header; every error raised by an endpoint becomes Consul's plain-text body with its status; and
the fault middleware disturbs only ``/v1`` traffic, never the admin API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from devstack.consul.api import acl as acl_api
from devstack.consul.api import admin, agent, catalog, health, kv, status, txn
from devstack.consul.api import session as sessions
from devstack.consul.api.common import CORE_KEY
from devstack.consul.core import Config, Core
from devstack.consul.errors import ConsulError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("devstack.consul")

ROUTES: list[tuple[str, dict[str, Handler]]] = [
    ("/v1/kv/{key:.*}", {"GET": kv.kv_get, "PUT": kv.kv_put, "DELETE": kv.kv_delete_handler}),
    ("/v1/txn", {"PUT": txn.txn}),
    ("/v1/session/create", {"PUT": sessions.create}),
    ("/v1/session/destroy/{id}", {"PUT": sessions.destroy}),
    ("/v1/session/renew/{id}", {"PUT": sessions.renew}),
    ("/v1/session/info/{id}", {"GET": sessions.info}),
    ("/v1/session/list", {"GET": sessions.list_all}),
    ("/v1/session/node/{node}", {"GET": sessions.list_node}),
    ("/v1/catalog/register", {"PUT": catalog.register}),
    ("/v1/catalog/deregister", {"PUT": catalog.deregister}),
    ("/v1/catalog/datacenters", {"GET": catalog.datacenters}),
    ("/v1/catalog/nodes", {"GET": catalog.list_nodes}),
    ("/v1/catalog/services", {"GET": catalog.list_services}),
    ("/v1/catalog/service/{name}", {"GET": catalog.service_nodes}),
    ("/v1/catalog/node/{node}", {"GET": catalog.node_services}),
    ("/v1/health/service/{name}", {"GET": health.service}),
    ("/v1/health/checks/{name}", {"GET": health.service_checks}),
    ("/v1/health/state/{state}", {"GET": health.state}),
    ("/v1/health/node/{node}", {"GET": health.node}),
    ("/v1/agent/self", {"GET": agent.self_}),
    ("/v1/agent/members", {"GET": agent.members}),
    ("/v1/agent/services", {"GET": agent.services}),
    ("/v1/agent/service/register", {"PUT": agent.service_register}),
    ("/v1/agent/service/deregister/{id}", {"PUT": agent.service_deregister}),
    ("/v1/agent/service/maintenance/{id}", {"PUT": agent.service_maintenance}),
    ("/v1/agent/service/{id}", {"GET": agent.service_get}),
    ("/v1/agent/maintenance", {"PUT": agent.node_maintenance}),
    ("/v1/agent/checks", {"GET": agent.checks}),
    ("/v1/agent/check/register", {"PUT": agent.check_register}),
    ("/v1/agent/check/deregister/{id}", {"PUT": agent.check_deregister}),
    ("/v1/agent/check/pass/{id}", {"PUT": agent.check_pass}),
    ("/v1/agent/check/warn/{id}", {"PUT": agent.check_warn}),
    ("/v1/agent/check/fail/{id}", {"PUT": agent.check_fail}),
    ("/v1/agent/check/update/{id}", {"PUT": agent.check_update}),
    ("/v1/status/leader", {"GET": status.status_leader}),
    ("/v1/status/peers", {"GET": status.status_peers}),
    ("/v1/acl/policy", {"PUT": acl_api.policy_create}),
    ("/v1/acl/policy/name/{name}", {"GET": acl_api.policy_by_name}),
    (
        "/v1/acl/policy/{id}",
        {"GET": acl_api.policy_item, "PUT": acl_api.policy_item, "DELETE": acl_api.policy_item},
    ),
    ("/v1/acl/policies", {"GET": acl_api.policy_list}),
    ("/v1/acl/token", {"PUT": acl_api.token_create}),
    ("/v1/acl/token/self", {"GET": acl_api.token_self}),
    (
        "/v1/acl/token/{id}",
        {"GET": acl_api.token_item, "PUT": acl_api.token_item, "DELETE": acl_api.token_item},
    ),
    ("/v1/acl/tokens", {"GET": acl_api.token_list}),
    ("/_devstack/faults", {"GET": admin.faults, "PUT": admin.faults, "DELETE": admin.faults}),
    ("/_devstack/index-reset", {"PUT": admin.index_reset}),
    ("/_devstack/session/{id}/expire", {"PUT": admin.session_expire}),
    ("/_devstack/check/{id}/force", {"PUT": admin.check_force}),
    ("/_devstack/stats", {"GET": admin.stats_handler}),
]


def _dispatch(methods: dict[str, Handler]) -> Handler:
    allow = ", ".join(sorted(methods))

    async def handle(request: web.Request) -> web.StreamResponse:
        handler = methods.get(request.method)
        if handler is None:
            if request.method == "OPTIONS":
                return web.Response(status=200, headers={"Allow": allow})
            raise ConsulError(405, f"method {request.method} not allowed", {"Allow": allow})
        return await handler(request)

    return handle


def _error(exc: ConsulError) -> web.Response:
    return web.Response(
        status=exc.status,
        text=exc.text,
        headers=exc.headers,
        content_type="text/plain",
        charset="utf-8",
    )


@web.middleware
async def consul_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    core = request.app[CORE_KEY]
    faults = core.faults
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
    try:
        return await handler(request)
    except ConsulError as exc:
        return _error(exc)
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(ConsulError(500, f"Unexpected error: {exc}"))


async def create_app(config: Config | None = None) -> web.Application:
    """Build one emulated agent; its check runner starts and stops with the application."""
    core = Core(config or Config())
    app = web.Application(middlewares=[consul_middleware], client_max_size=16 * 1024 * 1024)
    app[CORE_KEY] = core
    runner = core.checks
    for path, methods in ROUTES:
        app.router.add_route("*", path, _dispatch(methods))

    async def on_startup(_: web.Application) -> None:
        await runner.start()

    async def on_cleanup(_: web.Application) -> None:
        await runner.close()
        for session in core.state.sessions.values():
            if session.timer is not None:
                session.timer.cancel()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
