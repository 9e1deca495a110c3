"""Declaring what a controller watches, in one line each.

    watches=[
        watches.kv("manticore/requests/data/"),                  # keys: the <id> after the prefix
        watches.service_health(pattern=r"core-hmi-.*", to_keys=lambda i: [i.meta["user"]]),
        watches.nomad("allocations", job_prefix="core-hmi-", to_keys=lambda a: [a.job_id]),
        watches.nomad("nodes", to_keys=constant_key("capacity")),
        watches.periodic(["capacity"], every=30),
    ]

Each helper returns a :class:`~reconciler.controller.Watch`: a name, a factory that builds the
live source once the manager has clients, optional secondary indexes of its cache
(``indexes={"user": fn}``, read with ``ctx.index(watch, "user", value)``), the mapping from a
changed item (the object itself:
a ``KVEntry``, a ``ServiceInstance``, an ``Allocation``, a ``JobStub``, a ``Node``; for a
deletion the last one seen) to work-queue keys, and a description for ``reconciler list``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from reconciler.clients.consul import ServiceInstance
from reconciler.controller import (
    Dependencies,
    KeyMapper,
    Watch,
    identity_key,
    strip_prefix,
)
from reconciler.index import IndexFn
from reconciler.sources.base import Source
from reconciler.sources.health import ServiceHealthSource
from reconciler.sources.kv import KVSource
from reconciler.sources.nomad import Kind, NomadSource
from reconciler.sources.periodic import KeysFn, PeriodicSource


def service_name(instance: ServiceInstance) -> Iterable[str]:
    """The default key of a health watch: the instance's service name."""
    return (instance.service,)


# Options for a busy prefix watch nobody waits on: each write under a prefix wakes its watch,
# and each wake re-reads the whole prefix (Consul has no delta), so a watch of a prefix with
# many writers' (or the controller's own) writes, whose readers can be behind (every write made
# from it is a CAS that tells when it is), re-reads it at most every 2 s:
# ``watches.kv(prefix, ..., **watches.LAZY_PREFIX)``.
LAZY_PREFIX: Mapping[str, Any] = MappingProxyType({"rate": 0.5, "burst": 1})


def kv(
    key_or_prefix: str,
    *,
    to_keys: KeyMapper | None = None,
    name: str | None = None,
    indexes: Mapping[str, IndexFn] | None = None,
    **options: Any,
) -> Watch:
    """A Consul KV prefix (ending in ``/``) or one key.

    For a prefix, the default key of a change is the first path segment after the prefix
    (``prefix/<id>/...`` -> ``<id>``); for one key, the key itself.
    """
    watch_name = name or f"kv:{key_or_prefix}"
    is_prefix = key_or_prefix.endswith("/")
    mapper = to_keys or (strip_prefix(key_or_prefix) if is_prefix else identity_key)

    def build(deps: Dependencies) -> Source:
        return KVSource(deps.consul, key_or_prefix, name=watch_name, **options)

    kind = "prefix" if is_prefix else "key"
    return Watch(
        watch_name, build, mapper, f"consul kv {kind} {key_or_prefix}", dict(indexes or {})
    )


def service_health(
    service: str | None = None,
    *,
    pattern: str | None = None,
    passing_only: bool = False,
    to_keys: KeyMapper = service_name,
    name: str | None = None,
    indexes: Mapping[str, IndexFn] | None = None,
    **options: Any,
) -> Watch:
    """The health of one Consul service, or of every service whose name matches ``pattern``.

    Items are instances (``ServiceInstance``) keyed ``<node>/<service id>``; the default key is
    the instance's service name. A pattern costs two long polls whatever the number of services
    (see :class:`~reconciler.sources.health.ServiceHealthSource`).
    """
    if (service is None) == (pattern is None):
        raise ValueError("give exactly one of service or pattern")
    if pattern is not None:
        re.compile(pattern)
    what = service if service is not None else f"/{pattern}/"
    watch_name = name or f"health:{what}"

    def build(deps: Dependencies) -> Source:
        return ServiceHealthSource(
            deps.consul,
            service=service,
            pattern=pattern,
            passing_only=passing_only,
            name=watch_name,
            **options,
        )

    passing = " (passing only)" if passing_only else ""
    describe = f"consul service health {what}{passing}"
    return Watch(watch_name, build, to_keys, describe, dict(indexes or {}))


def nomad(
    kind: Kind = "jobs",
    *,
    job_prefix: str | None = None,
    to_keys: KeyMapper = identity_key,
    name: str | None = None,
    indexes: Mapping[str, IndexFn] | None = None,
    **options: Any,
) -> Watch:
    """Nomad jobs, allocations or nodes (event stream, with a blocking-query fallback).

    Items are ``JobStub``, ``Allocation`` or ``Node`` objects keyed by id; the default key is
    the id. ``job_prefix`` limits jobs and allocations to jobs whose id starts with it.
    """
    watch_name = name or f"nomad:{kind}" + (f":{job_prefix}" if job_prefix else "")

    def build(deps: Dependencies) -> Source:
        if deps.nomad is None:
            raise ValueError(f"{watch_name}: the controller must declare needs={{'nomad', ...}}")
        return NomadSource(
            deps.nomad,
            kind,
            job_prefix=job_prefix,
            name=watch_name,
            **options,
        )

    scope = f" with prefix {job_prefix}" if job_prefix else ""
    return Watch(watch_name, build, to_keys, f"nomad {kind}{scope}", dict(indexes or {}))


def periodic(
    keys: Iterable[str] | KeysFn,
    *,
    every: float,
    name: str | None = None,
    to_keys: KeyMapper = identity_key,
) -> Watch:
    """A fixed set of keys (or a callable's) every ``every`` seconds: singleton controllers."""
    watch_name = name or f"every:{every:g}s"
    fixed = None if callable(keys) else list(keys)

    def build(deps: Dependencies) -> Source:
        return PeriodicSource(fixed if fixed is not None else keys, every, name=watch_name)

    what = ", ".join(fixed) if fixed is not None else "computed keys"
    return Watch(watch_name, build, to_keys, f"every {every:g}s: {what}")
