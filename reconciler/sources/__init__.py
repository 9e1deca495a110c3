"""Watches of Consul KV, Consul service health and Nomad, plus a periodic resync."""

from reconciler.sources.base import Emit, Source

__all__ = ["Emit", "Source"]
