"""How many more users Nomad can place right now, counted the way its scheduler counts.

Nomad does not publish free capacity; its scheduler computes it per node (``AllocsFit``) as the
node's resources minus its reserved resources minus every allocation on it that the client has
not finished with (an allocation being stopped still holds its share). We do the same over the
cached node and allocation lists, and divide by what one user's task group asks for (from the
job template), node by node, because a group is placed whole on one node. No plan call per
user: one pass over the caches, whatever the number of users.

Only nodes the template's job could land on count: ready, eligible, not draining, in one of
its datacenters and node pool, with every driver its tasks use detected and healthy. Other
constraints (node meta, attributes) are left to Nomad: a user that passes this count but not
the scheduler gets a blocked evaluation, which the jobs controller reports.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from controllers.templates import JobTemplate, UserResources


@dataclass(frozen=True)
class Placement:
    """Where the template's job may run (from the rendered job)."""

    datacenters: tuple[str, ...]
    node_pool: str
    drivers: frozenset[str]

    @classmethod
    def of(cls, template: JobTemplate, datacenters: Iterable[str]) -> Placement:
        job = template.job
        dcs = job.get("Datacenters")
        listed = tuple(datacenters) if not isinstance(dcs, list) else tuple(str(d) for d in dcs)
        # A template that names its datacenters with {{datacenters}} gets the setting.
        if any("{{" in d for d in listed) or not listed:
            listed = tuple(datacenters) or ("*",)
        drivers = frozenset(
            str(task.get("Driver"))
            for group in job.get("TaskGroups") or []
            for task in group.get("Tasks") or []
        )
        return cls(listed, str(job.get("NodePool") or "default"), drivers)


@dataclass(frozen=True)
class NodeInfo:
    """What placement needs of a node: state, where it is, drivers, allocatable resources."""

    id: str
    status: str
    eligible: bool
    draining: bool
    datacenter: str
    node_pool: str
    drivers: frozenset[str]  # detected and healthy
    cpu: int
    memory_mb: int
    disk_mb: int


@dataclass(frozen=True)
class AllocInfo:
    """What an allocation holds on its node."""

    id: str
    node_id: str
    job_id: str
    terminal: bool
    cpu: int
    memory_mb: int
    disk_mb: int


@dataclass(frozen=True)
class NodeFree:
    node_id: str
    cpu: int
    memory_mb: int
    disk_mb: int


def node_usable(node: NodeInfo, placement: Placement) -> bool:
    """Could the scheduler place the template's group on this node at all?"""
    if node.status != "ready" or not node.eligible or node.draining:
        return False
    if not any(fnmatch.fnmatchcase(node.datacenter, p) for p in placement.datacenters):
        return False
    return node.node_pool == placement.node_pool and placement.drivers <= node.drivers


def free_resources(
    nodes: Iterable[NodeInfo], allocations: Iterable[AllocInfo], placement: Placement
) -> list[NodeFree]:
    """Free CPU/memory/disk of every usable node: allocatable minus live allocations."""
    used: dict[str, list[int]] = {}
    for alloc in allocations:
        if alloc.terminal:
            continue
        totals = used.setdefault(alloc.node_id, [0, 0, 0])
        totals[0] += alloc.cpu
        totals[1] += alloc.memory_mb
        totals[2] += alloc.disk_mb
    out: list[NodeFree] = []
    for node in nodes:
        if not node_usable(node, placement):
            continue
        cpu, memory, disk = used.get(node.id, [0, 0, 0])
        out.append(NodeFree(node.id, node.cpu - cpu, node.memory_mb - memory, node.disk_mb - disk))
    return out


def users_that_fit(free: Iterable[NodeFree], per_user: UserResources) -> int:
    """How many more users' groups fit, each whole on one node."""
    total = 0
    for node in free:
        dims = (
            (node.cpu, per_user.cpu),
            (node.memory_mb, per_user.memory_mb),
            (node.disk_mb, per_user.disk_mb),
        )
        if any(have < 0 for have, _ in dims):
            continue
        total += min(have // need for have, need in dims if need > 0)
    return total
