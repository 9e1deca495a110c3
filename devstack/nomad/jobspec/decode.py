"""Decoding a submitted job and giving it Nomad's canonical defaults.

A job submitted over HTTP is first decoded (Go's decoder: field names match case-insensitively,
a wrong JSON type is a 400), then canonicalised (``api.Job.Canonicalize`` plus the server's own
defaults), then validated (:mod:`.validate`). Everything here is pure: dict in, dict out.
"""

from __future__ import annotations

import copy
from typing import Any

from devstack.nomad.util import HOUR, MINUTE, SECOND

JOB_TYPES = ("service", "batch", "system", "sysbatch")


class DecodeError(Exception):
    """The body does not decode into Nomad's structs: HTTP 400 with this text."""


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _Obj:
    """One JSON object being decoded into a Go struct named ``struct`` (for error texts)."""

    def __init__(self, raw: Any, struct: str, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise DecodeError(
                f"json: cannot unmarshal {_go_type(raw)} into Go value of type api.{struct}"
            )
        self.raw = raw
        self.struct = struct
        self.path = path
        self._lower: dict[str, str] | None = None

    def _key(self, name: str) -> str | None:
        if name in self.raw:
            return name
        if self._lower is None:
            self._lower = {k.lower(): k for k in self.raw if isinstance(k, str)}
        return self._lower.get(name.lower())

    def has(self, name: str) -> bool:
        key = self._key(name)
        return key is not None and self.raw[key] is not None

    def get(self, name: str) -> Any:
        key = self._key(name)
        return None if key is None else self.raw[key]

    def _bad(self, name: str, value: Any, gotype: str) -> DecodeError:
        return DecodeError(
            f"json: cannot unmarshal {_go_type(value)} into Go struct field "
            f"{self.struct}.{self.path}.{name} of type {gotype}"
        )

    def text(self, name: str, default: str = "") -> str:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._bad(name, value, "string")
        return value

    def integer(self, name: str, default: int = 0, gotype: str = "int") -> int:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(name, value, gotype)
        if isinstance(value, float) and not value.is_integer():
            raise self._bad(name, value, gotype)
        return int(value)

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(name, value, "bool")
        return value

    def strlist(self, name: str) -> list[str] | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(name, value, "[]string")
        return list(value)

    def strmap(self, name: str) -> dict[str, str] | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._bad(name, value, "map[string]string")
        return dict(value)

    def objlist(self, name: str, struct: str) -> list[_Obj] | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._bad(name, value, f"[]*api.{struct}")
        return [_Obj(v, struct, f"{self.path}.{name}") for v in value]

    def obj(self, name: str, struct: str) -> _Obj | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._bad(name, value, f"api.{struct}")
        return _Obj(value, struct, f"{self.path}.{name}")

    def any(self, name: str) -> Any:
        return copy.deepcopy(self.get(name))


def _update_default() -> dict[str, Any]:
    return {
        "Stagger": 30 * SECOND,
        "MaxParallel": 1,
        "HealthCheck": "checks",
        "MinHealthyTime": 10 * SECOND,
        "HealthyDeadline": 5 * MINUTE,
        "ProgressDeadline": 10 * MINUTE,
        "AutoRevert": False,
        "AutoPromote": False,
        "Canary": 0,
    }


def _restart_default(job_type: str) -> dict[str, Any]:
    if job_type in ("batch", "sysbatch"):
        return {
            "Attempts": 3,
            "Interval": 24 * HOUR,
            "Delay": 15 * SECOND,
            "Mode": "fail",
            "RenderTemplates": False,
        }
    return {
        "Attempts": 2,
        "Interval": 30 * MINUTE,
        "Delay": 15 * SECOND,
        "Mode": "fail",
        "RenderTemplates": False,
    }


def _reschedule_default(job_type: str) -> dict[str, Any] | None:
    if job_type == "service":
        return {
            "Attempts": 0,
            "Interval": 0,
            "Delay": 30 * SECOND,
            "DelayFunction": "exponential",
            "MaxDelay": HOUR,
            "Unlimited": True,
        }
    if job_type == "batch":
        return {
            "Attempts": 1,
            "Interval": 24 * HOUR,
            "Delay": 5 * SECOND,
            "DelayFunction": "constant",
            "MaxDelay": 0,
            "Unlimited": False,
        }
    return None


def _merge_policy(o: _Obj | None, default: dict[str, Any] | None) -> dict[str, Any] | None:
    if default is None:
        return None
    out = dict(default)
    if o is not None:
        for key, value in default.items():
            if not o.has(key):
                continue
            if isinstance(value, bool):
                out[key] = o.flag(key)
            elif isinstance(value, int):
                out[key] = o.integer(key, gotype="int64" if key != "Attempts" else "int")
            else:
                out[key] = o.text(key)
    return out


def _constraints(o: _Obj, name: str = "Constraints") -> list[dict[str, Any]] | None:
    items = o.objlist(name, "Constraint")
    if items is None:
        return None
    out = []
    for c in items:
        operand = c.text("Operand") or "="
        out.append({"LTarget": c.text("LTarget"), "RTarget": c.text("RTarget"), "Operand": operand})
    return out


def _ports(items: list[_Obj] | None) -> list[dict[str, Any]] | None:
    if items is None:
        return None
    out = []
    for p in items:
        port: dict[str, Any] = {"Label": p.text("Label")}
        if p.integer("Value"):
            port["Value"] = p.integer("Value")
        if p.integer("To"):
            port["To"] = p.integer("To")
        port["HostNetwork"] = p.text("HostNetwork") or "default"
        out.append(port)
    return out


def _networks(o: _Obj) -> list[dict[str, Any]] | None:
    items = o.objlist("Networks", "NetworkResource")
    if items is None:
        return None
    out = []
    for n in items:
        net: dict[str, Any] = {"Mode": n.text("Mode") or "host"}
        for key in ("Device", "CIDR", "IP", "Hostname"):
            if n.text(key):
                net[key] = n.text(key)
        if n.integer("MBits"):
            net["MBits"] = n.integer("MBits")
        if n.has("DNS"):
            net["DNS"] = n.any("DNS")
        reserved = _ports(n.objlist("ReservedPorts", "Port"))
        dynamic = _ports(n.objlist("DynamicPorts", "Port"))
        if reserved:
            net["ReservedPorts"] = reserved
        if dynamic:
            net["DynamicPorts"] = dynamic
        out.append(net)
    return out


def _checks(o: _Obj, service_name: str) -> list[dict[str, Any]] | None:
    items = o.objlist("Checks", "ServiceCheck")
    if items is None:
        return None
    out = []
    for c in items:
        out.append(
            {
                "Name": c.text("Name") or f"service: {service_name!r} check".replace("'", '"'),
                "Type": c.text("Type"),
                "Command": c.text("Command"),
                "Args": c.strlist("Args"),
                "Path": c.text("Path"),
                "Protocol": c.text("Protocol"),
                "PortLabel": c.text("PortLabel"),
                "Expose": c.flag("Expose"),
                "AddressMode": c.text("AddressMode"),
                "Interval": c.integer("Interval", gotype="time.Duration"),
                "Timeout": c.integer("Timeout", gotype="time.Duration"),
                "InitialStatus": c.text("InitialStatus"),
                "TLSServerName": c.text("TLSServerName"),
                "TLSSkipVerify": c.flag("TLSSkipVerify"),
                "Method": c.text("Method"),
                "Header": c.any("Header"),
                "CheckRestart": c.any("CheckRestart"),
                "GRPCService": c.text("GRPCService"),
                "GRPCUseTLS": c.flag("GRPCUseTLS"),
                "TaskName": c.text("TaskName"),
                "SuccessBeforePassing": c.integer("SuccessBeforePassing"),
                "FailuresBeforeCritical": c.integer("FailuresBeforeCritical"),
                "FailuresBeforeWarning": c.integer("FailuresBeforeWarning"),
                "Body": c.text("Body"),
                "OnUpdate": c.text("OnUpdate") or "require_healthy",
            }
        )
    return out


def _services(o: _Obj, default_name: str, task: str = "") -> list[dict[str, Any]] | None:
    items = o.objlist("Services", "Service")
    if items is None:
        return None
    out = []
    for s in items:
        name = s.text("Name") or default_name
        out.append(
            {
                "Name": name,
                "TaskName": s.text("TaskName") or task,
                "PortLabel": s.text("PortLabel"),
                "AddressMode": s.text("AddressMode") or "auto",
                "Address": s.text("Address"),
                "EnableTagOverride": s.flag("EnableTagOverride"),
                "Tags": s.strlist("Tags"),
                "CanaryTags": s.strlist("CanaryTags"),
                "Checks": _checks(s, name),
                "Connect": s.any("Connect"),
                "Meta": s.strmap("Meta"),
                "CanaryMeta": s.strmap("CanaryMeta"),
                "TaggedAddresses": s.strmap("TaggedAddresses"),
                "Namespace": s.text("Namespace"),
                "OnUpdate": s.text("OnUpdate") or "require_healthy",
                "Provider": s.text("Provider") or "consul",
                "Cluster": s.text("Cluster") or "default",
            }
        )
    return out


def _resources(o: _Obj | None) -> dict[str, Any]:
    r = o if o is not None else _Obj({}, "Resources", "Resources")
    return {
        "CPU": r.integer("CPU", 100) if r.has("CPU") else 100,
        "Cores": r.integer("Cores"),
        "MemoryMB": r.integer("MemoryMB", 300) if r.has("MemoryMB") else 300,
        "MemoryMaxMB": r.integer("MemoryMaxMB"),
        "DiskMB": r.integer("DiskMB"),
        "IOPS": r.integer("IOPS"),
        "Networks": _networks(r),
        "Devices": r.any("Devices"),
    }


def _task(t: _Obj, job: dict[str, Any], group: dict[str, Any]) -> dict[str, Any]:
    name = t.text("Name")
    restart = _merge_policy(t.obj("RestartPolicy", "RestartPolicy"), group["RestartPolicy"])
    default_service = f"{job['Name']}-{group['Name']}-{name}"
    return {
        "Name": name,
        "Driver": t.text("Driver"),
        "User": t.text("User"),
        "Config": t.any("Config"),
        "Env": t.strmap("Env"),
        "Services": _services(t, default_service, name),
        "Constraints": _constraints(t),
        "Affinities": t.any("Affinities"),
        "Resources": _resources(t.obj("Resources", "Resources")),
        "RestartPolicy": restart,
        "Meta": t.strmap("Meta"),
        "KillTimeout": t.integer("KillTimeout", 5 * SECOND, "time.Duration")
        if t.has("KillTimeout")
        else 5 * SECOND,
        "LogConfig": t.any("LogConfig") or {"MaxFiles": 10, "MaxFileSizeMB": 10, "Disabled": False},
        "Artifacts": t.any("Artifacts"),
        "Vault": t.any("Vault"),
        "Templates": t.any("Templates"),
        "DispatchPayload": t.any("DispatchPayload"),
        "VolumeMounts": t.any("VolumeMounts"),
        "Leader": t.flag("Leader"),
        "ShutdownDelay": t.integer("ShutdownDelay", gotype="time.Duration"),
        "KillSignal": t.text("KillSignal"),
        "Kind": t.text("Kind"),
        "ScalingPolicies": t.any("ScalingPolicies"),
        "Lifecycle": t.any("Lifecycle"),
    }


def _group(g: _Obj, job: dict[str, Any]) -> dict[str, Any]:
    jtype = job["Type"]
    name = g.text("Name")
    update = None
    if job["Update"] is not None and jtype == "service":
        update = _merge_policy(g.obj("Update", "UpdateStrategy"), job["Update"])
    disk = g.obj("EphemeralDisk", "EphemeralDisk")
    group: dict[str, Any] = {
        "Name": name,
        "Count": g.integer("Count", 1) if g.has("Count") else 1,
        "Update": update,
        "Migrate": _merge_policy(
            g.obj("Migrate", "MigrateStrategy"),
            {
                "MaxParallel": 1,
                "HealthCheck": "checks",
                "MinHealthyTime": 10 * SECOND,
                "HealthyDeadline": 5 * MINUTE,
            },
        )
        if jtype == "service"
        else None,
        "Constraints": _constraints(g),
        "Scaling": g.any("Scaling"),
        "RestartPolicy": _merge_policy(
            g.obj("RestartPolicy", "RestartPolicy"), _restart_default(jtype)
        ),
        "Tasks": None,
        "EphemeralDisk": {
            "Sticky": disk.flag("Sticky") if disk else False,
            "SizeMB": (disk.integer("SizeMB", 300) if disk.has("SizeMB") else 300) if disk else 300,
            "Migrate": disk.flag("Migrate") if disk else False,
        },
        "Meta": g.strmap("Meta"),
        "ReschedulePolicy": _merge_policy(
            g.obj("ReschedulePolicy", "ReschedulePolicy"), _reschedule_default(jtype)
        ),
        "Affinities": g.any("Affinities"),
        "Spreads": g.any("Spreads"),
        "Networks": _networks(g),
        "Consul": g.any("Consul") or {"Namespace": "", "Cluster": "default", "Partition": ""},
        "Services": None,
        "Volumes": g.any("Volumes"),
        "ShutdownDelay": g.get("ShutdownDelay"),
        "StopAfterClientDisconnect": g.get("StopAfterClientDisconnect"),
        "MaxClientDisconnect": g.get("MaxClientDisconnect"),
    }
    group["Services"] = _services(g, f"{job['Name']}-{name}")
    tasks = g.objlist("Tasks", "Task")
    group["Tasks"] = None if tasks is None else [_task(t, job, group) for t in tasks]
    return group


def decode_register_body(body: Any) -> tuple[_Obj, dict[str, Any]]:
    """Split a register request into the raw job and its write options (400s on bad shapes)."""
    req = _Obj(body, "JobRegisterRequest", "JobRegisterRequest")
    job = req.obj("Job", "Job")
    if job is None:
        raise DecodeError("Job must be specified")
    opts = {
        "EnforceIndex": req.flag("EnforceIndex"),
        "JobModifyIndex": req.integer("JobModifyIndex", gotype="uint64"),
        "PolicyOverride": req.flag("PolicyOverride"),
        "PreserveCounts": req.flag("PreserveCounts"),
        "EvalPriority": req.integer("EvalPriority"),
    }
    return job, opts


def _parameterized(p: _Obj | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "Payload": p.text("Payload") or "optional",
        "MetaRequired": p.strlist("MetaRequired"),
        "MetaOptional": p.strlist("MetaOptional"),
    }


def canonicalize(raw: _Obj | dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    """The job as the server stores it: every default filled in, Nomad's key order."""
    j = raw if isinstance(raw, _Obj) else _Obj(raw, "Job", "Job")
    jid = j.text("ID")
    jtype = j.text("Type") or "service"
    update = None
    if jtype == "service":
        update = _merge_policy(j.obj("Update", "UpdateStrategy"), _update_default())
    job: dict[str, Any] = {
        "Region": j.text("Region") or "global",
        "Namespace": j.text("Namespace") or namespace or "default",
        "ID": jid,
        "ParentID": j.text("ParentID"),
        "Name": j.text("Name") or jid,
        "Type": jtype,
        "Priority": j.integer("Priority", 50) if j.has("Priority") else 50,
        "AllAtOnce": j.flag("AllAtOnce"),
        "Datacenters": j.strlist("Datacenters") or ["*"],
        "NodePool": j.text("NodePool") or "default",
        "Constraints": _constraints(j),
        "Affinities": j.any("Affinities"),
        "Spreads": j.any("Spreads"),
        "TaskGroups": None,
        "Update": update,
        "Multiregion": j.any("Multiregion"),
        "Periodic": j.any("Periodic"),
        "ParameterizedJob": _parameterized(j.obj("ParameterizedJob", "ParameterizedJobConfig")),
        "Dispatched": j.flag("Dispatched"),
        "DispatchIdempotencyToken": j.text("DispatchIdempotencyToken"),
        "Payload": j.any("Payload"),
        "Meta": j.strmap("Meta"),
        "ConsulToken": "",
        "ConsulNamespace": j.text("ConsulNamespace"),
        "VaultToken": "",
        "VaultNamespace": j.text("VaultNamespace"),
        "NomadTokenID": "",
        "Stop": j.flag("Stop"),
        "Status": "",
        "StatusDescription": "",
        "Stable": False,
        "Version": 0,
        "SubmitTime": 0,
        "CreateIndex": 0,
        "ModifyIndex": 0,
        "JobModifyIndex": 0,
    }
    groups = j.objlist("TaskGroups", "TaskGroup")
    job["TaskGroups"] = None if groups is None else [_group(g, job) for g in groups]
    return job


# --- validation -------------------------------------------------------------------------------
