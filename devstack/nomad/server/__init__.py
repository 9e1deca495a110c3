"""The Nomad server: state, job writes, evaluations, the scheduler's plans, nodes, services.

:class:`NomadServer` is the whole server, built up one concern per module (see
:mod:`.base`). It knows client nodes only through :class:`~.base.ClientHandle`, so the
simulated clients (:mod:`devstack.nomad.client`) and the server do not import each other;
:mod:`devstack.nomad.cluster` wires them together.
"""

from __future__ import annotations

from .acl import ACLStore
from .base import ClientHandle


class NomadServer(ACLStore):
    """One region's Nomad server (the client nodes are attached by the cluster)."""


__all__ = ["ClientHandle", "NomadServer"]
