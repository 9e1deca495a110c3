"""Deployments of service jobs with an ``update`` block, and the watcher that drives them.

A plan that changes a job version's allocations creates that version's deployment (and
cancels an older running one); every allocation it places belongs to it. Clients report each
allocation's health (:meth:`DeploymentWatcher.update_alloc_health`, from checks or task
states held for ``min_healthy_time``); the watcher counts them per group, lets the reconciler
replace the next ``max_parallel`` allocations, marks the job version ``Stable`` when every group
is healthy, and fails the deployment on an unhealthy allocation or a missed progress deadline
(rolling back to the last stable version under ``auto_revert``), with Nomad's descriptions.
Canary groups record their ``PlacedCanaries`` and wait for promotion (by the API, or by the
watcher under ``auto_promote`` once every canary is healthy) before the rollout goes on.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from devstack.nomad import jobspec
from devstack.nomad.errors import NomadError
from devstack.nomad.events import Event
from devstack.nomad.state import TERMINAL_DEPLOYMENT, JobKey, alloc_terminal
from devstack.nomad.structs import rfc3339
from devstack.nomad.util import new_id, now_ns

from .plan import Planner

RUNNING = "Deployment is running"
NEEDS_PROMOTION = "Deployment is running but requires manual promotion"
AUTO_PROMOTION = "Deployment is running pending automatic promotion"
PAUSED = "Deployment is paused"
SUCCESSFUL = "Deployment completed successfully"
STOPPED_JOB = "Cancelled because job is stopped"
NEWER_JOB = "Cancelled due to newer version of job"
FAILED_ALLOCS = "Failed due to unhealthy allocations"
PROGRESS_DEADLINE = "Failed due to progress deadline"
FAILED_BY_USER = "Deployment marked as failed"


def _strategy(job: dict[str, Any], group: dict[str, Any]) -> dict[str, Any] | None:
    strategy = group.get("Update") or job.get("Update")
    if not strategy or int(strategy.get("MaxParallel") or 0) <= 0:
        return None
    return dict(strategy)


def requires_promotion(d: dict[str, Any]) -> bool:
    """Nomad's ``Deployment.RequiresPromotion``: a running deployment with unpromoted canaries."""
    return d["Status"] == "running" and any(
        g["DesiredCanaries"] > 0 and not g["Promoted"] for g in d["TaskGroups"].values()
    )


def auto_promotes(d: dict[str, Any]) -> bool:
    """Nomad's ``Deployment.HasAutoPromote``: every canary group has ``auto_promote``."""
    return d["Status"] == "running" and all(
        g["AutoPromote"] for g in d["TaskGroups"].values() if g["DesiredCanaries"] > 0
    )


def _running_description(d: dict[str, Any]) -> str:
    if requires_promotion(d):
        return AUTO_PROMOTION if auto_promotes(d) else NEEDS_PROMOTION
    return RUNNING


