"""Comparing job versions: what counts as a spec change, and what forces a replacement."""

from __future__ import annotations

from typing import Any

# Fields that Job.SpecChanged ignores: a re-registration differing only in these is a no-op.
STATUS_FIELDS = (
    "Status",
    "StatusDescription",
    "Stable",
    "Version",
    "CreateIndex",
    "ModifyIndex",
    "JobModifyIndex",
    "SubmitTime",
)


def spec_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Nomad's ``Job.SpecChanged``: any difference outside status, version and indexes."""
    if old is None:
        return True
    return any(old.get(k) != new.get(k) for k in new if k not in STATUS_FIELDS)


def group_spec(job: dict[str, Any], name: str) -> dict[str, Any] | None:
    for group in job.get("TaskGroups") or []:
        if group["Name"] == name:
            return group
    return None


def _combined_meta(job: dict[str, Any], group: dict[str, Any], task: dict[str, Any]) -> dict:
    return {**(job.get("Meta") or {}), **(group.get("Meta") or {}), **(task.get("Meta") or {})}


def _connect(services: list[dict[str, Any]] | None) -> list[Any]:
    return [(s.get("Name"), s.get("Connect")) for s in services or [] if s.get("Connect")]


_TASK_DESTRUCTIVE = (
    "Driver",
    "User",
    "Config",
    "Env",
    "Artifacts",
    "Vault",
    "Templates",
    "VolumeMounts",
    "Lifecycle",
    "Identities",
)
_RESOURCE_DESTRUCTIVE = ("CPU", "Cores", "MemoryMB", "MemoryMaxMB", "Devices", "Networks")


def group_destructively_changed(
    old_job: dict[str, Any], new_job: dict[str, Any], name: str
) -> bool:
    """Whether an allocation of ``old_job`` must be replaced (not updated in place) for ``new_job``.

    Nomad's ``tasksUpdated``: the number of tasks, the ephemeral disk, group networks,
    affinities, spreads, the group's Consul block, Connect services or volumes, and per task
    the driver, user, config, env, artifacts, Vault, templates, volume mounts, lifecycle,
    identities, the combined job/group/task meta, resources (CPU, cores, memory, devices,
    networks) and turning logging on or off. Counts, update/migrate/reschedule/restart
    policies, services (without Connect), kill timeouts, shutdown delays and log sizes update
    in place. A change of datacenters, node pool or constraints replaces the allocation here
    (Nomad first checks whether the allocation's node still fits, and keeps it in place if so).
    """
    old, new = group_spec(old_job, name), group_spec(new_job, name)
    if old is None or new is None:
        return True
    for key in ("Datacenters", "Constraints", "NodePool", "Affinities", "Spreads"):
        if old_job.get(key) != new_job.get(key):
            return True
    for key in ("EphemeralDisk", "Networks", "Affinities", "Spreads", "Consul", "Volumes"):
        if old.get(key) != new.get(key):
            return True
    if old.get("Constraints") != new.get("Constraints"):
        return True
    if _connect(old.get("Services")) != _connect(new.get("Services")):
        return True
    old_tasks = {t["Name"]: t for t in old.get("Tasks") or []}
    new_tasks = {t["Name"]: t for t in new.get("Tasks") or []}
    if old_tasks.keys() != new_tasks.keys():
        return True
    for tname, at in old_tasks.items():
        bt = new_tasks[tname]
        if any(at.get(k) != bt.get(k) for k in _TASK_DESTRUCTIVE):
            return True
        if at.get("Constraints") != bt.get("Constraints") or at.get("Affinities") != bt.get(
            "Affinities"
        ):
            return True
        if _combined_meta(old_job, old, at) != _combined_meta(new_job, new, bt):
            return True
        ar, br = at.get("Resources") or {}, bt.get("Resources") or {}
        if any(ar.get(k) != br.get(k) for k in _RESOURCE_DESTRUCTIVE):
            return True
        if _connect(at.get("Services")) != _connect(bt.get("Services")):
            return True
        if (at.get("LogConfig") or {}).get("Disabled") != (bt.get("LogConfig") or {}).get(
            "Disabled"
        ):
            return True
    return False
