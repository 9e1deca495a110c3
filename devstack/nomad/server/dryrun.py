"""``POST /v1/job/<id>/plan``: the scheduler's answer for a job, without committing anything.

The plan runs the same reconciler (:meth:`Reconciler._reconcile`) and the same placement
(:func:`place_group`) as a real evaluation, on the current state, and reports what would
change per group (``Annotations.DesiredTGUpdates``), what would not fit (``FailedTGAllocs``) and,
when asked, Nomad's annotated ``Diff`` of the submitted job against the stored one
(:mod:`devstack.nomad.server.jobdiff`).
"""

from __future__ import annotations

import random
from typing import Any

from devstack.nomad import jobspec
from devstack.nomad.scheduler import place_group
from devstack.nomad.state import alloc_terminal
from devstack.nomad.util import now_ns

from .jobdiff import annotate, job_diff
from .lifecycle import JobLifecycle

# structs.DesiredUpdates, in its JSON order.
_COUNTS = (
    "Ignore",
    "Place",
    "Migrate",
    "Stop",
    "InPlaceUpdate",
    "DestructiveUpdate",
    "Canary",
    "Preemptions",
)
_DESTRUCTIVE = "alloc is being updated due to job update"
_MIGRATE = "alloc is being migrated"


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
            "Diff": annotate(job_diff(existing, job), updates) if want_diff else None,
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
            updates[g["Name"]] = dict.fromkeys(_COUNTS, 0)
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
                    # A group the new version no longer has: all of it stops.
                    counts = updates[a["TaskGroup"]] = dict.fromkeys(_COUNTS, 0)
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
        for gname, _name, _prev, _delay, canary in wanted:
            if canary:
                updates[gname]["Canary"] += 1
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
            replacing = (
                updates[gname]["DestructiveUpdate"]
                + updates[gname]["Migrate"]
                + updates[gname]["Canary"]
            )
            updates[gname]["Place"] += max(n - replacing, 0)
            result = place_group(view, job, group, n, rng)
            if result.failed is not None:
                failed[gname] = result.failed
        return updates, failed
