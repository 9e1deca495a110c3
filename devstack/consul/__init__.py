"""Embedded Consul: an in-memory agent speaking Consul's HTTP API, for development and tests.

No Consul binary is available where the project is developed and tested, so controllers run
against this emulator; contract tests keep it honest against a real agent. The names below are
loaded on first use, so ``python -m devstack.consul`` can report a missing ``[devstack]`` extra
instead of failing while the package itself is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devstack.consul.core import Config
    from devstack.consul.server import ConsulServer, start_consul

__all__ = ["Config", "ConsulServer", "start_consul"]


def __getattr__(name: str) -> Any:
    if name == "Config":
        from devstack.consul.core import Config

        return Config
    if name in ("ConsulServer", "start_consul"):
        from devstack.consul import server

        return getattr(server, name)
    raise AttributeError(f"module 'devstack.consul' has no attribute {name!r}")
