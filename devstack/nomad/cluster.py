"""An embedded Nomad cluster: the server, its simulated client nodes and the Consul link.

The server (:mod:`.server`) and the clients (:mod:`.client`) do not know each other's classes;
this is the one place that wires them: each registered node gets a :class:`NodeClient` that
reports to the server, and the clients register services through one :class:`ConsulSync`
when a Consul address is configured.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .client import NodeClient
from .client.consul_sync import ConsulSync
from .config import NomadConfig
from .http import build_app
from .server import NomadServer


class NomadCluster(NomadServer):
    """One region's server plus its simulated client nodes."""

    def __init__(self, config: NomadConfig | None = None) -> None:
        super().__init__(config)
        self.consul: ConsulSync | None = None

    async def start(self) -> None:
        if self.config.consul_addr:
            self.consul = ConsulSync(self.config.consul_addr, self.config.consul_token)
            await self.consul.start()
        await super().start()

    def _attach_client(self, node_id: str) -> None:
        self.clients[node_id] = NodeClient(self, node_id)

    async def _stopped(self) -> None:
        if self.consul is not None:
            await self.consul.close()


def app_factory(config: NomadConfig) -> Callable[[], Awaitable[web.Application]]:
    """A factory for :mod:`devstack._server`: a fresh cluster and its app per call."""

    async def factory() -> web.Application:
        return build_app(NomadCluster(config))

    return factory
