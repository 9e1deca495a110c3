"""Nomad's job validation, with its exact messages nested the way go-multierror prints them.

``Job.Validate`` failures are HTTP 500 (not 400) in Nomad, see the reference notes.
"""

from __future__ import annotations

import re
from typing import Any

from devstack.nomad.util import SECOND, format_go_duration, go_multierror

from .decode import JOB_TYPES


class ValidationError(Exception):
    """Job.Validate failed: HTTP 500 with go-multierror text."""


_MIN_CHECK_INTERVAL = SECOND
_MIN_CHECK_TIMEOUT = SECOND
_CHECK_TYPES = ("http", "tcp", "grpc", "script", "ttl")
_OPERANDS = (
    "=",
    "==",
    "is",
    "!=",
    "not",
    "<",
    "<=",
    ">",
    ">=",
    "version",
    "semver",
    "regexp",
    "set_contains",
    "set_contains_all",
    "set_contains_any",
    "distinct_hosts",
    "distinct_property",
    "is_set",
    "is_not_set",
)


def _validate_constraint(c: dict[str, Any]) -> list[str]:
    errs = []
    op = c["Operand"]
    if op not in _OPERANDS:
        errs.append(f"Unknown constraint type {op!r}".replace("'", '"'))
    if op == "regexp":
        try:
            re.compile(c["RTarget"])
        except re.error as exc:
            errs.append(f"Regular expression failed to compile: {exc}")
    if op not in ("distinct_hosts", "distinct_property", "is_set", "is_not_set"):
        if not c["LTarget"] and op not in ("distinct_hosts",):
            errs.append("No LTarget provided but is required by constraint")
        if not c["RTarget"]:
            errs.append("No RTarget provided but is required by constraint")
    return errs


def _check_errors(check: dict[str, Any]) -> list[str]:
    ctype = check["Type"].lower()
    if ctype not in _CHECK_TYPES:
        return [
            f"invalid type ({check['Type']!r}), must be one of "
            f'"http", "tcp", "grpc", "script", "ttl"'.replace("'", '"')
        ]
    if ctype == "http" and not check["Path"]:
        return ["http type must have http path"]
    if ctype == "script" and not check["Command"]:
        return ["script type must have a valid script path"]
    if ctype in ("http", "tcp", "grpc", "script", "ttl") and ctype != "ttl":
        if check["Interval"] < _MIN_CHECK_INTERVAL:
            return [
                f"interval ({format_go_duration(check['Interval'])}) cannot be lower than "
                f"{format_go_duration(_MIN_CHECK_INTERVAL)}"
            ]
        if check["Timeout"] < _MIN_CHECK_TIMEOUT:
            return [
                f"timeout ({format_go_duration(check['Timeout'])}) is lower than required "
                f"minimum timeout {format_go_duration(_MIN_CHECK_TIMEOUT)}"
            ]
    elif ctype == "ttl" and check["Interval"] <= 0:
        return ["ttl type must have a valid ttl interval"]
    return []


def _service_errors(svc: dict[str, Any]) -> list[str]:
    errs = []
    if not svc["Name"]:
        errs.append("Service must have a name")
    elif not re.fullmatch(r"[a-zA-Z0-9\-${}.]+", svc["Name"]) or len(svc["Name"]) > 63:
        errs.append(
            f"Service name must be valid per RFC 1123 and can contain only alphanumeric "
            f"characters or dashes: {svc['Name']!r}".replace("'", '"')
        )
    if svc["Provider"] not in ("consul", "nomad"):
        errs.append(f"Service provider must be one of consul or nomad, got {svc['Provider']}")
    for check in svc["Checks"] or []:
        if svc["Provider"] == "nomad" and check["Type"] not in ("http", "tcp"):
            errs.append(f"Check {check['Name']} invalid: check type {check['Type']!r} unsupported")
            continue
        for e in _check_errors(check):
            errs.append(f"Check {check['Name']} invalid: {e}")
    return errs


