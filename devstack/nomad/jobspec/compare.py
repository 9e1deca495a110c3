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


def group_destructively_changed(
    old_job: dict[str, Any], new_job: dict[str, Any], name: str
) -> bool:
    """Whether an allocation of ``old_job`` must be replaced (not updated in place) for ``new_job``.

    Nomad updates in place when only counts, update strategy or meta-free fields moved; any
    change to what runs (tasks, networks, disk, constraints) replaces the allocation.
    """
    old, new = group_spec(old_job, name), group_spec(new_job, name)
    if old is None or new is None:
        return True
    ignored = ("Count", "Update", "Migrate", "Scaling", "ReschedulePolicy")
    if any(old[k] != new[k] for k in old if k not in ignored):
        return True
    for key in ("Datacenters", "Constraints", "NodePool", "Meta"):
        if old_job.get(key) != new_job.get(key):
            return True
    return False
