"""The job template: the Nomad job every claimed user gets, as a file users can replace.

A template is Nomad's JSON job format (``{"Job": {...}}`` or the bare job object), with
placeholders in string values:

====================  =====================================================================
placeholder           value
====================  =====================================================================
``{{user}}``          the user id
``{{job_id}}``        ``core-hmi-<id>`` (the job's ``ID`` must be exactly this)
``{{core_version}}``  the request's ``core.version``, else ``MANTICORE_DEFAULT_CORE_VERSION``
``{{core_build}}``    the request's ``core.build``, else ``MANTICORE_DEFAULT_CORE_BUILD``
``{{hmi_type}}``      the request's ``hmi.type``, else ``MANTICORE_DEFAULT_HMI_TYPE``
``{{hmi_version}}``   the request's ``hmi.version``, else ``MANTICORE_DEFAULT_HMI_VERSION``
``{{domain}}``        ``DOMAIN_NAME``
``{{datacenters}}``   ``MANTICORE_DATACENTERS``; a string that is only this becomes the list
``{{var.<name>}}``    ``<name>`` of ``MANTICORE_JOB_VARS`` (``name=value,...``)
====================  =====================================================================

Placeholders are replaced inside JSON strings after parsing, so a value can never break the
JSON or add a field; Nomad's own ``${NOMAD_ADDR_core}`` runtime variables pass through
untouched (that is how the HMI finds its core inside the one task group).

A template is checked once, when a controller starts (:meth:`JobTemplate.load`), by rendering
it for a sample user: unknown placeholders, a job ``ID`` other than ``{{job_id}}``, anything but
one task group, and services that break the naming contract the other controllers rely on are
clear errors, never a reconcile-time surprise. The contract for every service:
``Name = "core-hmi-{{user}}-<role>"``, ``Meta`` ``manticore_user``/``manticore_role``/
``manticore_route`` (``http``, ``tcp`` or ``none``), tags ``["manticore", "route-<kind>"]``,
and a health check (``http`` for an http route, ``tcp`` for a tcp route); the roles ``hmi``
(http), ``broker`` (http) and ``core`` (tcp) must be there.

Both shipped templates set ``"Update": {"MaxParallel": 0}``: a user's job has one allocation,
so a deployment (rolling update, health gate, progress deadline) buys nothing, and thousands of
them are bookkeeping Nomad need not do; a changed job simply replaces its allocation.

The waitlist reads the same template for one number: the resources one user's group asks
Nomad for (:attr:`JobTemplate.resources`), so capacity is counted against what the jobs
controller really submits.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources as package_files
from pathlib import Path
from typing import Any

from controllers.api.ids import JOB_PREFIX, job_id
from controllers.api.requests import UserRequest
from controllers.settings import Settings
from reconciler.clients.errors import ConfigError

OWNER_META = "manticore_owner"
OWNER = "manticore-reconciler"
USER_META = "manticore_user"
TEMPLATE_META = "manticore_template"
ROLE_META = "manticore_role"
ROUTE_META = "manticore_route"

REQUIRED_ROLES: dict[str, str] = {"hmi": "http", "broker": "http", "core": "tcp"}
ROUTE_CHECK: dict[str, str] = {"http": "http", "tcp": "tcp"}
# Consul and Nomad service names are DNS labels.
MAX_SERVICE_NAME = 63

# Nomad's defaults for what a template leaves out (api.Job.Canonicalize).
DEFAULT_TASK_CPU = 100
DEFAULT_TASK_MEMORY_MB = 300
DEFAULT_DISK_MB = 300

BUILTIN_DOCKER = "core-hmi.docker.json"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
_SAMPLE_USER = "template-check"


class TemplateError(ConfigError):
    """The job template cannot be used; the message says where and why."""


@dataclass(frozen=True)
class UserResources:
    """What one user's task group asks Nomad for (summed over its tasks)."""

    cpu: int
    memory_mb: int
    disk_mb: int


@dataclass(frozen=True)
class TemplateValues:
    """Everything a placeholder can stand for, for one user."""

    user: str
    core_version: str
    core_build: str
    hmi_type: str
    hmi_version: str
    domain: str
    datacenters: tuple[str, ...]
    variables: Mapping[str, str] = field(default_factory=dict)

    def lookup(self, name: str) -> str | list[str]:
        fixed: dict[str, str | list[str]] = {
            "user": self.user,
            "job_id": job_id(self.user),
            "core_version": self.core_version,
            "core_build": self.core_build,
            "hmi_type": self.hmi_type,
            "hmi_version": self.hmi_version,
            "domain": self.domain,
            "datacenters": list(self.datacenters),
        }
        if name in fixed:
            return fixed[name]
        if name.startswith("var."):
            var = name[4:]
            if var in self.variables:
                return self.variables[var]
            raise TemplateError(
                f"placeholder {{{{{name}}}}}: {var!r} is not set in MANTICORE_JOB_VARS"
            )
        raise TemplateError(f"unknown placeholder {{{{{name}}}}}")


