"""An embedded Nomad cluster: the server, its simulated client nodes and the Consul link.

The server (:mod:`.server`) and the clients (:mod:`.client`) do not know each other's classes;
this is the one place that wires them: each registered node gets a :class:`NodeClient` that
reports to the server, and the clients register services through one :class:`ConsulSync`
when a Consul address is configured. With ``consul_auto_advertise`` (an agent's
``auto_advertise``), the cluster also registers itself: ``nomad`` (tags ``http``, ``rpc``,
``serf``) and ``nomad-client`` (``http``), with Nomad's agent checks; the RPC and Serf ports
are real TCP listeners so those checks pass.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .client import NodeClient
from .client.consul_sync import ConsulSync
from .config import NomadConfig
from .http import build_app
from .server import NomadServer

AGENT_OWNER = "agent"
HTTP_CHECK_INTERVAL = 10_000_000_000
HTTP_CHECK_TIMEOUT = 5_000_000_000
RPC_CHECK_TIMEOUT = 3_000_000_000


def _agent_id(role: str, name: str, tags: list[str], port: int) -> str:
    digest = hashlib.sha1(f"{role}{name}{tags}{port}".encode()).digest()
    return f"_nomad-{role}-" + base64.b32encode(digest).decode().lower().rstrip("=")


def _agent_check(sid: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256(f"{sid}{name}".encode()).hexdigest()
    return {"CheckID": f"_nomad-check-{digest}", "Name": name, **spec}


class _Accept(asyncio.Protocol):
    """The RPC and Serf ports accept and close: enough for Consul's TCP checks."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class NomadCluster(NomadServer):
    """One region's server plus its simulated client nodes."""

    def __init__(self, config: NomadConfig | None = None) -> None:
        super().__init__(config)
        self.consul: ConsulSync | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._listeners: list[asyncio.Server] = []
        for attr in ("rpc_port", "serf_port"):
            server = await loop.create_server(_Accept, host="127.0.0.1", port=0)
            self._listeners.append(server)
            setattr(self, attr, server.sockets[0].getsockname()[1])
        self.leader = f"127.0.0.1:{self.rpc_port}"
        if self.config.advertise_http:
            self.http_addr = self.config.advertise_http
        if self.config.consul_addr:
            self.consul = ConsulSync(self.config.consul_addr, self.config.consul_token)
            await self.consul.start()
        await super().start()
        self._register_agent()

    def advertise(self, http_addr: str) -> None:
        """The HTTP address is known (after binding): use it and register the agent."""
        self.http_addr = http_addr
        self._register_agent()

    def _register_agent(self) -> None:
        if self.consul is None or not self.config.consul_auto_advertise:
            return
        host, _, port = self.http_addr.rpartition(":")
        http_port = int(port) if port.isdigit() else 4646
        regs = []
        for role, name, tags, svc_port, check in (
            ("server", "nomad", ["http"], http_port, "Nomad Server HTTP Check"),
            ("server", "nomad", ["rpc"], self.rpc_port, "Nomad Server RPC Check"),
            ("server", "nomad", ["serf"], self.serf_port, "Nomad Server Serf Check"),
            ("client", "nomad-client", ["http"], http_port, "Nomad Client HTTP Check"),
        ):
            sid = _agent_id(role, name, tags, svc_port)
            if tags == ["http"]:
                spec = {
                    "HTTP": f"http://{host}:{svc_port}/v1/agent/health?type={role}",
                    "Method": "GET",
                    "Interval": "10s",
                    "Timeout": "5s",
                }
            else:
                spec = {"TCP": f"{host}:{svc_port}", "Interval": "10s", "Timeout": "3s"}
            regs.append(
                {
                    "ID": sid,
                    "Name": name,
                    "Tags": tags,
                    "Address": host,
                    "Port": svc_port,
                    "Meta": {"external-source": "nomad"},
                    "Checks": [_agent_check(sid, check, spec)],
                }
            )
        self.consul.set(AGENT_OWNER, regs)

    def _attach_client(self, node_id: str) -> None:
        self.clients[node_id] = NodeClient(self, node_id)

    async def _stopped(self) -> None:
        if self.consul is not None:
            await self.consul.close()
        for server in getattr(self, "_listeners", []):
            server.close()


def app_factory(config: NomadConfig) -> Callable[[], Awaitable[web.Application]]:
    """A factory for :mod:`devstack._server`: a fresh cluster and its app per call."""

    async def factory() -> web.Application:
        return build_app(NomadCluster(config))

    return factory
