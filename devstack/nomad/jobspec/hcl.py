"""HCL2 job files to Nomad's API JSON, for ``POST /v1/jobs/parse`` (what ``nomad job run`` does).

python-hcl2 parses the text; this module maps Nomad's jobspec blocks (job, group, task, network
and port, service and check, resources, env, meta, constraint, config, update, migrate,
restart, reschedule, ephemeral_disk, parameterized, periodic, lifecycle, template, artifact)
onto the API's PascalCase fields, with durations as nanoseconds. An argument or block the
jobspec does not know is an error worded as HCL's own diagnostics, so a typo does not pass
silently.
``variable``/``variables``/``locals`` blocks and the expressions that use them are evaluated
first (:mod:`devstack.nomad.jobspec.hclexpr`), with the values of the request's ``Variables``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import hcl2

from devstack.nomad.jobspec.hclexpr import (
    ExprError,
    Scope,
    declared_variables,
    resolve,
    variable_values,
)
from devstack.nomad.util import parse_go_duration


class ParseError(ValueError):
    """The text is not a valid job file (HTTP 400 with this message)."""


_OPTIONS = hcl2.SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)

Mapper = Callable[[Any], Any]
# HCL name -> (API field, converter); converters are plain callables (int, bool, ...).
Spec = dict[str, tuple[str, Any]]


def _duration(value: Any) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    try:
        return parse_go_duration(str(value))
    except ValueError as exc:
        raise ParseError(f"Unsuitable value type; {exc}") from exc


def _same(value: Any) -> Any:
    return value


def _blocks(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    return [i for i in items if isinstance(i, dict)]


def _labelled(value: Any, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """``kind "label" { ... }`` blocks as (label, body) pairs."""
    out = []
    for block in _blocks(value):
        if len(block) != 1 or not isinstance(next(iter(block.values())), dict):
            raise ParseError(
                f"Missing name for {kind}; All {kind} blocks must have 1 labels (name)."
            )
        label, body = next(iter(block.items()))
        out.append((str(label), body))
    return out


def _map(body: dict[str, Any], spec: Spec, where: str) -> dict:
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key not in spec:
            kind = "block type" if isinstance(value, list) and _blocks(value) else "argument"
            noun = "Blocks of type" if kind == "block type" else "An argument named"
            raise ParseError(f'Unsupported {kind}; {noun} "{key}" is not expected here ({where}).')
        field, fn = spec[key]
        try:
            out[field] = fn(value)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ParseError):
                raise
            want = {int: "a number", bool: "a bool"}.get(fn, "a value of another type")
            raise ParseError(
                f"Unsuitable value type; Unsuitable value: {want} is required ({where}: {key})"
            ) from exc
    return out


def _one(spec: Spec, where: str) -> Mapper:
    def fn(value: Any) -> Any:
        blocks = _blocks(value)
        return _map(blocks[-1], spec, where) if blocks else None

    return fn


def _many(spec: Spec, where: str) -> Mapper:
    return lambda value: [_map(b, spec, where) for b in _blocks(value)]


def _strmap(value: Any) -> dict[str, str]:
    merged: dict[str, str] = {}
    for block in _blocks(value):
        merged.update({str(k): _str(v) for k, v in block.items()})
    return merged


def _str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _config(value: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in _blocks(value):
        merged.update(block)
    return merged


def _constraint(value: Any) -> list[dict[str, Any]]:
    out = []
    for b in _blocks(value):
        c = {
            "LTarget": _str(b.get("attribute", "")),
            "RTarget": _str(b.get("value", "")),
            "Operand": _str(b.get("operator", "=")),
        }
        for shorthand in (
            "distinct_hosts",
            "distinct_property",
            "regexp",
            "version",
            "semver",
            "set_contains",
            "set_contains_all",
            "set_contains_any",
        ):
            if shorthand in b:
                c["Operand"] = shorthand
                if shorthand == "distinct_property":
                    c["LTarget"] = _str(b[shorthand])
                elif shorthand != "distinct_hosts":
                    c["RTarget"] = _str(b[shorthand])
                else:
                    c["RTarget"] = _str(b[shorthand]).lower()
        unknown = (
            set(b)
            - {"attribute", "value", "operator", *c.values()}
            - {
                "distinct_hosts",
                "distinct_property",
                "regexp",
                "version",
                "semver",
                "set_contains",
                "set_contains_all",
                "set_contains_any",
            }
        )
        if unknown:
            raise ParseError(
                f'Unsupported argument; An argument named "{sorted(unknown)[0]}" is not '
                "expected here (constraint)."
            )
        out.append(c)
    return out


def _network(value: Any) -> list[dict[str, Any]]:
    out = []
    for b in _blocks(value):
        net: dict[str, Any] = {}
        for key, v in b.items():
            if key == "mode":
                net["Mode"] = _str(v)
            elif key == "mbits":
                net["MBits"] = int(v)
            elif key == "hostname":
                net["Hostname"] = _str(v)
            elif key == "dns":
                net["DNS"] = _one(
                    {
                        "servers": ("Servers", _same),
                        "searches": ("Searches", _same),
                        "options": ("Options", _same),
                    },
                    "dns",
                )(v)
            elif key == "port":
                for label, port in _labelled(v, "port"):
                    entry = {"Label": label}
                    entry.update(
                        _map(
                            port,
                            {
                                "static": ("Value", int),
                                "to": ("To", int),
                                "host_network": ("HostNetwork", _str),
                            },
                            f'port "{label}"',
                        )
                    )
                    kind = "ReservedPorts" if "Value" in entry else "DynamicPorts"
                    net.setdefault(kind, []).append(entry)
            else:
                raise ParseError(
                    f'Unsupported argument; An argument named "{key}" is not expected here '
                    "(network)."
                )
        out.append(net)
    return out


_CHECK = {
    "name": ("Name", _str),
    "type": ("Type", _str),
    "path": ("Path", _str),
    "protocol": ("Protocol", _str),
    "port": ("PortLabel", _str),
    "interval": ("Interval", _duration),
    "timeout": ("Timeout", _duration),
    "method": ("Method", _str),
    "initial_status": ("InitialStatus", _str),
    "address_mode": ("AddressMode", _str),
    "header": ("Header", lambda v: {k: list(x) for b in _blocks(v) for k, x in b.items()}),
    "tls_skip_verify": ("TLSSkipVerify", bool),
    "command": ("Command", _str),
    "args": ("Args", _same),
    "task": ("TaskName", _str),
    "grpc_service": ("GRPCService", _str),
    "grpc_use_tls": ("GRPCUseTLS", bool),
    "success_before_passing": ("SuccessBeforePassing", int),
    "failures_before_critical": ("FailuresBeforeCritical", int),
    "body": ("Body", _str),
}
_SERVICE = {
    "name": ("Name", _str),
    "port": ("PortLabel", _str),
    "tags": ("Tags", _same),
    "canary_tags": ("CanaryTags", _same),
    "address_mode": ("AddressMode", _str),
    "address": ("Address", _str),
    "provider": ("Provider", _str),
    "meta": ("Meta", _strmap),
    "canary_meta": ("CanaryMeta", _strmap),
    "tagged_addresses": ("TaggedAddresses", _strmap),
    "enable_tag_override": ("EnableTagOverride", bool),
    "task": ("TaskName", _str),
    "check": ("Checks", _many(_CHECK, "check")),
}
_RESTART = {
    "attempts": ("Attempts", int),
    "interval": ("Interval", _duration),
    "delay": ("Delay", _duration),
    "mode": ("Mode", _str),
    "render_templates": ("RenderTemplates", bool),
}
_RESCHEDULE = {
    "attempts": ("Attempts", int),
    "interval": ("Interval", _duration),
    "delay": ("Delay", _duration),
    "delay_function": ("DelayFunction", _str),
    "max_delay": ("MaxDelay", _duration),
    "unlimited": ("Unlimited", bool),
}
_UPDATE = {
    "max_parallel": ("MaxParallel", int),
    "health_check": ("HealthCheck", _str),
    "min_healthy_time": ("MinHealthyTime", _duration),
    "healthy_deadline": ("HealthyDeadline", _duration),
    "progress_deadline": ("ProgressDeadline", _duration),
    "auto_revert": ("AutoRevert", bool),
    "auto_promote": ("AutoPromote", bool),
    "canary": ("Canary", int),
    "stagger": ("Stagger", _duration),
}
_RESOURCES = {
    "cpu": ("CPU", int),
    "cores": ("Cores", int),
    "memory": ("MemoryMB", int),
    "memory_max": ("MemoryMaxMB", int),
    "disk": ("DiskMB", int),
    "iops": ("IOPS", int),
    "network": ("Networks", _network),
    "device": ("Devices", _same),
}
_TASK = {
    "driver": ("Driver", _str),
    "user": ("User", _str),
    "config": ("Config", _config),
    "env": ("Env", _strmap),
    "meta": ("Meta", _strmap),
    "resources": ("Resources", _one(_RESOURCES, "resources")),
    "service": ("Services", _many(_SERVICE, "service")),
    "constraint": ("Constraints", _constraint),
    "affinity": ("Affinities", _same),
    "restart": ("RestartPolicy", _one(_RESTART, "restart")),
    "kill_timeout": ("KillTimeout", _duration),
    "kill_signal": ("KillSignal", _str),
    "shutdown_delay": ("ShutdownDelay", _duration),
    "leader": ("Leader", bool),
    "kind": ("Kind", _str),
    "lifecycle": (
        "Lifecycle",
        _one({"hook": ("Hook", _str), "sidecar": ("Sidecar", bool)}, "lifecycle"),
    ),
    "template": (
        "Templates",
        _many(
            {
                "data": ("EmbeddedTmpl", _str),
                "source": ("SourcePath", _str),
                "destination": ("DestPath", _str),
                "change_mode": ("ChangeMode", _str),
                "change_signal": ("ChangeSignal", _str),
                "env": ("Envvars", bool),
                "perms": ("Perms", _str),
                "splay": ("Splay", _duration),
                "left_delimiter": ("LeftDelim", _str),
                "right_delimiter": ("RightDelim", _str),
            },
            "template",
        ),
    ),
    "artifact": (
        "Artifacts",
        _many(
            {
                "source": ("GetterSource", _str),
                "destination": ("RelativeDest", _str),
                "mode": ("GetterMode", _str),
                "options": ("GetterOptions", _strmap),
                "headers": ("GetterHeaders", _strmap),
            },
            "artifact",
        ),
    ),
    "dispatch_payload": ("DispatchPayload", _one({"file": ("File", _str)}, "dispatch_payload")),
    "logs": (
        "LogConfig",
        _one(
            {
                "max_files": ("MaxFiles", int),
                "max_file_size": ("MaxFileSizeMB", int),
                "disabled": ("Disabled", bool),
            },
            "logs",
        ),
    ),
}


def _tasks(value: Any) -> list[dict[str, Any]]:
    return [
        {"Name": name, **_map(body, _TASK, f'task "{name}"')}
        for name, body in _labelled(value, "task")
    ]


_GROUP = {
    "count": ("Count", int),
    "constraint": ("Constraints", _constraint),
    "affinity": ("Affinities", _same),
    "spread": ("Spreads", _same),
    "meta": ("Meta", _strmap),
    "network": ("Networks", _network),
    "service": ("Services", _many(_SERVICE, "service")),
    "restart": ("RestartPolicy", _one(_RESTART, "restart")),
    "reschedule": ("ReschedulePolicy", _one(_RESCHEDULE, "reschedule")),
    "update": ("Update", _one(_UPDATE, "update")),
    "migrate": (
        "Migrate",
        _one(
            {
                "max_parallel": ("MaxParallel", int),
                "health_check": ("HealthCheck", _str),
                "min_healthy_time": ("MinHealthyTime", _duration),
                "healthy_deadline": ("HealthyDeadline", _duration),
            },
            "migrate",
        ),
    ),
    "ephemeral_disk": (
        "EphemeralDisk",
        _one(
            {"size": ("SizeMB", int), "sticky": ("Sticky", bool), "migrate": ("Migrate", bool)},
            "ephemeral_disk",
        ),
    ),
    "shutdown_delay": ("ShutdownDelay", _duration),
    "stop_after_client_disconnect": ("StopAfterClientDisconnect", _duration),
    "max_client_disconnect": ("MaxClientDisconnect", _duration),
    "task": ("Tasks", _tasks),
}


def _groups(value: Any) -> list[dict[str, Any]]:
    return [
        {"Name": name, **_map(body, _GROUP, f'group "{name}"')}
        for name, body in _labelled(value, "group")
    ]


_JOB = {
    "region": ("Region", _str),
    "namespace": ("Namespace", _str),
    "type": ("Type", _str),
    "priority": ("Priority", int),
    "datacenters": ("Datacenters", _same),
    "node_pool": ("NodePool", _str),
    "all_at_once": ("AllAtOnce", bool),
    "name": ("Name", _str),
    "meta": ("Meta", _strmap),
    "constraint": ("Constraints", _constraint),
    "affinity": ("Affinities", _same),
    "spread": ("Spreads", _same),
    "update": ("Update", _one(_UPDATE, "update")),
    "parameterized": (
        "ParameterizedJob",
        _one(
            {
                "payload": ("Payload", _str),
                "meta_required": ("MetaRequired", _same),
                "meta_optional": ("MetaOptional", _same),
            },
            "parameterized",
        ),
    ),
    "periodic": (
        "Periodic",
        _one(
            {
                "cron": ("Spec", _str),
                "crons": ("Specs", _same),
                "prohibit_overlap": ("ProhibitOverlap", bool),
                "time_zone": ("TimeZone", _str),
                "enabled": ("Enabled", bool),
            },
            "periodic",
        ),
    ),
    "group": ("TaskGroups", _groups),
}


def _loads(text: str, what: str) -> dict[str, Any]:
    try:
        tree = hcl2.loads(text, serialization_options=_OPTIONS)
    except Exception as exc:  # python-hcl2 raises lark errors of several kinds
        line, col = getattr(exc, "line", None), getattr(exc, "column", None)
        first = (str(exc).strip().splitlines() or ["invalid syntax"])[0]
        first = re.sub(r"\s*at line \d+, column \d+\.?$", "", first)
        where = f"input.hcl:{line},{col}-{col + 1}: " if line and col else ""
        raise ParseError(f"{what}: {where}Invalid syntax; {first}.") from exc
    if not isinstance(tree, dict):
        raise ParseError(f"{what}: not an HCL body")
    return tree


def _scope(tree: dict[str, Any], text: str, variables: str) -> Scope:
    """Variables (declared, assigned, defaulted) and locals of a job file, evaluated."""
    assigned: dict[str, Any] = {}
    if variables.strip():
        assigned = _loads(variables, "unable to parse var content")
        blocks = sorted(k for k, v in assigned.items() if isinstance(v, list) and _blocks(v))
        if "variable" in blocks:
            raise ParseError(
                "Variable declaration in a .var file; A .var file is used to assign values to "
                "variables that have already been declared in job files, not to declare new "
                "variables."
            )
    decls = declared_variables(tree, text)
    scope = Scope(text, variable_values(decls, assigned))
    local_blocks = tree.get("locals", [])
    for block in _blocks(local_blocks):
        for name, expr in block.items():
            if name in scope.local_exprs:
                raise ParseError(f"Duplicate value in locals; Duplicate {name} definition found.")
            scope.local_exprs[name] = expr
    for name in scope.local_exprs:
        scope.root("local", name)
    return scope


def parse_job_hcl(text: str, variables: str = "") -> dict[str, Any]:
    """The API ``Job`` object of a job file; :class:`ParseError` on bad input.

    ``variables`` is the text of a var file (``name = value`` lines), as the API's
    ``Variables`` field carries it.
    """
    tree = _loads(text, "failed to parse the job file")
    try:
        scope = _scope(tree, text, variables)
        tree["job"] = resolve(tree.get("job", []), scope)
    except ExprError as exc:
        raise ParseError(str(exc)) from exc
    jobs = _labelled(tree.get("job", []), "job")
    other = sorted(k for k in tree if k not in ("job", "variable", "variables", "locals"))
    if other:
        raise ParseError(
            f'Unsupported block type; Blocks of type "{other[0]}" are not expected here.'
        )
    if len(jobs) != 1:
        raise ParseError(
            "Missing job block; A job block is required"
            if not jobs
            else 'Duplicate job block; Only one block of type "job" is allowed.'
        )
    name, body = jobs[0]
    job = {"ID": name, "Name": name, **_map(body, _JOB, f'job "{name}"')}
    if job.get("Periodic") and job["Periodic"].get("Spec"):
        job["Periodic"]["SpecType"] = "cron"
    return job
