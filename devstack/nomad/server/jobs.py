"""Job writes: register (with ``EnforceIndex``), deregister (stop or purge) and force-evaluate.

A job write commits the job, its new version and its evaluation at one raft index, as Nomad's
``Job.Register`` does; an unchanged spec makes no new version but still a new evaluation.
"""

from __future__ import annotations

from typing import Any

from devstack.nomad import jobspec
from devstack.nomad.errors import NomadError
from devstack.nomad.events import Event
from devstack.nomad.util import now_ns

from .allocs import AllocUpdates


class JobWrites(AllocUpdates):
    # --- jobs -------------------------------------------------------------------------------

    def decode_job(
        self,
        body: Any,
        path_id: str | None,
        namespace: str,
        mismatch: str = "Job ID does not match name",
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The canonical, validated job of a register (or plan) body, and its options."""
        try:
            raw, opts = jobspec.decode_register_body(body)
            if not raw.text("ID"):
                raise NomadError(400, "Job ID hasn't been provided")
            if path_id is not None and raw.text("ID") != path_id:
                raise NomadError(400, mismatch)
            job = jobspec.canonicalize(raw, namespace)
        except jobspec.DecodeError as exc:
            raise NomadError(400, str(exc)) from exc
        try:
            jobspec.validate(job)
        except jobspec.ValidationError as exc:
            raise NomadError(500, str(exc)) from exc
        return job, opts

    def register_job(
        self, body: Any, path_id: str | None = None, namespace: str = "default"
    ) -> dict[str, Any]:
        job, opts = self.decode_job(body, path_id, namespace)
        return self.store_job(job, opts)

    def store_job(self, job: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
        """Commit ``job`` (a new version if its spec changed) and its evaluation."""
        key = (job["Namespace"], job["ID"])
        existing = self.state.jobs.get(key)
        if opts["EnforceIndex"]:
            want = opts["JobModifyIndex"]
            prefix = f"Enforcing job modify index {want}"
            if want == 0 and existing is not None:
                raise NomadError(500, f"{prefix}: job already exists")
            if want != 0 and existing is None:
                raise NomadError(500, f"{prefix}: job does not exist")
            if existing is not None and existing["JobModifyIndex"] != want:
                raise NomadError(
                    500,
                    f"{prefix}: job exists with conflicting job modify index: "
                    f"{existing['JobModifyIndex']}",
                )
        creates_eval = job["Periodic"] is None and (
            job["ParameterizedJob"] is None or job["Dispatched"]
        )
        index = self.state.begin()
        events: list[Event] = []
        if existing is not None and not jobspec.spec_changed(existing, job):
            job_modify_index = existing["JobModifyIndex"]
        else:
            now = now_ns()
            job["Version"] = existing["Version"] + 1 if existing else 0
            job["CreateIndex"] = existing["CreateIndex"] if existing else index
            job["ModifyIndex"] = index
            job["JobModifyIndex"] = index
            job["SubmitTime"] = now
            job["Status"] = existing["Status"] if existing else "pending"
            self.state.put_job(job, index)
            self.state.versions.setdefault(key, []).insert(0, job)
            del self.state.versions[key][6:]
            self.state.touch("job_version", index)
            if existing is None:
                self.state.summaries[key] = self._summary(job)
                self.state.summaries[key]["ModifyIndex"] = index
                self.state.touch("job_summary", index)
            events.append(self._job_event("JobRegistered", job))
            job_modify_index = index
        job = self.state.jobs[key]
        eval_id, eval_index = "", 0
        if creates_eval:
            ev = self._new_eval(job, index, "job-register")
            ev["JobModifyIndex"] = job_modify_index
            self.state.put_eval(ev, index)
            events.append(self._eval_event("JobRegistered", ev))
            eval_id, eval_index = ev["ID"], index
        self._refresh_job(key, index, events, etype="JobRegistered")
        self.state.commit(index, events)
        if eval_id:
            self._enqueue(eval_id)
        return {
            "EvalID": eval_id,
            "EvalCreateIndex": eval_index,
            "JobModifyIndex": job_modify_index,
            "Warnings": "",
            "Index": index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }

    def deregister_job(self, job_id: str, namespace: str, purge: bool) -> dict[str, Any]:
        key = (namespace, job_id)
        existing = self.state.jobs.get(key)
        reply: dict[str, Any] = {
            "EvalID": "",
            "EvalCreateIndex": 0,
            "JobModifyIndex": 0,
            "VolumeEvalID": "",
            "VolumeEvalIndex": 0,
            "Index": 0,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }
        if existing is None:
            return reply
        index = self.state.begin()
        events: list[Event] = []
        if purge:
            del self.state.jobs[key]
            self.state.versions.pop(key, None)
            self.state.summaries.pop(key, None)
            for table in ("jobs", "job_version", "job_summary"):
                self.state.touch(table, index)
            job = existing
            events.append(self._job_event("JobDeregistered", job))
        else:
            job = {
                **existing,
                "Stop": True,
                "Version": existing["Version"] + 1,
                "ModifyIndex": index,
                "JobModifyIndex": index,
                "SubmitTime": now_ns(),
            }
            self.state.put_job(job, index)
            self.state.versions.setdefault(key, []).insert(0, job)
            del self.state.versions[key][6:]
            self.state.touch("job_version", index)
            events.append(self._job_event("JobDeregistered", job))
        ev = self._new_eval(job, index, "job-deregister")
        ev["JobModifyIndex"] = index
        self.state.put_eval(ev, index)
        events.append(self._eval_event("JobDeregistered", ev))
        self._refresh_job(key, index, events, etype="JobDeregistered")
        self.state.commit(index, events)
        self._enqueue(ev["ID"])
        reply.update(
            {"EvalID": ev["ID"], "EvalCreateIndex": index, "JobModifyIndex": index, "Index": index}
        )
        return reply

    def evaluate_job(
        self, job_id: str, namespace: str, *, force_reschedule: bool = False
    ) -> dict[str, Any]:
        """``Job.Evaluate``; ``ForceReschedule`` marks failed allocations to reschedule now.

        Only allocations not yet replaced, in groups whose reschedule policy is enabled, are
        forced, whatever their attempts and delays.
        """
        job = self.state.jobs.get((namespace, job_id))
        if job is None:
            raise NomadError(404, "job not found")
        if job["Periodic"] is not None:
            raise NomadError(500, "can't evaluate periodic job")
        if job["ParameterizedJob"] is not None and not job["Dispatched"]:
            raise NomadError(500, "can't evaluate parameterized job")
        index = self.state.begin()
        events = []
        if force_reschedule:
            for a in self.state.job_allocs((namespace, job_id)):
                group = jobspec.group_spec(job, a["TaskGroup"])
                policy = (group or {}).get("ReschedulePolicy") or {}
                enabled = bool(policy) and (
                    policy.get("Unlimited")
                    or (policy.get("Attempts", 0) > 0 and policy.get("Interval", 0) > 0)
                )
                transition = a["DesiredTransition"] or {}
                if (
                    enabled
                    and not a["NextAllocation"]
                    and a["ClientStatus"] == "failed"
                    and not transition.get("ForceReschedule")
                ):
                    a = {
                        **a,
                        "DesiredTransition": {**transition, "ForceReschedule": True},
                        "ModifyIndex": index,
                    }
                    self.state.put_alloc(a, index)
                    events.append(self._alloc_event("AllocationUpdateDesiredStatus", a))
        ev = self._new_eval(job, index, "job-register")
        self.state.put_eval(ev, index)
        events.append(self._eval_event("EvaluationUpdated", ev))
        self._refresh_job((namespace, job_id), index, events)
        self.state.commit(index, events)
        self._enqueue(ev["ID"])
        return {
            "EvalID": ev["ID"],
            "EvalCreateIndex": index,
            "JobModifyIndex": job["JobModifyIndex"],
            "Index": index,
        }
