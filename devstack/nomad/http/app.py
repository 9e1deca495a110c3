"""The Nomad HTTP application: the route table, authentication and error mapping.

Handlers live by resource in the sibling modules; this module only wires them, as Nomad's
``command/agent/http.go`` registers its mux. An unknown route is a 404 with an empty body.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from devstack.nomad.errors import NomadError
from devstack.nomad.server import NomadServer

from .acl import ACLAPI
from .agent import AgentAPI
from .allocs import AllocsAPI
from .authz import ADMIN_DENIED, requirement
from .common import CALLER, Handler, request_token, text_response
from .deployments import DeploymentsAPI
from .jobs import JobsAPI
from .nodes import NodesAPI
from .services import ServicesAPI

SERVER_KEY: web.AppKey[NomadServer] = web.AppKey("nomad_server", NomadServer)


def _authorize(server: NomadServer, request: web.Request) -> None:
    """Resolve the caller's token and check the endpoint's capability (403 otherwise)."""
    check = requirement(request)
    if check is None and not request.path.startswith("/v1/acl/"):
        return
    token, acl = server.resolve_token(request_token(request))
    CALLER.set((token, acl))
    if check is not None and not check(acl, request.query.get("namespace") or "default"):
        if request.path.startswith("/v1/devstack/"):
            raise NomadError(403, ADMIN_DENIED)
        raise NomadError(403, "Permission denied")


def build_app(server: NomadServer) -> web.Application:
    jobs, allocs, nodes = JobsAPI(server), AllocsAPI(server), NodesAPI(server)
    services, agent = ServicesAPI(server), AgentAPI(server)
    deployments, acl = DeploymentsAPI(server), ACLAPI(server)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        region = request.query.get("region")
        if region and region != server.config.region:
            return text_response(500, "No path to region")
        try:
            if server.acl_enabled:
                _authorize(server, request)
            return await handler(request)
        except NomadError as exc:
            if exc.status == 404 and not exc.message:
                return web.Response(status=404)
            return text_response(exc.status, exc.message)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            return text_response(500, str(exc) or exc.__class__.__name__)

    app = web.Application(middlewares=[errors], client_max_size=8 * 1024 * 1024)
    app[SERVER_KEY] = server
    r = app.router
    r.add_route("*", "/v1/jobs", jobs.jobs)
    r.add_route("*", "/v1/jobs/parse", jobs.parse)
    r.add_route("*", "/v1/job/{tail:.+}", jobs.job)
    r.add_route("*", "/v1/validate/job", jobs.validate)
    r.add_route("*", "/v1/allocations", allocs.allocations)
    r.add_route("*", "/v1/allocation/{tail:.+}", allocs.allocation)
    r.add_route("*", "/v1/evaluations", allocs.evaluations)
    r.add_route("*", "/v1/evaluation/{tail:.+}", allocs.evaluation)
    r.add_route("*", "/v1/deployments", deployments.deployments)
    r.add_route("*", "/v1/deployment/{tail:.+}", deployments.deployment)
    r.add_route("*", "/v1/nodes", nodes.nodes)
    r.add_route("*", "/v1/node/{tail:.+}", nodes.node)
    r.add_route("*", "/v1/services", services.services)
    r.add_route("*", "/v1/service/{tail:.+}", services.service)
    r.add_route("*", "/v1/event/stream", services.event_stream)
    r.add_route("*", "/v1/agent/self", agent.agent_self)
    r.add_route("*", "/v1/agent/members", agent.agent_members)
    r.add_route("*", "/v1/agent/health", agent.agent_health)
    r.add_route("*", "/v1/agent/servers", agent.agent_servers)
    r.add_route("*", "/v1/agent/join", agent.agent_join)
    r.add_route("*", "/v1/agent/force-leave", agent.agent_force_leave)
    r.add_route("*", "/v1/status/leader", agent.status_leader)
    r.add_route("*", "/v1/status/peers", agent.status_peers)
    r.add_route("*", "/v1/regions", agent.regions)
    r.add_route("*", "/v1/acl/bootstrap", acl.bootstrap)
    r.add_route("*", "/v1/acl/token/self", acl.token_self)
    r.add_route("*", "/v1/acl/tokens", acl.tokens)
    r.add_route("*", "/v1/acl/token", acl.create_token)
    r.add_route("*", "/v1/acl/token/{accessor}", acl.token)
    r.add_route("*", "/v1/acl/policies", acl.policies)
    r.add_route("*", "/v1/acl/policy/{name}", acl.policy)
    r.add_route("*", "/v1/devstack/nodes", agent.admin_nodes)
    r.add_route("*", "/v1/devstack/node/{id}/status", agent.admin_node_status)
    r.add_route("*", "/{tail:.*}", agent.not_found)

    async def on_startup(app: web.Application) -> None:
        await server.start()

    async def on_shutdown(app: web.Application) -> None:
        await server.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app
