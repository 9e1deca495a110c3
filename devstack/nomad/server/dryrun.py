"""``POST /v1/job/<id>/plan``: the scheduler's answer for a job, without committing anything.

The plan runs the same reconciler (:meth:`Reconciler._reconcile`) and the same placement
(:func:`place_group`) as a real evaluation, on the current state, and reports what would
change per group (``Annotations.DesiredTGUpdates``), what would not fit (``FailedTGAllocs``) and,
when asked, a structural ``Diff`` of the submitted job against the stored one.
"""

from __future__ import annotations

import random
from typing import Any

from devstack.nomad import jobspec
from devstack.nomad.scheduler import place_group
from devstack.nomad.state import alloc_terminal
from devstack.nomad.util import now_ns

from .lifecycle import JobLifecycle

_DESTRUCTIVE = "alloc is being updated due to job update"
_MIGRATE = "alloc is being migrated"
# structs.DesiredUpdates counts -> the keys of TaskGroupDiff.Updates.
_UPDATE_KEYS = {
    "Ignore": "ignore",
    "Place": "create",
    "Stop": "destroy",
    "Migrate": "migrate",
    "InPlaceUpdate": "in-place update",
    "DestructiveUpdate": "create/destroy update",
    "Canary": "canary",
}
_SKIP = {*jobspec.STATUS_FIELDS, "TaskGroups", "Tasks", "Name"}


