"""Watches of Consul KV, Consul service health and Nomad, plus a periodic resync."""

from reconciler.sources.base import Change, Emit, Source
from reconciler.sources.health import ServiceHealthSource
from reconciler.sources.kv import KVSource
from reconciler.sources.nomad import NomadSource
from reconciler.sources.periodic import PeriodicSource

__all__ = [
    "Change",
    "Emit",
    "KVSource",
    "NomadSource",
    "PeriodicSource",
    "ServiceHealthSource",
    "Source",
]
