"""The handle tests and tools hold on an embedded Consul: its address, its faults, ``stop()``.

The agent runs on its own event loop in a daemon thread (``devstack._server.ServerThread``), so
sync and async tests alike talk to it over a real loopback socket; every fault control hops onto
that loop, because the state is only ever touched from there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from devstack._server import ServerThread
from devstack.consul import controls
from devstack.consul.api.common import CORE_KEY
from devstack.consul.app import create_app
from devstack.consul.core import Config, Core


class ConsulServer:
    """An embedded Consul agent: ``start()``, ``.address``/``.url``, fault controls, ``stop()``."""

    def __init__(
        self,
        *,
        node_name: str = "",
        datacenter: str = "dc1",
        acl_master_token: str | None = None,
        acl_default_policy: str | None = None,
        acl_enabled: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.config = Config(
            node_name=node_name,
            datacenter=datacenter,
            acl_master_token=acl_master_token,
            acl_default_policy=acl_default_policy,
            acl_enabled=acl_enabled,
        )
        self._thread = ServerThread(lambda: create_app(self.config), host=host, port=port)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ConsulServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> ConsulServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: what ``CONSUL_HTTP_ADDR`` would hold."""
        return self._thread.address

    @property
    def url(self) -> str:
        return self._thread.url

    @property
    def host(self) -> str:
        return self._thread.host

    @property
    def port(self) -> int:
        return self._thread.port

    @property
    def core(self) -> Core:
        """The agent's state; only touch it through :meth:`call`."""
        assert self._thread.app is not None
        return self._thread.app[CORE_KEY]

    @property
    def node_name(self) -> str:
        return self.core.node_name

    def call(self, fn: Any) -> Any:
        """Run ``fn(core)`` on the server loop and return its result."""
        return self._thread.call(lambda: fn(self.core))

    # -- faults --------------------------------------------------------------------------------

    def set_faults(
        self,
        *,
        latency_ms: float | None = None,
        error_rate: float | None = None,
        drop_rate: float | None = None,
        no_leader: bool | None = None,
        path_prefix: str | None = None,
    ) -> None:
        """Change the request faults; arguments left as ``None`` keep their current value."""
        changes = {
            k: v
            for k, v in {
                "latency_ms": latency_ms,
                "error_rate": error_rate,
                "drop_rate": drop_rate,
                "no_leader": no_leader,
                "path_prefix": path_prefix,
            }.items()
            if v is not None
        }
        self.call(lambda core: core.faults.update(**changes))

    def clear_faults(self) -> None:
        self.call(lambda core: core.faults.clear())

    @contextlib.contextmanager
    def no_leader(self) -> Iterator[None]:
        """A leaderless period: consistent reads and writes fail with ``No cluster leader``."""
        self.set_faults(no_leader=True)
        try:
            yield
        finally:
            self.set_faults(no_leader=False)

    def reset_index(self, to: int | None = None) -> int:
        """Move the raft index backwards as a snapshot restore does; returns the new index."""
        return int(self.call(lambda core: controls.reset_index(core, to)))

    def expire_session(self, session_id: str) -> bool:
        return bool(self.call(lambda core: controls.expire_session(core, session_id)))

    def force_check(
        self, check_id: str, status: str = "critical", *, output: str = "", node: str | None = None
    ) -> bool:
        return bool(
            self.call(lambda core: controls.force_check(core, check_id, status, output, node))
        )

    def stats(self) -> dict[str, Any]:
        return dict(self.call(controls.stats))


def start_consul(**kwargs: Any) -> ConsulServer:
    """Start an embedded Consul on a free loopback port and return its handle."""
    return ConsulServer(**kwargs).start()
