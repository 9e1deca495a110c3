"""Allocation updates: a client's progress reports (``Node.UpdateAlloc``) and ``alloc stop``."""

from __future__ import annotations

from typing import Any

from devstack.nomad.errors import NomadError
from devstack.nomad.state import TERMINAL_CLIENT
from devstack.nomad.structs import rfc3339
from devstack.nomad.util import now_ns

from .nodes import NodeManager


class AllocUpdates(NodeManager):
    # --- allocations ------------------------------------------------------------------------

    def update_alloc_client(
        self,
        alloc_id: str,
        client_status: str,
        description: str,
        task_states: dict[str, Any],
    ) -> None:
        """A client node reports an allocation's progress (``Node.UpdateAlloc``)."""
        a = self.state.allocs.get(alloc_id)
        if a is None or a["ClientStatus"] == "lost" or not self.running:
            return
        was_terminal = a["ClientStatus"] in TERMINAL_CLIENT
        if was_terminal:
            # Task states keep arriving after the verdict (siblings being killed); the
            # verdict itself does not change.
            client_status, description = a["ClientStatus"], a["ClientDescription"]
        index = self.state.begin()
        now = now_ns()
        a = {
            **a,
            "ClientStatus": client_status,
            "ClientDescription": description,
            "TaskStates": task_states,
            "ModifyIndex": index,
            "ModifyTime": now,
        }
        # A failed allocation of a deployment is unhealthy, whatever its checks said.
        unhealthy = (
            client_status == "failed"
            and not was_terminal
            and bool(a["DeploymentID"])
            and (a["DeploymentStatus"] or {}).get("Healthy") is None
        )
        if unhealthy:
            a["DeploymentStatus"] = {
                "Healthy": False,
                "Timestamp": rfc3339(now),
                "Canary": False,
                "ModifyIndex": index,
            }
        self.state.put_alloc(a, index)
        events = [self._alloc_event("AllocationUpdated", a)]
        revert = self._count_health(a, False, index, events)[1] if unhealthy else None
        key = (a["Namespace"], a["JobID"])
        job = self.state.jobs.get(key)
        eval_id = ""
        if (
            client_status == "failed"
            and not was_terminal
            and a["DesiredStatus"] == "run"
            and job is not None
        ):
            ev = self._new_eval(job, index, "alloc-failure")
            self.state.put_eval(ev, index)
            events.append(self._eval_event("EvaluationUpdated", ev))
            eval_id = ev["ID"]
        self._refresh_job(key, index, events, etype="AllocationUpdated")
        self.state.commit(index, events)
        if eval_id:
            self._enqueue(eval_id)
        if revert is not None:
            self._roll_back(*revert)
        if client_status in TERMINAL_CLIENT and not was_terminal:
            self._unblock_soon()
            self._maybe_finish_drain(a["NodeID"])

    def stop_alloc(self, alloc_id: str) -> dict[str, Any]:
        a = self.state.allocs.get(alloc_id)
        if a is None:
            raise NomadError(404, "alloc not found")
        index = self.state.begin()
        a = {
            **a,
            "DesiredTransition": {**(a["DesiredTransition"] or {}), "Migrate": True},
            "ModifyIndex": index,
            "AllocModifyIndex": index,
        }
        self.state.put_alloc(a, index)
        events = [self._alloc_event("AllocationUpdateDesiredStatus", a)]
        job = self.state.jobs.get((a["Namespace"], a["JobID"])) or a["Job"]
        ev = self._new_eval(job, index, "alloc-stop")
        self.state.put_eval(ev, index)
        events.append(self._eval_event("AllocationUpdateDesiredStatus", ev))
        self._refresh_job(
            (a["Namespace"], a["JobID"]), index, events, etype="AllocationUpdateDesiredStatus"
        )
        self.state.commit(index, events)
        self._enqueue(ev["ID"])
        return {"EvalID": ev["ID"], "Index": index}
