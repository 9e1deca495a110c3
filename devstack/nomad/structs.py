"""Nomad's wire shapes derived from stored objects: list stubs, timestamps, ``omitempty``.

Every read endpoint and the event stream render stored objects through these functions, so a
field's list-view form (``AllocListStub``, ``NodeListStub``, ``JobListStub``) is defined once.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

_ALLOC_INDEX = re.compile(r"\[(\d+)\]$")


def rfc3339(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def alloc_index(name: str) -> int:
    m = _ALLOC_INDEX.search(name)
    return int(m.group(1)) if m else 0


def strip_zero(obj: dict[str, Any]) -> dict[str, Any]:
    """Struct-level ``omitempty`` (Evaluation): zero-valued fields are left out."""
    return {k: v for k, v in obj.items() if v not in (None, "", 0, False, {}, [])}


def alloc_stub(a: dict[str, Any], resources: bool = False, task_states: bool = True) -> dict:
    job = a.get("Job") or {}
    stub: dict[str, Any] = {
        "ID": a["ID"],
        "EvalID": a["EvalID"],
        "Name": a["Name"],
        "Namespace": a["Namespace"],
        "NodeID": a["NodeID"],
        "NodeName": a["NodeName"],
        "JobID": a["JobID"],
        "JobType": job.get("Type", ""),
        "JobVersion": job.get("Version", 0),
        "TaskGroup": a["TaskGroup"],
    }
    if resources:
        stub["AllocatedResources"] = a["AllocatedResources"]
    stub.update(
        {
            "DesiredStatus": a["DesiredStatus"],
            "DesiredDescription": a["DesiredDescription"],
            "ClientStatus": a["ClientStatus"],
            "ClientDescription": a["ClientDescription"],
            "DesiredTransition": a["DesiredTransition"],
            "TaskStates": a["TaskStates"] if task_states else None,
            "DeploymentStatus": a["DeploymentStatus"],
            "FollowupEvalID": a["FollowupEvalID"],
            "NextAllocation": a["NextAllocation"],
            "RescheduleTracker": a["RescheduleTracker"],
            "PreemptedAllocations": a["PreemptedAllocations"],
            "PreemptedByAllocation": a["PreemptedByAllocation"],
            "CreateIndex": a["CreateIndex"],
            "ModifyIndex": a["ModifyIndex"],
            "CreateTime": a["CreateTime"],
            "ModifyTime": a["ModifyTime"],
        }
    )
    return stub


def node_stub(n: dict[str, Any], resources: bool = False, os_attr: bool = False) -> dict:
    stub: dict[str, Any] = {
        "Address": n["Attributes"].get("unique.network.ip-address", ""),
        "ID": n["ID"],
        "Attributes": {"os.name": n["Attributes"].get("os.name", "")} if os_attr else None,
        "Datacenter": n["Datacenter"],
        "Name": n["Name"],
        "NodeClass": n["NodeClass"],
        "NodePool": n["NodePool"],
        "Version": n["Attributes"].get("nomad.version", ""),
        "Drain": n["DrainStrategy"] is not None,
        "SchedulingEligibility": n["SchedulingEligibility"],
        "Status": n["Status"],
        "StatusDescription": n["StatusDescription"],
        "Drivers": n["Drivers"],
        "HostVolumes": n["HostVolumes"],
        "LastDrain": n["LastDrain"],
        "CreateIndex": n["CreateIndex"],
        "ModifyIndex": n["ModifyIndex"],
    }
    if resources:
        stub["NodeResources"] = n["NodeResources"]
        stub["ReservedResources"] = n["ReservedResources"]
    return stub


def job_stub(job: dict[str, Any], summary: dict[str, Any] | None, meta: bool = False) -> dict:
    stub = {
        "ID": job["ID"],
        "ParentID": job["ParentID"],
        "Name": job["Name"],
        "Namespace": job["Namespace"],
        "Datacenters": job["Datacenters"],
        "NodePool": job["NodePool"],
        "Multiregion": job["Multiregion"],
        "Type": job["Type"],
        "Priority": job["Priority"],
        "Periodic": job["Periodic"] is not None,
        "ParameterizedJob": job["ParameterizedJob"] is not None and not job["Dispatched"],
        "Stop": job["Stop"],
        "Status": job["Status"],
        "StatusDescription": job["StatusDescription"],
        "JobSummary": summary,
        "CreateIndex": job["CreateIndex"],
        "ModifyIndex": job["ModifyIndex"],
        "JobModifyIndex": job["JobModifyIndex"],
        "SubmitTime": job["SubmitTime"],
    }
    if meta:
        stub["Meta"] = job["Meta"]
    return stub