def _substitute(value: Any, values: TemplateValues, where: str) -> Any:
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value.strip())
        if whole is not None:
            return values.lookup(whole.group(1))

        def one(match: re.Match[str]) -> str:
            got = values.lookup(match.group(1))
            if not isinstance(got, str):
                raise TemplateError(
                    f"{where}: {{{{{match.group(1)}}}}} is a list; it must be the whole string"
                )
            return got

        return _PLACEHOLDER.sub(one, value)
    if isinstance(value, list):
        return [_substitute(v, values, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, values, f"{where}.{k}") for k, v in value.items()}
    return value


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def spec_hash(job: Mapping[str, Any]) -> str:
    """The ``manticore_template`` value: a hash of the rendered job without that meta key."""
    body = dict(job)
    meta = {k: v for k, v in (body.get("Meta") or {}).items() if k != TEMPLATE_META}
    body["Meta"] = meta
    return hashlib.sha256(canonical_json(body)).hexdigest()[:20]


@dataclass(frozen=True)
class JobTemplate:
    """A parsed, checked job template."""

    source: str
    job: Mapping[str, Any]
    resources: UserResources
    roles: Mapping[str, str]
    digest: str

    @property
    def max_user_id_length(self) -> int:
        """The longest user id whose service names still fit in 63 characters."""
        longest = max(len(role) for role in self.roles)
        return MAX_SERVICE_NAME - len(JOB_PREFIX) - 1 - longest

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        *,
        variables: Mapping[str, str] | None = None,
        sample: TemplateValues | None = None,
    ) -> JobTemplate:
        """Read and check a template file (``None``: the production docker template)."""
        if path is None:
            source = f"builtin:{BUILTIN_DOCKER}"
            text = package_files.files(__name__).joinpath(BUILTIN_DOCKER).read_text()
        else:
            source = str(path)
            try:
                text = path.read_text()
            except OSError as exc:
                raise TemplateError(
                    f"MANTICORE_JOB_TEMPLATE {source}: cannot read: {exc.strerror or exc}"
                ) from exc
        return cls.parse(text, source=source, variables=variables, sample=sample)

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        source: str = "<template>",
        variables: Mapping[str, str] | None = None,
        sample: TemplateValues | None = None,
    ) -> JobTemplate:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise TemplateError(f"job template {source}: not JSON: {exc}") from exc
        if isinstance(raw, dict) and set(raw) == {"Job"}:
            raw = raw["Job"]
        if not isinstance(raw, dict) or not isinstance(raw.get("TaskGroups"), list):
            raise TemplateError(
                f"job template {source}: expected Nomad's JSON job format, "
                '{"Job": {..., "TaskGroups": [...]}}'
            )
        probe = sample or TemplateValues(
            user=_SAMPLE_USER,
            core_version="0",
            core_build="default",
            hmi_type="generic",
            hmi_version="0",
            domain="example.com",
            datacenters=("dc1",),
            variables=dict(variables or {}),
        )
        try:
            rendered = _substitute(raw, probe, "Job")
        except TemplateError as exc:
            raise TemplateError(f"job template {source}: {exc}") from exc
        try:
            roles = _check(rendered, probe.user)
            resources = _resources(rendered)
        except TemplateError as exc:
            raise TemplateError(f"job template {source}: {exc}") from exc
        digest = hashlib.sha256(canonical_json(raw)).hexdigest()[:20]
        return cls(source=source, job=raw, resources=resources, roles=roles, digest=digest)

    def render(self, values: TemplateValues) -> dict[str, Any]:
        """The job for one user, with the ownership, user and template-hash meta set."""
        job: dict[str, Any] = _substitute(copy.deepcopy(dict(self.job)), values, "Job")
        meta = dict(job.get("Meta") or {})
        meta[OWNER_META] = OWNER
        meta[USER_META] = values.user
        meta.pop(TEMPLATE_META, None)
        job["Meta"] = meta
        meta[TEMPLATE_META] = spec_hash(job)
        return job


