"""Job lifecycle writes beyond register: dispatch, revert, stability and scaling.

Each is what Nomad's ``Job.Dispatch``, ``Job.Revert``, ``Job.Stable`` and ``Job.Scale`` RPCs do,
with their error texts (RPC errors reach HTTP as 500 plain text unless Nomad codes them).
Revert and scale go through the same register path as a submitted job, so they make a new
version and an evaluation exactly as a re-registration would.
"""

from __future__ import annotations

import base64
import binascii
import copy
import time
from typing import Any

from devstack.nomad import jobspec
from devstack.nomad.errors import NomadError
from devstack.nomad.state import alloc_terminal
from devstack.nomad.util import new_id, now_ns

from .services import NativeServices

MAX_DISPATCH_PAYLOAD = 16 * 1024
NO_ENFORCE = {"EnforceIndex": False, "JobModifyIndex": 0}


def _obj(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise NomadError(400, "request body is not a JSON object")
    return body


class JobLifecycle(NativeServices):
    def _job(self, job_id: str, namespace: str) -> dict[str, Any]:
        job = self.state.jobs.get((namespace, job_id))
        if job is None:
            raise NomadError(404, "job not found")
        return job

    def _resubmit(self, job: dict[str, Any]) -> dict[str, Any]:
        """Register a copy of a stored job spec (revert, scale) as a new submission."""
        spec = copy.deepcopy(job)
        for field in jobspec.STATUS_FIELDS:
            spec.pop(field, None)
        canonical = jobspec.canonicalize(spec, job["Namespace"])
        return self.store_job(canonical, NO_ENFORCE)

    # --- dispatch ---------------------------------------------------------------------------

    def dispatch_job(self, job_id: str, namespace: str, body: Any) -> dict[str, Any]:
        req = _obj(body)
        parent = self.state.jobs.get((namespace, job_id))
        if parent is None:
            raise NomadError(500, "parameterized job not found")
        params = parent["ParameterizedJob"]
        if params is None or parent["Dispatched"]:
            raise NomadError(500, f'Specified job "{job_id}" is not a parameterized job')
        if parent["Stop"]:
            raise NomadError(500, f'Specified job "{job_id}" is stopped')
        raw_payload = req.get("Payload") or ""
        try:
            payload = base64.b64decode(raw_payload, validate=True) if raw_payload else b""
        except (binascii.Error, TypeError) as exc:
            raise NomadError(400, f"illegal base64 data: {exc}") from exc
        mode = (params.get("Payload") or "optional").lower()
        if payload and mode == "forbidden":
            raise NomadError(500, "Payload is not allowed")
        if not payload and mode == "required":
            raise NomadError(500, "Payload is required")
        if len(payload) > MAX_DISPATCH_PAYLOAD:
            raise NomadError(
                500, f"Payload exceeds maximum size; {len(payload)} > {MAX_DISPATCH_PAYLOAD}"
            )
        meta = req.get("Meta") or {}
        if not isinstance(meta, dict):
            raise NomadError(400, "Meta must be an object")
        required = list(params.get("MetaRequired") or [])
        allowed = set(required) | set(params.get("MetaOptional") or [])
        missing = sorted(k for k in required if k not in meta)
        if missing:
            raise NomadError(
                500, f"Dispatch did not provide required meta keys: [{' '.join(missing)}]"
            )
        extra = sorted(k for k in meta if k not in allowed)
        if extra:
            raise NomadError(500, f"Dispatch provided unpermitted meta keys: [{' '.join(extra)}]")
        prefix = req.get("IdPrefixTemplate") or ""
        child_id = f"{job_id}/dispatch-{int(time.time())}-{new_id()[:8]}"
        if prefix:
            child_id = f"{job_id}/dispatch-{prefix}-{int(time.time())}-{new_id()[:8]}"
        spec = copy.deepcopy(parent)
        for field in jobspec.STATUS_FIELDS:
            spec.pop(field, None)
        spec.update(
            {
                "ID": child_id,
                "Name": child_id,
                "ParentID": job_id,
                "Dispatched": True,
                "Payload": base64.b64encode(payload).decode() if payload else None,
                "Meta": {**(parent["Meta"] or {}), **{str(k): str(v) for k, v in meta.items()}},
            }
        )
        child = jobspec.canonicalize(spec, namespace)
        reply = self.store_job(child, NO_ENFORCE)
        stored = self.state.jobs[(namespace, child_id)]
        return {
            "DispatchedJobID": child_id,
            "EvalID": reply["EvalID"],
            "EvalCreateIndex": reply["EvalCreateIndex"],
            "JobCreateIndex": stored["CreateIndex"],
            "Index": reply["Index"],
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }

    # --- revert and stability ---------------------------------------------------------------

    def _version(self, job_id: str, namespace: str, version: int) -> dict[str, Any] | None:
        for v in self.state.versions.get((namespace, job_id), []):
            if v["Version"] == version:
                return v
        return None

    def revert_job(self, job_id: str, namespace: str, body: Any) -> dict[str, Any]:
        req = _obj(body)
        current = self.state.jobs.get((namespace, job_id))
        if current is None:
            raise NomadError(500, f'job "{job_id}" not found')
        version = req.get("JobVersion", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise NomadError(400, "JobVersion must be an integer")
        enforce = req.get("EnforcePriorVersion")
        if version == current["Version"]:
            raise NomadError(500, "can't revert to current version")
        if enforce is not None and enforce != current["Version"]:
            raise NomadError(
                500,
                f"Current job has version {current['Version']}; enforcing version {enforce}",
            )
        old = self._version(job_id, namespace, version)
        if old is None:
            raise NomadError(
                500, f'job "{job_id}" in namespace "{namespace}" at version {version} not found'
            )
        reply = self._resubmit({**old, "Stop": False})
        reply.pop("VolumeEvalID", None)
        return reply

    def set_stability(self, job_id: str, namespace: str, body: Any) -> dict[str, Any]:
        req = _obj(body)
        version = req.get("JobVersion", 0)
        stable = bool(req.get("Stable"))
        key = (namespace, job_id)
        old = self._version(job_id, namespace, version)
        if old is None:
            raise NomadError(500, f'job "{job_id}" at version {version} not found')
        index = self.state.begin()
        self.mark_stable(key, version, stable, index)
        self.state.commit(index, [])
        return {"Index": index, "LastContact": 0, "KnownLeader": False, "NextToken": ""}

    def _roll_back(self, key: tuple[str, str], version: int) -> None:
        """``auto_revert``: register the last stable version again."""
        old = self._version(key[1], key[0], version)
        if old is not None:
            self._resubmit({**old, "Stop": False})

    # --- scaling ----------------------------------------------------------------------------

    def scale_job(self, job_id: str, namespace: str, body: Any) -> dict[str, Any]:
        req = _obj(body)
        target = req.get("Target") or {}
        group_name = target.get("Group") if isinstance(target, dict) else None
        if not group_name:
            raise NomadError(400, "missing task group name")
        job = self.state.jobs.get((namespace, job_id))
        if job is None:
            raise NomadError(500, f'job "{job_id}" not found')
        group = jobspec.group_spec(job, group_name)
        if group is None:
            raise NomadError(
                400, f'task group "{group_name}" specified for scaling does not exist in job'
            )
        count = req.get("Count")
        if count is not None and (not isinstance(count, int) or count < 0):
            raise NomadError(400, "scaling action count can't be negative")
        key = (namespace, job_id)
        event = {
            "Count": count,
            "PreviousCount": group["Count"],
            "Message": str(req.get("Message") or ""),
            "Error": bool(req.get("Error")),
            "Meta": req.get("Meta"),
            "Time": now_ns(),
            "EvalID": None,
            "CreateIndex": 0,
        }
        reply: dict[str, Any]
        if count is None:
            index = self.state.begin()
            self.state.commit(index, [])
            reply = {"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": job["JobModifyIndex"]}
            reply.update({"Warnings": "", "Index": index})
        else:
            groups = [
                {**g, "Count": count} if g["Name"] == group_name else g for g in job["TaskGroups"]
            ]
            reply = self._resubmit({**job, "TaskGroups": groups})
            event["EvalID"] = reply["EvalID"] or None
        event["CreateIndex"] = reply["Index"]
        self.scaling_events.setdefault(key, {}).setdefault(group_name, []).insert(0, event)
        return {**reply, "LastContact": 0, "KnownLeader": False, "NextToken": ""}

    def scale_status(self, job_id: str, namespace: str) -> dict[str, Any]:
        job = self._job(job_id, namespace)
        key = (namespace, job_id)
        groups: dict[str, Any] = {}
        live = [
            a
            for a in self.state.job_allocs(key)
            if not alloc_terminal(a) and a["Job"]["CreateIndex"] == job["CreateIndex"]
        ]
        for g in job["TaskGroups"] or []:
            mine = [a for a in live if a["TaskGroup"] == g["Name"]]
            health = [(a.get("DeploymentStatus") or {}).get("Healthy") for a in mine]
            groups[g["Name"]] = {
                "Desired": g["Count"],
                "Placed": len(mine),
                "Running": sum(1 for a in mine if a["ClientStatus"] == "running"),
                "Healthy": sum(1 for h in health if h is True),
                "Unhealthy": sum(1 for h in health if h is False),
                "Events": self.scaling_events.get(key, {}).get(g["Name"]) or None,
            }
        return {
            "JobID": job_id,
            "Namespace": namespace,
            "JobCreateIndex": job["CreateIndex"],
            "JobModifyIndex": job["JobModifyIndex"],
            "JobStopped": job["Stop"],
            "TaskGroups": groups,
        }