def _go(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fields_and_objects(
    old: dict[str, Any] | None, new: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Nomad's flattened field diffs (changed only) and nested object diffs."""
    old, new = old or {}, new or {}
    fields: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    for key in sorted(set(old) | set(new)):
        if key in _SKIP or old.get(key) == new.get(key):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            if all(
                isinstance(v, (str, int, float, bool)) for v in {**(a or {}), **(b or {})}.values()
            ):
                # Maps of scalars flatten to Name[key] fields (Meta, Env).
                for sub in sorted(set(a or {}) | set(b or {})):
                    fields += _field(f"{key}[{sub}]", (a or {}).get(sub), (b or {}).get(sub))
            else:
                objects.append(_object(key, a, b))
        elif isinstance(a, list) or isinstance(b, list):
            objects.append(_list_object(key, a or [], b or []))
        else:
            fields += _field(key, a, b)
    return fields, objects


def _field(name: str, a: Any, b: Any) -> list[dict[str, Any]]:
    if a == b:
        return []
    kind = "Added" if a is None else "Deleted" if b is None else "Edited"
    return [{"Annotations": None, "Name": name, "New": _go(b), "Old": _go(a), "Type": kind}]


def _object(name: str, a: Any, b: Any) -> dict[str, Any]:
    kind = "Added" if a is None else "Deleted" if b is None else "Edited"
    if isinstance(a, dict) or isinstance(b, dict):
        fields, objects = _fields_and_objects(a if isinstance(a, dict) else None, b)
    else:
        fields, objects = [], []
    return {"Fields": fields or None, "Name": name, "Objects": objects or None, "Type": kind}


def _list_object(name: str, a: list[Any], b: list[Any]) -> dict[str, Any]:
    """A list: scalars as a set of added/deleted fields, objects compared by position."""
    fields: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    if all(not isinstance(v, (dict, list)) for v in a + b):
        for v in sorted({_go(x) for x in a} - {_go(x) for x in b}):
            fields += _field(name, v, None)
        for v in sorted({_go(x) for x in b} - {_go(x) for x in a}):
            fields += _field(name, None, v)
    else:
        for i in range(max(len(a), len(b))):
            old = a[i] if i < len(a) else None
            new = b[i] if i < len(b) else None
            if old != new:
                objects.append(_object(name, old, new))
    kind = "Added" if not a else "Deleted" if not b else "Edited"
    return {"Fields": fields or None, "Name": name, "Objects": objects or None, "Type": kind}


def _named(items: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    return {i["Name"]: i for i in items or []}


def job_diff(
    old: dict[str, Any] | None, new: dict[str, Any], updates: dict[str, dict[str, int]]
) -> dict[str, Any]:
    """``structs.JobDiff`` of ``new`` against ``old`` (non-contextual: changes only)."""
    fields, objects = _fields_and_objects(old, new)
    groups = []
    old_groups, new_groups = _named((old or {}).get("TaskGroups")), _named(new["TaskGroups"])
    for name in sorted(set(old_groups) | set(new_groups)):
        og, ng = old_groups.get(name), new_groups.get(name)
        gf, go = _fields_and_objects(og, ng)
        tasks = []
        old_tasks, new_tasks = _named((og or {}).get("Tasks")), _named((ng or {}).get("Tasks"))
        for tname in sorted(set(old_tasks) | set(new_tasks)):
            ot, nt = old_tasks.get(tname), new_tasks.get(tname)
            tf, to = _fields_and_objects(ot, nt)
            kind = (
                "Added"
                if ot is None
                else "Deleted"
                if nt is None
                else ("Edited" if tf or to else "None")
            )
            tasks.append(
                {
                    "Annotations": None,
                    "Fields": tf or None,
                    "Name": tname,
                    "Objects": to or None,
                    "Type": kind,
                }
            )
        kind = (
            "Added"
            if og is None
            else "Deleted"
            if ng is None
            else ("Edited" if gf or go or any(t["Type"] != "None" for t in tasks) else "None")
        )
        counts = updates.get(name, {})
        changes = {_UPDATE_KEYS[k]: v for k, v in counts.items() if v and k in _UPDATE_KEYS}
        groups.append(
            {
                "Fields": gf or None,
                "Name": name,
                "Objects": go or None,
                "Tasks": tasks or None,
                "Type": kind,
                "Updates": changes or None,
            }
        )
    if old is None:
        kind = "Added"
    else:
        kind = "Edited" if fields or objects or any(g["Type"] != "None" for g in groups) else "None"
    return {
        "Fields": fields or None,
        "ID": new["ID"],
        "Objects": objects or None,
        "TaskGroups": groups or None,
        "Type": kind,
    }


class JobPlans(JobLifecycle):
    def plan_job(self, body: Any, path_id: str, namespace: str) -> dict[str, Any]:
        job, _opts = self.decode_job(body, path_id, namespace, mismatch="Job ID does not match")
        want_diff = isinstance(body, dict) and bool(body.get("Diff"))
        key = (job["Namespace"], job["ID"])
        existing = self.state.jobs.get(key)
        if existing is not None and not jobspec.spec_changed(existing, job):
            planned = existing
        else:
            planned = {
                **job,
                "Version": existing["Version"] + 1 if existing else 0,
                # A modify index no allocation can carry: every one is compared with the spec.
                "JobModifyIndex": -1,
                "CreateIndex": existing["CreateIndex"] if existing else -1,
            }
        updates: dict[str, dict[str, int]] = {}
        failed: dict[str, Any] = {}
        runs = planned["Periodic"] is None and (
            planned["ParameterizedJob"] is None or planned["Dispatched"]
        )
        if runs:
            updates, failed = self._dry_run(planned, key)
        return {
            "Annotations": {"DesiredTGUpdates": updates or None, "PreemptedAllocs": None},
            "CreatedEvals": None,
            "Diff": job_diff(existing, job, updates) if want_diff else None,
            "FailedTGAllocs": failed or None,
            "JobModifyIndex": existing["JobModifyIndex"] if existing else 0,
            "NextPeriodicLaunch": "0001-01-01T00:00:00Z",
            "Warnings": "",
            "Index": self.state.index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }

    def _dry_run(
        self, job: dict[str, Any], key: tuple[str, str]
    ) -> tuple[dict[str, dict[str, int]], dict[str, Any]]:
        stops, inplace, wanted, _followups, held = self._reconcile(job, key, now_ns())
        rng = random.Random()
        updates: dict[str, dict[str, int]] = {}
        for g in job["TaskGroups"] or []:
            updates[g["Name"]] = {
                "Ignore": 0,
                "Place": 0,
                "Migrate": 0,
                "Stop": 0,
                "InPlaceUpdate": 0,
                "DestructiveUpdate": 0,
                "Canary": 0,
                "Preemptions": 0,
            }
        # The reconciler also refreshes allocations onto an equal job object; only a new
        # version is an in-place update.
        inplace_ids = {
            a["ID"]
            for a in inplace
            if a["ID"] not in stops and a["Job"]["JobModifyIndex"] != job["JobModifyIndex"]
        }
        for a in self.state.job_allocs(key):
            counts = updates.get(a["TaskGroup"])
            if a["ID"] in stops:
                if counts is None:
                    continue
                reason = stops[a["ID"]]
                field = (
                    "DestructiveUpdate"
                    if reason == _DESTRUCTIVE
                    else "Migrate"
                    if reason == _MIGRATE
                    else "Stop"
                )
                counts[field] += 1
            elif counts is not None and not alloc_terminal(a):
                counts["InPlaceUpdate" if a["ID"] in inplace_ids else "Ignore"] += 1
        failed: dict[str, Any] = {}
        view = self._view(set(stops), key)
        by_group: dict[str, int] = {}
        for gname, _name, _prev, _delay in wanted:
            by_group[gname] = by_group.get(gname, 0) + 1
        if job["Type"] in ("system", "sysbatch"):
            placed: list[dict[str, Any]] = []
            queued: dict[str, int] = {}
            fake_eval = {"ID": ""}
            self._place_system(job, view, held, fake_eval, 0, placed, failed, queued)
            for a in placed:
                updates[a["TaskGroup"]]["Place"] += 1
            return updates, failed
        for gname, n in by_group.items():
            group = jobspec.group_spec(job, gname)
            assert group is not None
            replacing = updates[gname]["DestructiveUpdate"] + updates[gname]["Migrate"]
            updates[gname]["Place"] += max(n - replacing, 0)
            result = place_group(view, job, group, n, rng)
            if result.failed is not None:
                failed[gname] = result.failed
        return updates, failed
