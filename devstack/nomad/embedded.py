"""The embedded Nomad as a Python object: start it on a background thread, drive it, stop it.

Tests, the demo and the benchmarks use :class:`EmbeddedNomad`; it wraps the shared
:class:`devstack._server.ServerThread` and adds the administration a real cluster does not
offer over HTTP (add a node, mark one down), run safely on the server's own loop.
"""

from __future__ import annotations

from typing import Any

from devstack._server import ServerThread

from .cluster import NomadCluster, app_factory
from .config import NomadConfig
from .http import SERVER_KEY


class EmbeddedNomad:
    """A running embedded Nomad server with its simulated client nodes, on 127.0.0.1."""

    def __init__(self, config: NomadConfig | None = None, port: int = 0, **options: Any) -> None:
        self.config = config or NomadConfig(**options)
        self._thread = ServerThread(app_factory(self.config), host="127.0.0.1", port=port)

    @property
    def address(self) -> str:
        """``host:port``."""
        return self._thread.address

    @property
    def url(self) -> str:
        """``http://host:port``, the form of ``NOMAD_ADDR``."""
        return self._thread.url

    @property
    def cluster(self) -> NomadCluster:
        """The server state; only touch it through :meth:`call` (it lives on another loop)."""
        assert self._thread.app is not None
        cluster = self._thread.app[SERVER_KEY]
        assert isinstance(cluster, NomadCluster)
        return cluster

    def start(self) -> EmbeddedNomad:
        self._thread.start()
        self.call(lambda: self.cluster.advertise(self.address))
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> EmbeddedNomad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Any, timeout: float = 10.0) -> Any:
        """Run ``fn()`` on the server's loop and return its result."""
        return self._thread.call(fn, timeout)

    def add_node(self, **options: Any) -> str:
        """Register a client node; options as :meth:`NomadCluster.add_node`. Returns its ID."""
        return str(self.call(lambda: self.cluster.add_node(**options)))

    def set_node_status(self, node_id: str, status: str) -> list[str]:
        """``down`` makes the node's allocations lost and reschedules them; ``ready`` revives it."""
        return list(self.call(lambda: self.cluster.set_node_status(node_id, status)))

    def node_ids(self) -> list[str]:
        return list(self.call(lambda: list(self.cluster.state.nodes)))
