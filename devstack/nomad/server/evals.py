"""The evaluation worker and Nomad's reconciler: what to stop, update in place and place.

An evaluation re-reads the job and its allocations and decides, like Nomad's
``scheduler/reconcile.go``: allocations of removed groups or beyond ``Count`` stop, destructive
spec changes replace, failed allocations reschedule under the group's reschedule policy (now or
through a delayed follow-up evaluation), lost ones are replaced, missing ones are placed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from devstack.nomad import jobspec
from devstack.nomad.state import JobKey, alloc_client_terminal
from devstack.nomad.structs import alloc_index
from devstack.nomad.util import now_ns

from .deployments import DeploymentWatcher

log = logging.getLogger("devstack.nomad")
RESCHEDULE_SLACK = 50_000_000  # ns

# group, name, previous, reschedule delay, canary
Wanted = list[tuple[str, str, dict[str, Any] | None, int, bool]]
# (stops: alloc id -> reason, in-place updates, placements wanted, delayed follow-ups,
#  names or nodes already held per group)
Decision = tuple[
    dict[str, str],
    list[dict[str, Any]],
    Wanted,
    list[tuple[dict[str, Any], int]],
    dict[str, set[str]],
]


class Reconciler(DeploymentWatcher):
    # --- evaluation processing --------------------------------------------------------------

    async def _eval_worker(self) -> None:
        while True:
            eval_id = await self._queue.get()
            try:
                self.process_eval(eval_id)
            except Exception:
                log.exception("evaluation %s failed", eval_id)
            # Let HTTP handlers and clients run between evaluations under load.
            if self._queue.qsize() and self._queue.qsize() % 16 == 0:
                await asyncio.sleep(0)

    def _reschedule_decision(self, a: dict[str, Any], now: int) -> tuple[str, int, int]:
        """("now" | "later" | "never", when ns, delay ns) for a failed allocation."""
        group = jobspec.group_spec(a["Job"], a["TaskGroup"])
        policy = (group or {}).get("ReschedulePolicy")
        if not policy:
            return "never", 0, 0
        events = (a["RescheduleTracker"] or {}).get("Events") or []
        if not policy["Unlimited"]:
            window = [e for e in events if e["RescheduleTime"] > now - policy["Interval"]]
            if len(window) >= policy["Attempts"]:
                return "never", 0, 0
        delay = policy["Delay"]
        if events and policy["DelayFunction"] == "exponential":
            delay = events[-1]["Delay"] * 2
        elif events and policy["DelayFunction"] == "fibonacci":
            prev = events[-2]["Delay"] if len(events) > 1 else 0
            delay = events[-1]["Delay"] + prev
        if policy["MaxDelay"]:
            delay = min(delay, policy["MaxDelay"])
        when = a["ModifyTime"] + delay
        # The follow-up timer runs on the monotonic clock, ``when`` on the wall clock: a timer
        # firing a hair early must not leave the allocation waiting for a follow-up forever.
        return ("now" if now + RESCHEDULE_SLACK >= when else "later"), when, delay

    def process_eval(self, eval_id: str) -> None:
        ev = self.state.evals.get(eval_id)
        if ev is None or ev["Status"] != "pending":
            return
        key = (ev["Namespace"], ev["JobID"])
        job = self.state.jobs.get(key)
        now = now_ns()
        stops, inplace, wanted, followups, held = self._reconcile(job, key, now)
        self._apply_plan(ev, job, key, stops, inplace, wanted, followups, held, now)

    def _followup_pending(self, a: dict[str, Any]) -> bool:
        follow = self.state.evals.get(a["FollowupEvalID"]) if a["FollowupEvalID"] else None
        return follow is not None and follow["Status"] == "pending"

    def _reconcile(self, job: dict[str, Any] | None, key: JobKey, now: int) -> Decision:
        """What an evaluation of ``job`` (the stored one, or a plan's) would change; pure."""
        stops: dict[str, str] = {}
        inplace: list[dict[str, Any]] = []
        followups: list[tuple[dict[str, Any], int]] = []  # (failed alloc, when)
        wanted: Wanted = []
        stopped = job is None or job["Stop"]
        groups = {} if stopped or job is None else {g["Name"]: g for g in job["TaskGroups"]}
        held: dict[str, set[str]] = {g: set() for g in groups}
        live: dict[str, list[dict[str, Any]]] = {g: [] for g in groups}
        is_system = job is not None and job["Type"] in ("system", "sysbatch")
        lost: dict[str, dict[str, Any]] = {}
        for a in self.state.job_allocs(key):
            if a["ClientStatus"] == "lost" and not a["NextAllocation"]:
                lost[a["Name"]] = a
            if a["DesiredStatus"] != "run":
                continue
            gname = a["TaskGroup"]
            if gname not in groups:
                if not alloc_client_terminal(a):
                    stops[a["ID"]] = "alloc not needed due to job update"
                continue
            if a["ClientStatus"] == "lost":
                continue
            if a["ClientStatus"] == "complete":
                if job is not None and job["Type"] in ("batch", "sysbatch"):
                    held[gname].add(a["Name"] if not is_system else a["NodeID"])
                continue
            if a["ClientStatus"] == "failed":
                if a["NextAllocation"]:
                    continue
                decision, when, delay = self._reschedule_decision(a, now)
                if (a["DesiredTransition"] or {}).get("ForceReschedule"):
                    decision, delay = "now", 0  # Job.Evaluate with ForceReschedule
                if decision == "now":
                    wanted.append((gname, a["Name"], a, delay, False))
                elif decision == "later" and not self._followup_pending(a):
                    followups.append((a, when))
                held[gname].add(a["Name"] if not is_system else a["NodeID"])
                continue
            if (a["DesiredTransition"] or {}).get("Migrate"):
                stops[a["ID"]] = "alloc is being migrated"
                wanted.append((gname, a["Name"], a, 0, False))
                continue
            live[gname].append(a)
        assert job is not None or not groups
        for gname, group in groups.items():
            assert job is not None
            current = self._reconcile_updates(job, key, group, live[gname], stops, inplace, wanted)
            if is_system:
                for a in current:
                    held[gname].add(a["NodeID"])
                continue
            names = set()
            for a in current:
                if alloc_index(a["Name"]) >= group["Count"] or a["Name"] in names:
                    stops[a["ID"]] = "alloc not needed due to job update"
                    inplace[:] = [x for x in inplace if x["ID"] != a["ID"]]
                else:
                    names.add(a["Name"])
            names |= held[gname]
            names |= {w[1] for w in wanted if w[0] == gname}
            for i in range(group["Count"]):
                name = f"{job['ID']}.{gname}[{i}]"
                if name not in names:
                    # A replacement for a lost allocation links back to it.
                    wanted.append((gname, name, lost.get(name), 0, False))
        wanted = [
            w
            for w in wanted
            if w[0] in groups and (is_system or w[4] or alloc_index(w[1]) < groups[w[0]]["Count"])
        ]
        return stops, inplace, wanted, followups, held

    def _cancelled_canaries(self, job: dict[str, Any], key: JobKey, gname: str) -> set[str]:
        """Unpromoted canaries of an older version's deployment or of a failed one: they stop."""
        out: set[str] = set()
        for d in self.state.job_deployments(key):
            older = d["JobVersion"] != job["Version"] or d["JobCreateIndex"] != job["CreateIndex"]
            if not older and d["Status"] != "failed":
                continue
            state = d["TaskGroups"].get(gname)
            if state and not state["Promoted"]:
                out.update(state["PlacedCanaries"] or [])
        return out

    def _reconcile_updates(
        self,
        job: dict[str, Any],
        key: JobKey,
        group: dict[str, Any],
        live: list[dict[str, Any]],
        stops: dict[str, str],
        inplace: list[dict[str, Any]],
        wanted: Wanted,
    ) -> list[dict[str, Any]]:
        """One group's running allocations against the job: updates, canaries, replacements.

        Returns the allocations that stay (the count and name checks come after). Like
        Nomad's reconciler: an allocation whose group changed destructively is replaced in
        rolling batches of ``max_parallel``; with ``update { canary = N }`` the first
        destructive change places N canaries of the new version beside the old allocations
        and replaces nothing until the deployment is promoted, then stops the old allocations
        the canaries stand in for and rolls through the rest; a failed or paused deployment
        of this version replaces nothing, and unpromoted canaries of a failed deployment or of
        an older version's stop.
        """
        gname = group["Name"]
        strategy = self._group_strategy(job, group)
        want_canaries = int((strategy or {}).get("Canary") or 0)
        dep = self._version_deployment(job, key)
        dstate = (dep or {}).get("TaskGroups", {}).get(gname)
        halted = dep is not None and dep["Status"] in ("failed", "paused")
        promoted = bool(dstate and dstate["Promoted"])
        canary_ids = set((dstate or {}).get("PlacedCanaries") or [])
        canaries: list[dict[str, Any]] = []
        destructive: list[dict[str, Any]] = []
        current: list[dict[str, Any]] = []
        cancelled = self._cancelled_canaries(job, key, gname)
        for a in sorted(live, key=lambda x: (alloc_index(x["Name"]), x["CreateIndex"])):
            if a["ID"] in cancelled:
                stops[a["ID"]] = "alloc not needed due to job update"
                continue
            if a["ID"] in canary_ids:
                if a["Job"] is not job:
                    inplace.append(a)
                canaries.append(a)
                continue
            if a["Job"]["JobModifyIndex"] != job["JobModifyIndex"] or a["Job"] is not job:
                if jobspec.group_destructively_changed(a["Job"], job, gname):
                    destructive.append(a)
                    continue
                if a["Job"] is not job:
                    inplace.append(a)
            current.append(a)
        canarying = (
            want_canaries > 0
            and not promoted
            and (bool(destructive) or bool(dstate and dstate["DesiredCanaries"]))
        )
        if canarying:
            # Old allocations keep running beside the canaries until promotion.
            current.extend(destructive)
            if not halted and len(canaries) < want_canaries:
                taken = {c["Name"] for c in canaries}
                names = [a["Name"] for a in destructive if a["Name"] not in taken]
                names += [
                    f"{job['ID']}.{gname}[{i}]"
                    for i in range(max(group["Count"], want_canaries))
                    if f"{job['ID']}.{gname}[{i}]" not in taken
                ]
                for name in list(dict.fromkeys(names))[: want_canaries - len(canaries)]:
                    wanted.append((gname, name, None, 0, True))
            return current
        if canaries:
            # Promoted: the canaries are the new version; the old allocations they stand in
            # for stop first.
            canary_names = {c["Name"] for c in canaries}
            for a in [*current, *destructive]:
                if a["Name"] in canary_names:
                    stops[a["ID"]] = "alloc not needed due to job update"
                    inplace[:] = [x for x in inplace if x["ID"] != a["ID"]]
            current = [a for a in current if a["ID"] not in stops]
            destructive = [a for a in destructive if a["ID"] not in stops]
            current = [*canaries, *current]
        # A rolling update replaces at most max_parallel unhealthy-yet allocations.
        budget = 0 if halted else self._update_budget(job, key, gname)
        for a in destructive:
            if budget is not None and budget <= 0:
                current.append(a)
                continue
            if budget is not None:
                budget -= 1
            stops[a["ID"]] = "alloc is being updated due to job update"
            wanted.append((gname, a["Name"], None, 0, False))
        return current