class DeploymentWatcher(Planner):
    def _group_strategy(self, job: dict[str, Any], group: dict[str, Any]) -> dict | None:
        """The group's update strategy, for service jobs (``None``: no deployments)."""
        return _strategy(job, group) if job["Type"] == "service" else None

    def _version_deployment(self, job: dict[str, Any], key: JobKey) -> dict[str, Any] | None:
        """The newest deployment of exactly this job version, whatever its status."""
        return next(
            (
                d
                for d in self.state.job_deployments(key)
                if d["JobVersion"] == job["Version"] and d["JobCreateIndex"] == job["CreateIndex"]
            ),
            None,
        )

    def _active_deployment(self, key: JobKey) -> dict[str, Any] | None:
        return next(
            (d for d in self.state.job_deployments(key) if d["Status"] not in TERMINAL_DEPLOYMENT),
            None,
        )

    def _deployment_event(self, etype: str, d: dict[str, Any]) -> Event:
        return Event("Deployment", etype, d["ID"], d["Namespace"], {"Deployment": d}, [d["JobID"]])

    def _new_deployment(self, job: dict[str, Any], index: int) -> dict[str, Any]:
        now = now_ns()
        groups = {}
        for g in job["TaskGroups"] or []:
            strategy = _strategy(job, g)
            if strategy is None:
                continue
            groups[g["Name"]] = {
                "AutoRevert": bool(strategy.get("AutoRevert")),
                "AutoPromote": bool(strategy.get("AutoPromote")),
                "ProgressDeadline": int(strategy.get("ProgressDeadline") or 0),
                "RequireProgressBy": rfc3339(now + int(strategy.get("ProgressDeadline") or 0)),
                "Promoted": False,
                "PlacedCanaries": None,
                # Set when canaries are placed: a first version deploys without them.
                "DesiredCanaries": 0,
                "DesiredTotal": g["Count"],
                "PlacedAllocs": 0,
                "HealthyAllocs": 0,
                "UnhealthyAllocs": 0,
            }
        return {
            "ID": new_id(),
            "Namespace": job["Namespace"],
            "JobID": job["ID"],
            "JobVersion": job["Version"],
            "JobModifyIndex": job["ModifyIndex"],
            "JobSpecModifyIndex": job["JobModifyIndex"],
            "JobCreateIndex": job["CreateIndex"],
            "IsMultiregion": False,
            "TaskGroups": groups,
            "Status": "running",
            "StatusDescription": RUNNING,
            "EvalPriority": job["Priority"],
            "CreateIndex": index,
            "ModifyIndex": index,
            "CreateTime": now,
            "ModifyTime": now,
        }

    def _set_status(
        self, d: dict[str, Any], status: str, description: str, index: int, events: list[Event]
    ) -> dict[str, Any]:
        d = {
            **d,
            "Status": status,
            "StatusDescription": description,
            "ModifyIndex": index,
            "ModifyTime": now_ns(),
        }
        self.state.put_deployment(d, index)
        events.append(self._deployment_event("DeploymentStatusUpdate", d))
        return d

    def _deployment_for_plan(
        self,
        job: dict[str, Any] | None,
        key: JobKey,
        placed: list[dict[str, Any]],
        stops: dict[str, str],
        index: int,
        events: list[Event],
    ) -> None:
        if job is None:
            return
        active = self._active_deployment(key)
        if job["Stop"]:
            if active is not None:
                self._set_status(active, "cancelled", STOPPED_JOB, index, events)
            return
        if job["Type"] != "service" or not any(_strategy(job, g) for g in job["TaskGroups"] or []):
            return
        same = [
            d
            for d in self.state.job_deployments(key)
            if d["JobVersion"] == job["Version"] and d["JobCreateIndex"] == job["CreateIndex"]
        ]
        d = same[0] if same else None
        if d is None:
            if not placed and not stops:
                return
            if active is not None:
                self._set_status(active, "cancelled", NEWER_JOB, index, events)
            d = self._new_deployment(job, index)
            self._arm_progress(d)
            etype = "PlanResult"
        elif d["Status"] in TERMINAL_DEPLOYMENT:
            # Replacements after a deployment finished (reschedules) are not part of it.
            return
        else:
            etype = "DeploymentStatusUpdate"
        groups = copy.deepcopy(d["TaskGroups"])
        mine = [a for a in placed if a["TaskGroup"] in groups]
        for a in mine:
            a["DeploymentID"] = d["ID"]
            state = groups[a["TaskGroup"]]
            state["PlacedAllocs"] += 1
            if (a["DeploymentStatus"] or {}).get("Canary"):
                state["PlacedCanaries"] = [*(state["PlacedCanaries"] or []), a["ID"]]
                group = jobspec.group_spec(job, a["TaskGroup"]) or {}
                state["DesiredCanaries"] = int(
                    (_strategy(job, group) or {}).get("Canary") or len(state["PlacedCanaries"])
                )
        for g in job["TaskGroups"] or []:
            if g["Name"] in groups:
                groups[g["Name"]]["DesiredTotal"] = g["Count"]
        if mine or etype == "PlanResult":
            d = {**d, "TaskGroups": groups, "ModifyIndex": index}
            if d["Status"] == "running":
                d["StatusDescription"] = _running_description(d)
            self.state.put_deployment(d, index)
            events.append(self._deployment_event(etype, d))

    def _update_budget(self, job: dict[str, Any], key: JobKey, gname: str) -> int | None:
        """How many more allocations of ``gname`` may be replaced now (None: no limit)."""
        group = jobspec.group_spec(job, gname)
        strategy = _strategy(job, group or {}) if group is not None else None
        if strategy is None or job["Type"] != "service":
            return None
        active = self._active_deployment(key)
        if active is None or active["JobVersion"] != job["Version"]:
            return int(strategy["MaxParallel"])
        if active["Status"] == "paused":
            return 0
        in_flight = sum(
            1
            for a in self.state.job_allocs(key)
            if a["DeploymentID"] == active["ID"]
            and a["TaskGroup"] == gname
            and not alloc_terminal(a)
            and (a["DeploymentStatus"] or {}).get("Healthy") is None
        )
        return max(int(strategy["MaxParallel"]) - in_flight, 0)

    # --- health and progress ------------------------------------------------------------------

    def update_alloc_health(self, alloc_id: str, healthy: bool) -> None:
        """A client's verdict on one allocation (``DeploymentStatus``), for its deployment."""
        a = self.state.allocs.get(alloc_id)
        if a is None or not self.running:
            return
        if (a["DeploymentStatus"] or {}).get("Healthy") is not None:
            return
        index = self.state.begin()
        now = now_ns()
        canary = bool((a["DeploymentStatus"] or {}).get("Canary"))
        status = {"Healthy": healthy, "Timestamp": rfc3339(now), "Canary": canary}
        a = {**a, "DeploymentStatus": {**status, "ModifyIndex": index}, "ModifyIndex": index}
        self.state.put_alloc(a, index)
        events = [self._alloc_event("AllocationUpdated", a)]
        # Outside a deployment the health only informs drains (``migrate``).
        eval_id, revert = (
            self._count_health(a, healthy, index, events) if a["DeploymentID"] else ("", None)
        )
        self._refresh_job((a["Namespace"], a["JobID"]), index, events)
        self.state.commit(index, events)
        if eval_id:
            self._enqueue(eval_id)
        if revert is not None:
            self._roll_back(*revert)
        self._drain_progress()

    def _count_health(
        self, a: dict[str, Any], healthy: bool, index: int, events: list[Event]
    ) -> tuple[str, tuple[JobKey, int] | None]:
        d = self.state.deployments.get(a["DeploymentID"])
        if d is None or d["Status"] in TERMINAL_DEPLOYMENT:
            return "", None
        groups = copy.deepcopy(d["TaskGroups"])
        group = groups.get(a["TaskGroup"])
        if group is None:
            return "", None
        group["HealthyAllocs" if healthy else "UnhealthyAllocs"] += 1
        if healthy:
            group["RequireProgressBy"] = rfc3339(now_ns() + group["ProgressDeadline"])
        d = {**d, "TaskGroups": groups, "ModifyIndex": index, "ModifyTime": now_ns()}
        self.state.put_deployment(d, index)
        events.append(self._deployment_event("DeploymentAllocHealth", d))
        key = (d["Namespace"], d["JobID"])
        if not healthy:
            return "", self._fail(d, FAILED_ALLOCS, index, events)
        if all(
            g["HealthyAllocs"] >= g["DesiredTotal"] and (g["DesiredCanaries"] == 0 or g["Promoted"])
            for g in groups.values()
        ):
            self._set_status(d, "successful", SUCCESSFUL, index, events)
            self.mark_stable(key, d["JobVersion"], True, index)
            return "", None
        self._arm_progress(d)
        job = self.state.jobs.get(key)
        if job is None or d["Status"] == "paused":
            return "", None
        if requires_promotion(d):
            if not (auto_promotes(d) and self._canaries_healthy(d, None)):
                return "", None  # waiting for the canaries, or for someone to promote them
            d = self._promote(d, None, index, events)
        # The next batch of a rolling update.
        return self._watcher_eval(job, d, index, events), None

    def _watcher_eval(
        self, job: dict[str, Any], d: dict[str, Any], index: int, events: list[Event]
    ) -> str:
        """Queue the deployment watcher's evaluation of ``job`` for ``d``; its id."""
        ev = self._new_eval(job, index, "deployment-watcher")
        ev["DeploymentID"] = d["ID"]
        self.state.put_eval(ev, index)
        events.append(self._eval_event("EvaluationUpdated", ev))
        return str(ev["ID"])

    def _fail(
        self, d: dict[str, Any], reason: str, index: int, events: list[Event]
    ) -> tuple[JobKey, int] | None:
        """Fail ``d``; the (job, version) to roll back to under ``auto_revert``, if any."""
        key = (d["Namespace"], d["JobID"])
        target = None
        if any(g["AutoRevert"] for g in d["TaskGroups"].values()):
            stable = [
                v
                for v in self.state.versions.get(key, [])
                if v["Stable"] and v["Version"] != d["JobVersion"]
            ]
            if stable:
                target = stable[0]["Version"]
        description = (
            reason if target is None else f"{reason} - rolling back to job version {target}"
        )
        self._set_status(d, "failed", description, index, events)
        self._timers.pop(f"deployment:{d['ID']}", None)
        return None if target is None else (key, target)

    def _roll_back(self, key: JobKey, version: int) -> None:
        raise NotImplementedError  # filled in by the lifecycle layer (a revert)

    def _arm_progress(self, d: dict[str, Any]) -> None:
        deadlines = [
            g["ProgressDeadline"] for g in d["TaskGroups"].values() if g["ProgressDeadline"]
        ]
        if not deadlines or not self.running:
            return
        name = f"deployment:{d['ID']}"
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[name] = loop.call_later(max(deadlines) / 1e9, self._progress_due, d["ID"])

    def _progress_due(self, deployment_id: str) -> None:
        self._timers.pop(f"deployment:{deployment_id}", None)
        d = self.state.deployments.get(deployment_id)
        if d is None or d["Status"] != "running" or not self.running:
            return
        if all(
            g["HealthyAllocs"] >= g["DesiredTotal"]
            or (
                g["DesiredCanaries"] > 0
                and not g["Promoted"]
                and g["HealthyAllocs"] >= g["DesiredCanaries"]
            )
            for g in d["TaskGroups"].values()
        ):
            return  # healthy canaries waiting for promotion have made their progress
        index = self.state.begin()
        events: list[Event] = []
        revert = self._fail(d, PROGRESS_DEADLINE, index, events)
        self._refresh_job((d["Namespace"], d["JobID"]), index, events)
        self.state.commit(index, events)
        if revert is not None:
            self._roll_back(*revert)

    def mark_stable(self, key: JobKey, version: int, stable: bool, index: int) -> None:
        """Set ``Stable`` on one stored version (and the current job if it is that version)."""
        versions = self.state.versions.get(key, [])
        self.state.versions[key] = [
            {**v, "Stable": stable} if v["Version"] == version else v for v in versions
        ]
        self.state.touch("job_version", index)
        job = self.state.jobs.get(key)
        if job is not None and job["Version"] == version:
            self.state.put_job({**job, "Stable": stable, "ModifyIndex": index}, index)

    # --- the deployment API -------------------------------------------------------------------

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        d = self.state.deployments.get(deployment_id)
        if d is None:
            raise NomadError(404, "deployment not found")
        return d

    def _deployment_reply(self, d: dict[str, Any], index: int, eval_id: str = "") -> dict:
        return {
            "EvalID": eval_id,
            "EvalCreateIndex": index if eval_id else 0,
            "DeploymentModifyIndex": index,
            "RevertedJobVersion": None,
            "Index": index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }

    def fail_deployment(self, deployment_id: str) -> dict[str, Any]:
        d = self.deployment(deployment_id)
        if d["Status"] in TERMINAL_DEPLOYMENT:
            raise NomadError(500, "can't fail terminal deployment")
        index = self.state.begin()
        events: list[Event] = []
        revert = self._fail(d, FAILED_BY_USER, index, events)
        key = (d["Namespace"], d["JobID"])
        self._refresh_job(key, index, events)
        self.state.commit(index, events)
        reply = self._deployment_reply(d, index)
        if revert is not None:
            reply["RevertedJobVersion"] = revert[1]
            self._roll_back(*revert)
        return reply

    def pause_deployment(self, deployment_id: str, body: Any) -> dict[str, Any]:
        d = self.deployment(deployment_id)
        pause = bool(body.get("Pause")) if isinstance(body, dict) else False
        if d["Status"] in TERMINAL_DEPLOYMENT:
            raise NomadError(500, f"can't {'pause' if pause else 'resume'} terminal deployment")
        index = self.state.begin()
        events: list[Event] = []
        status, text = (
            ("paused", PAUSED)
            if pause
            else ("running", _running_description({**d, "Status": "running"}))
        )
        self._set_status(d, status, text, index, events)
        eval_id = ""
        job = self.state.jobs.get((d["Namespace"], d["JobID"]))
        if not pause and job is not None:
            eval_id = self._watcher_eval(job, d, index, events)
        self.state.commit(index, events)
        if eval_id:
            self._enqueue(eval_id)
        return self._deployment_reply(d, index, eval_id)

    def _canaries_healthy(self, d: dict[str, Any], groups: set[str] | None) -> bool:
        """Whether every canary of ``groups`` (all if ``None``) is placed and healthy."""
        ids: list[str] = []
        for name, g in d["TaskGroups"].items():
            if (groups is not None and name not in groups) or not g["DesiredCanaries"]:
                continue
            placed = g["PlacedCanaries"] or []
            if len(placed) < g["DesiredCanaries"]:
                return False
            ids += placed
        return bool(ids) and all(
            ((self.state.allocs.get(cid) or {}).get("DeploymentStatus") or {}).get("Healthy")
            is True
            for cid in ids
        )

    def _promote(
        self, d: dict[str, Any], groups: set[str] | None, index: int, events: list[Event]
    ) -> dict[str, Any]:
        """Mark ``groups`` (all if ``None``) promoted and queue the evaluation that rolls on."""
        task_groups = copy.deepcopy(d["TaskGroups"])
        for name, g in task_groups.items():
            if groups is None or name in groups:
                g["Promoted"] = True
        d = {**d, "TaskGroups": task_groups, "ModifyIndex": index, "ModifyTime": now_ns()}
        if d["Status"] == "running" and not requires_promotion(d):
            d["StatusDescription"] = RUNNING
        self.state.put_deployment(d, index)
        events.append(self._deployment_event("DeploymentPromotion", d))
        return d

    def promote_deployment(self, deployment_id: str, body: Any) -> dict[str, Any]:
        """``Deployment.Promote``: every named (or every) group's canaries must be healthy."""
        d = self.deployment(deployment_id)
        if d["Status"] in TERMINAL_DEPLOYMENT:
            raise NomadError(500, "can't promote terminal deployment")
        req = body if isinstance(body, dict) else {}
        wanted = None if req.get("All") else set(req.get("Groups") or [])
        unhealthy = []
        have = False
        for name, g in sorted(d["TaskGroups"].items()):
            if wanted is not None and name not in wanted:
                continue
            for cid in g["PlacedCanaries"] or []:
                a = self.state.allocs.get(cid)
                if a is None:
                    continue
                if ((a["DeploymentStatus"] or {}).get("Healthy")) is not True:
                    unhealthy.append(f'Canary allocation "{cid}" for group "{name}" is not healthy')
                    continue
                have = True
        if unhealthy:
            n = len(unhealthy)
            items = "".join(f"\n\t* {u}" for u in unhealthy)
            raise NomadError(500, f"{n} error{'s' if n > 1 else ''} occurred:{items}\n\n")
        if not have:
            raise NomadError(500, "no canaries to promote")
        index = self.state.begin()
        events: list[Event] = []
        self._promote(d, wanted, index, events)
        eval_id = ""
        job = self.state.jobs.get((d["Namespace"], d["JobID"]))
        if job is not None:
            eval_id = self._watcher_eval(job, d, index, events)
        self.state.commit(index, events)
        if eval_id:
            self._enqueue(eval_id)
        return self._deployment_reply(d, index, eval_id)

    def set_allocs_health(self, deployment_id: str, body: Any) -> dict[str, Any]:
        d = self.deployment(deployment_id)
        if d["Status"] in TERMINAL_DEPLOYMENT:
            raise NomadError(500, "can't set health of allocations for a terminal deployment")
        req = body if isinstance(body, dict) else {}
        for healthy, field in ((True, "HealthyAllocationIDs"), (False, "UnhealthyAllocationIDs")):
            for alloc_id in req.get(field) or []:
                a = self.state.allocs.get(alloc_id)
                if a is None or a["DeploymentID"] != deployment_id:
                    raise NomadError(500, f'unknown alloc ID "{alloc_id}"')
                self.update_alloc_health(alloc_id, healthy)
        return self._deployment_reply(d, self.state.index)
