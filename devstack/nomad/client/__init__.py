"""The simulated Nomad client nodes: allocation and task runners, drivers, Consul registration.

A :class:`NodeClient` runs the allocations the server places on its node and reports their
progress back through :class:`ServerLink`; it never imports the server.
"""

from __future__ import annotations

from .runner import NodeClient, ServerLink

__all__ = ["NodeClient", "ServerLink"]