def _task_errors(task: dict[str, Any]) -> list[str]:
    errs = []
    if not task["Name"]:
        errs.append("Missing task name")
    elif "/" in task["Name"]:
        errs.append("Task name cannot include slashes")
    elif "\x00" in task["Name"]:
        errs.append("Task name cannot include null characters")
    if not task["Driver"]:
        errs.append("Missing task driver")
    if task["KillTimeout"] < 0:
        errs.append("KillTimeout must be a positive value")
    res = task["Resources"]
    mins = []
    if res["CPU"] < 1 and res["Cores"] == 0:
        mins.append(f"minimum CPU value is 1; got {res['CPU']}")
    if res["MemoryMB"] < 10:
        mins.append(f"minimum MemoryMB value is 10; got {res['MemoryMB']}")
    if mins:
        errs.append(go_multierror([go_multierror(mins)]))
    for idx, c in enumerate(task["Constraints"] or []):
        ce = _validate_constraint(c)
        if ce:
            errs.append(f"Constraint {idx + 1} validation failed: {go_multierror(ce)}")
    for idx, svc in enumerate(task["Services"] or []):
        se = _service_errors(svc)
        if se:
            errs.append(f"service[{idx}] {svc['Name']!r} validation failed: {go_multierror(se)}")
    return errs


def _port_labels(group: dict[str, Any]) -> set[str]:
    labels: set[str] = set()
    nets = list(group["Networks"] or [])
    for task in group["Tasks"] or []:
        nets.extend(task["Resources"]["Networks"] or [])
    for net in nets:
        for p in (net.get("ReservedPorts") or []) + (net.get("DynamicPorts") or []):
            labels.add(p["Label"])
    return labels


def _task_port_errors(task: dict[str, Any], group: dict[str, Any]) -> list[str]:
    """``validateServices``: a task service's port labels must exist in the group's first
    network or the task's own (deprecated) networks; checks inherit the service's port."""
    wanted: dict[str, set[str]] = {}
    for svc in task["Services"] or []:
        label = svc["PortLabel"]
        if label and not (svc.get("AddressMode") == "driver" and label.isdigit()):
            wanted.setdefault(label, set()).add(svc["Name"])
        for check in svc.get("Checks") or []:
            if check["Type"] not in ("http", "tcp", "grpc"):
                continue
            port = check.get("PortLabel") or label
            if port and not port.isdigit():
                wanted.setdefault(port, set()).add(svc["Name"])
    labels: set[str] = set()
    nets = (group["Networks"] or [])[:1] + list(task["Resources"]["Networks"] or [])
    for net in nets:
        for p in (net.get("ReservedPorts") or []) + (net.get("DynamicPorts") or []):
            labels.add(p["Label"])
    return [
        f'port label "{label}" referenced by services {", ".join(sorted(names))} does not exist'
        for label, names in sorted(wanted.items())
        if label not in labels
    ]


