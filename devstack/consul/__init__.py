"""Embedded Consul: an in-memory agent speaking Consul's HTTP API, for development and tests.

No Consul binary is available where the project is developed and tested, so controllers run
against this emulator; contract tests keep it honest against a real agent.
"""

from devstack.consul.core import Config
from devstack.consul.server import ConsulServer, start_consul

__all__ = ["Config", "ConsulServer", "start_consul"]