def _services(group: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    found = [("group", s) for s in group.get("Services") or []]
    for task in group.get("Tasks") or []:
        found.extend((f"task {task.get('Name')}", s) for s in task.get("Services") or [])
    return found


def _check(job: Mapping[str, Any], user: str) -> dict[str, str]:
    if job.get("ID") != job_id(user):
        raise TemplateError('"ID" must be "{{job_id}}" (core-hmi-<id>)')
    if job.get("Name", job["ID"]) != job["ID"]:
        raise TemplateError('"Name" must be "{{job_id}}" too, or left out')
    groups = job["TaskGroups"]
    if len(groups) != 1:
        raise TemplateError(
            f"expected exactly one task group (core and HMI share it), found {len(groups)}"
        )
    group = groups[0]
    tasks = group.get("Tasks") or []
    if not tasks:
        raise TemplateError("the task group has no tasks")
    for task in tasks:
        if not task.get("Driver"):
            raise TemplateError(f"task {task.get('Name')!r} has no Driver")
    if int(group.get("Count", 1)) != 1:
        raise TemplateError('the task group "Count" must be 1 (one pair per user)')
    prefix = f"{job_id(user)}-"
    roles: dict[str, str] = {}
    for where, svc in _services(group):
        name = str(svc.get("Name", ""))
        if not name.startswith(prefix):
            raise TemplateError(
                f'{where} service {name!r}: Name must be "core-hmi-{{{{user}}}}-<role>"'
            )
        role = name[len(prefix) :]
        meta = svc.get("Meta") or {}
        route = meta.get(ROUTE_META)
        expected_meta = {USER_META: user, ROLE_META: role}
        for key, want in expected_meta.items():
            if meta.get(key) != want:
                raise TemplateError(f"{where} service {name}: Meta.{key} must be {want!r}")
        if route not in ("http", "tcp", "none"):
            raise TemplateError(f"{where} service {name}: Meta.{ROUTE_META} must be http|tcp|none")
        tags = list(svc.get("Tags") or [])
        for tag in ("manticore", f"route-{route}"):
            if tag not in tags:
                raise TemplateError(f"{where} service {name}: Tags must include {tag!r}")
        checks = [str(c.get("Type", "")).lower() for c in svc.get("Checks") or []]
        if not checks:
            raise TemplateError(f"{where} service {name}: needs a health check")
        wanted = ROUTE_CHECK.get(route)
        if wanted is not None and wanted not in checks:
            raise TemplateError(f"{where} service {name}: a {route} route needs a {wanted} check")
        if role in roles:
            raise TemplateError(f"role {role!r} is defined twice")
        roles[role] = route
    for role, route in REQUIRED_ROLES.items():
        if roles.get(role) != route:
            raise TemplateError(f"missing service role {role!r} with route {route!r}")
    return roles


def _resources(job: Mapping[str, Any]) -> UserResources:
    group = job["TaskGroups"][0]
    cpu = memory = 0
    for task in group.get("Tasks") or []:
        res = task.get("Resources") or {}
        cpu += int(res.get("CPU") or DEFAULT_TASK_CPU)
        memory += int(res.get("MemoryMB") or DEFAULT_TASK_MEMORY_MB)
    disk = int((group.get("EphemeralDisk") or {}).get("SizeMB") or DEFAULT_DISK_MB)
    if cpu <= 0 or memory <= 0:
        raise TemplateError("task resources must be positive")
    return UserResources(cpu=cpu, memory_mb=memory, disk_mb=disk)


class NotOffered(ValueError):
    """A request asks for a version or type the configuration does not offer."""


def values_for(user: str, request: UserRequest, settings: Settings) -> TemplateValues:
    """A user's placeholder values: the request's choices, else the configured defaults.

    A choice outside the offered lists
    (``MANTICORE_CORE_VERSIONS``...) raises :class:`NotOffered`: a request picks from the
    images the operator publishes, never an arbitrary tag.
    """
    jobs = settings.jobs
    core = request.core
    hmi = request.hmi
    chosen = {
        "core_version": (core.version if core else None) or jobs.core_version,
        "core_build": (core.build if core else None) or jobs.core_build,
        "hmi_type": (hmi.type if hmi else None) or jobs.hmi_type,
        "hmi_version": (hmi.version if hmi else None) or jobs.hmi_version,
    }
    offered = {
        "core_version": ("core.version", "MANTICORE_CORE_VERSIONS", jobs.core_versions),
        "core_build": ("core.build", "MANTICORE_CORE_BUILDS", jobs.core_builds),
        "hmi_type": ("hmi.type", "MANTICORE_HMI_TYPES", jobs.hmi_types),
        "hmi_version": ("hmi.version", "MANTICORE_HMI_VERSIONS", jobs.hmi_versions),
    }
    defaults = {
        "core_version": jobs.core_version,
        "core_build": jobs.core_build,
        "hmi_type": jobs.hmi_type,
        "hmi_version": jobs.hmi_version,
    }
    for name, value in chosen.items():
        field_name, variable, allowed = offered[name]
        if value != defaults[name] and value not in allowed:
            raise NotOffered(
                f"{field_name} {value!r} is not offered ({variable}: {', '.join(allowed)})"
            )
    return TemplateValues(
        user=user,
        domain=settings.haproxy.domain_name,
        datacenters=tuple(jobs.datacenters),
        variables=jobs.variables,
        **chosen,
    )