def _group_errors(group: dict[str, Any], job: dict[str, Any]) -> list[str]:
    errs = []
    if group["Count"] < 0:
        errs.append("Task group count can't be negative")
    if not group["Tasks"]:
        errs.append("Missing tasks for task group")
    for idx, c in enumerate(group["Constraints"] or []):
        ce = _validate_constraint(c)
        if ce:
            errs.append(f"Constraint {idx + 1} validation failed: {go_multierror(ce)}")
    rp = group["RestartPolicy"]
    if rp["Mode"] not in ("delay", "fail"):
        errs.append(f"Unsupported restart mode: {rp['Mode']!r}".replace("'", '"'))
    if rp["Attempts"] < 0:
        errs.append(f"Attempts cannot be negative: {rp['Attempts']}")
    if group["EphemeralDisk"]["SizeMB"] < 10:
        errs.append(
            f"Task group ephemeral disk validation failed: 1 error occurred:\n\t* minimum "
            f"DiskMB value is 10; got {group['EphemeralDisk']['SizeMB']}\n\n"
        )
    # Port labels must be unique and reserved ports in range across the group's networks.
    seen: dict[str, int] = {}
    for net in group["Networks"] or []:
        for p in (net.get("ReservedPorts") or []) + (net.get("DynamicPorts") or []):
            if p["Label"] in seen:
                errs.append(f"Port label {p['Label']} already in use")
            seen[p["Label"]] = 1
            if not re.fullmatch(r"[a-zA-Z0-9_]+", p["Label"] or ""):
                errs.append(
                    f"Port label does not conform to naming requirements {p['Label']!r}".replace(
                        "'", '"'
                    )
                )
        for p in net.get("ReservedPorts") or []:
            if not 0 < p.get("Value", 0) <= 65535:
                errs.append(f"Port {p['Label']} ({p.get('Value', 0)}) is outside valid range")
    tasks: dict[str, int] = {}
    for idx, task in enumerate(group["Tasks"] or []):
        if task["Name"] == "":
            errs.append(f"Task {idx + 1} missing name")
        elif task["Name"] in tasks:
            errs.append(
                f"Task {idx + 1} redefines '{task['Name']}' from task {tasks[task['Name']] + 1}"
            )
        else:
            tasks[task["Name"]] = idx
    for task in group["Tasks"] or []:
        te = _task_errors(task)
        pe = _task_port_errors(task, group)
        if pe:
            te.append(go_multierror(pe))
        if te:
            errs.append(f"Task {task['Name']} validation failed: {go_multierror(te)}")
    # Every port label a service or check names must exist in the group (or task) networks.
    labels = _port_labels(group)
    by_label: dict[str, list[str]] = {}
    for svc in group["Services"] or []:
        label = svc["PortLabel"]
        if label and not label.isdigit() and label not in labels:
            by_label.setdefault(label, []).append(svc["Name"])
    svc_errs = []
    for idx, svc in enumerate(group["Services"] or []):
        se = _service_errors(svc)
        if se:
            svc_errs.append(
                f"service[{idx}] {svc['Name']!r} validation failed: {go_multierror(se)}"
            )
    for label, names in by_label.items():
        svc_errs.append(
            f"port label {label!r} referenced by services [{' '.join(names)}] does not "
            f"exist".replace("'", '"')
        )
    if svc_errs:
        errs.append(f"Task group service validation failed: {go_multierror(svc_errs)}")
    return errs


def validate(job: dict[str, Any]) -> None:
    """Raise :class:`ValidationError` with Nomad's text if ``job`` is not a valid job."""
    errs = []
    if not job["ID"]:
        errs.append("Missing job ID")
    elif " " in job["ID"]:
        errs.append("Job ID contains a space")
    elif "\x00" in job["ID"]:
        errs.append("Job ID contains a null character")
    if "\x00" in job["Name"]:
        errs.append("Job Name contains a null character")
    if job["Type"] not in JOB_TYPES:
        errs.append(f"Invalid job type: {job['Type']!r}".replace("'", '"'))
    if not 1 <= job["Priority"] <= 100:
        errs.append("Job priority must be between [1, 100]")
    if not job["Datacenters"] or any(dc == "" for dc in job["Datacenters"]):
        errs.append(
            "Missing job datacenters"
            if not job["Datacenters"]
            else "datacenter must be non-empty string"
        )
    if not job["TaskGroups"]:
        errs.append("Missing job task groups")
    for idx, c in enumerate(job["Constraints"] or []):
        ce = _validate_constraint(c)
        if ce:
            errs.append(f"Constraint {idx + 1} validation failed: {go_multierror(ce)}")
    names: dict[str, int] = {}
    for idx, group in enumerate(job["TaskGroups"] or []):
        if group["Name"] == "":
            errs.append(f"Job task group {idx + 1} missing name")
        elif group["Name"] in names:
            errs.append(
                f"Job task group {idx + 1} redefines '{group['Name']}' from group "
                f"{names[group['Name']] + 1}"
            )
        else:
            names[group["Name"]] = idx
        if job["Type"] == "system" and group["Count"] > 1:
            errs.append(
                f"Job task group {group['Name']} has count {group['Count']}. Count cannot "
                "exceed 1 with system scheduler"
            )
    for group in job["TaskGroups"] or []:
        ge = _group_errors(group, job)
        if ge:
            errs.append(f"Task group {group['Name']} validation failed: {go_multierror(ge)}")
    if errs:
        raise ValidationError(go_multierror(errs))
