"""The Nomad HTTP application: the route table, authentication and error mapping.

Handlers live by resource in the sibling modules; this module only wires them, as Nomad's
``command/agent/http.go`` registers its mux. An unknown route is a 404 with an empty body.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from devstack.nomad.errors import NomadError
from devstack.nomad.server import NomadServer

from .agent import AgentAPI
from .allocs import AllocsAPI
from .common import Handler, request_token, text_response
from .deployments import DeploymentsAPI
from .jobs import JobsAPI
from .nodes import NodesAPI
from .services import ServicesAPI

SERVER_KEY: web.AppKey[NomadServer] = web.AppKey("nomad_server", NomadServer)
# Paths readable without a token even when ACLs are enabled.
PUBLIC = {"/v1/status/leader", "/v1/status/peers", "/v1/agent/health", "/v1/regions"}


def build_app(server: NomadServer) -> web.Application:
    jobs, allocs, nodes = JobsAPI(server), AllocsAPI(server), NodesAPI(server)
    services, agent = ServicesAPI(server), AgentAPI(server)
    deployments = DeploymentsAPI(server)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = server.config.acl_master_token
        if token is not None and request.path not in PUBLIC and request_token(request) != token:
            return text_response(403, "Permission denied")
        region = request.query.get("region")
        if region and region != server.config.region:
            return text_response(500, "No path to region")
        try:
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
    r.add_route("*", "/v1/status/leader", agent.status_leader)
    r.add_route("*", "/v1/status/peers", agent.status_peers)
    r.add_route("*", "/v1/regions", agent.regions)
    r.add_route("*", "/v1/acl/token/self", agent.acl_token_self)
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
