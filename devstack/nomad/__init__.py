"""Embedded Nomad for development, demos and tests: Nomad's HTTP API, scheduler and clients.

Start one with :class:`EmbeddedNomad` (tests: the fixtures in :mod:`devstack.nomad.testing`),
or ``devstack nomad`` / ``python -m devstack.nomad`` in the foreground.
"""

from .cluster import NomadCluster
from .config import NomadConfig
from .embedded import EmbeddedNomad

__all__ = ["EmbeddedNomad", "NomadCluster", "NomadConfig"]
