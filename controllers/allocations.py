"""allocations: the passing Consul services of each user -> ``manticore/allocations/data/<id>``.

Nomad registers every port of a user's allocation as a Consul service
``core-hmi-<id>-<role>`` (service meta ``manticore_user``, ``manticore_role``,
``manticore_route``; each with a health check). This controller turns them into one
:class:`~controllers.api.allocations.UserAllocation` per user: where each role listens, how it is
routed, and which allocation and node it runs on. haproxy-kv routes from that record.

**The rule for partially passing services.** Instances are grouped by Nomad allocation (the
allocation id comes from the Nomad service id ``_nomad-task-<alloc>-...``, or the service meta
``manticore_alloc_id``). A record is written only when one allocation of the user has the
required roles (``hmi``, ``broker``, ``core``: the job template guarantees them) registered and
*every* registered service of that allocation passes (a ``warning`` does not pass, as with
Consul's ``?passing``); it lists exactly those services, extra roles (``route=none``) included.
Nomad registers a group's services one by one, so requiring the three roles keeps a half
registered allocation from being published and then rewritten. The record is deleted as soon as
one of its services is critical, warning or deregistered and no other allocation of the user
qualifies, or when the user's request is gone. When two allocations of one user qualify (a
replacement starting before the old one stopped), the one already recorded is kept, so routes do
not flap; otherwise the one with more services, then the greater allocation id, wins.

**Rogue services.** Only users with a request (``manticore/requests/data/<id>``) get a record; a
service whose user has none is ignored. An instance whose meta and name disagree, whose role or
route is unknown, whose address is not an IP address, or whose allocation cannot be told, is
reported (log line, ``manticore_allocation_instances_rejected_total{reason}``, a status entry
under ``reconciler/status/allocations/<id>``) and left out; it never touches another user.

**Connections.** One pattern health watch over ``core-hmi-.*`` (the framework holds a bounded
number of Consul connections for it whatever the number of users) plus two KV prefix watches;
the watch of this controller's own records re-reads its prefix at most every 2 s (each write
would otherwise re-read all of them).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from controllers.api.allocations import ServiceAddress, UserAllocation
from controllers.api.haproxy import ROLE_PATTERN
from controllers.api.ids import (
    ALLOCATIONS_PREFIX,
    JOB_PREFIX,
    REQUESTS_PREFIX,
    is_user_id,
    job_id,
    user_of_key,
)
from controllers.api.requests import UserRequest
from reconciler import watches
from reconciler.clients.consul import KVEntry, ServiceInstance
from reconciler.controller import Context, Controller
from reconciler.result import Result

NAME = "allocations"
SERVICE_PATTERN = r"core-hmi-.*"
HEALTH_WATCH = f"health:/{SERVICE_PATTERN}/"
REQUESTS_WATCH = f"kv:{REQUESTS_PREFIX}"
ALLOCATIONS_WATCH = f"kv:{ALLOCATIONS_PREFIX}"
STATS_KEY = "_stats"
STATS_EVERY = 15.0

META_USER = "manticore_user"
META_ROLE = "manticore_role"
META_ROUTE = "manticore_route"
META_ALLOC = "manticore_alloc_id"
ROUTES = ("http", "tcp", "none")
REQUIRED_ROLES = frozenset({"hmi", "broker", "core"})
_ROLE = re.compile(ROLE_PATTERN)
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_NOMAD_SERVICE_ID = re.compile(rf"^_nomad-task-({_UUID})-")
_ALLOC_ID = re.compile(rf"^{_UUID}$")

USERS_RUNNING = Gauge(
    "manticore_users_running",
    "Users whose core + HMI allocation is published (manticore/allocations/data)",
)
INSTANCES_REJECTED = Counter(
    "manticore_allocation_instances_rejected_total",
    "Service instances of core-hmi-* left out of allocation records, by reason",
    ["reason"],
)
REJECT_REASONS = ("meta", "role", "route", "address", "allocation", "duplicate-role")
for _reason in REJECT_REASONS:
    INSTANCES_REJECTED.labels(reason=_reason)


# --------------------------------------------------------------------------- the pure part


def user_of_instance(instance: ServiceInstance) -> str | None:
    """The user an instance belongs to: its ``manticore_user`` meta, when its name agrees.

    The service name cannot be split reliably (ids and roles both contain hyphens), so the meta
    is the authority and the name only confirms it.
    """
    user = instance.meta.get(META_USER, "")
    if is_user_id(user) and instance.service.startswith(f"{job_id(user)}-"):
        return user
    return None


def allocation_of(instance: ServiceInstance) -> str | None:
    """The Nomad allocation id of an instance: from Nomad's service id, else from its meta."""
    match = _NOMAD_SERVICE_ID.match(instance.service_id)
    if match:
        return match.group(1)
    meta = instance.meta.get(META_ALLOC, "")
    return meta if _ALLOC_ID.fullmatch(meta) else None


@dataclass(frozen=True)
class Rejected:
    """An instance left out of the user's record, and why (``reason`` is a metric label)."""

    service_id: str
    reason: str
    detail: str


@dataclass(frozen=True)
class _Usable:
    allocation: str
    role: str
    node: str
    address: ServiceAddress
    passing: bool
    service_id: str


def _usable(user: str, instance: ServiceInstance) -> _Usable | Rejected:
    sid = instance.service_id
    if user_of_instance(instance) != user:
        return Rejected(sid, "meta", f"service {instance.service!r} is not tagged for {user!r}")
    role = instance.meta.get(META_ROLE, "")
    if not _ROLE.fullmatch(role) or instance.service != f"{job_id(user)}-{role}":
        return Rejected(
            sid, "role", f"service {instance.service!r} has role {role!r}, not its name's"
        )
    route = instance.meta.get(META_ROUTE, "")
    if route not in ROUTES:
        return Rejected(sid, "route", f"service {instance.service!r} has route {route!r}")
    try:
        address = str(ipaddress.ip_address(instance.address))
    except ValueError:
        return Rejected(sid, "address", f"service {instance.service!r}: {instance.address!r}")
    if not 1 <= instance.port <= 65535:
        return Rejected(sid, "address", f"service {instance.service!r}: port {instance.port}")
    allocation = allocation_of(instance)
    if allocation is None:
        return Rejected(sid, "allocation", f"service id {sid!r} names no Nomad allocation")
    return _Usable(
        allocation=allocation,
        role=role,
        node=instance.node,
        address=ServiceAddress(address=address, port=instance.port, route=route),  # type: ignore[arg-type]
        passing=instance.passing,
        service_id=sid,
    )


@dataclass(frozen=True)
class AllocationPlan:
    """What the user's record should be (None: no record), and what was left out."""

    desired: UserAllocation | None
    rejected: tuple[Rejected, ...] = ()


def plan_allocation(
    user: str,
    instances: Iterable[ServiceInstance],
    *,
    requested: bool,
    current: UserAllocation | None = None,
    required_roles: frozenset[str] = REQUIRED_ROLES,
) -> AllocationPlan:
    """The user's allocation record from the instances of their services (pure)."""
    rejected: list[Rejected] = []
    by_alloc: dict[str, list[_Usable]] = {}
    for instance in sorted(instances, key=lambda i: (i.node, i.service_id)):
        usable = _usable(user, instance)
        if isinstance(usable, Rejected):
            rejected.append(usable)
        else:
            by_alloc.setdefault(usable.allocation, []).append(usable)
    if not requested:
        return AllocationPlan(None, tuple(rejected))
    candidates: dict[str, UserAllocation] = {}
    for alloc, members in by_alloc.items():
        roles = [m.role for m in members]
        duplicated = {r for r in roles if roles.count(r) > 1}
        if duplicated:
            rejected.extend(
                Rejected(m.service_id, "duplicate-role", f"role {m.role!r} twice in {alloc}")
                for m in members
                if m.role in duplicated
            )
            continue
        if not required_roles <= set(roles) or not all(m.passing for m in members):
            continue
        candidates[alloc] = UserAllocation(
            services={m.role: m.address for m in members},
            job=job_id(user),
            allocation=alloc,
            node=members[0].node,
        )
    if not candidates:
        return AllocationPlan(None, tuple(rejected))
    if current is not None and current.allocation in candidates:
        chosen = candidates[current.allocation]
    else:
        chosen = max(candidates.values(), key=lambda a: (len(a.services), a.allocation))
    return AllocationPlan(chosen, tuple(rejected))


def users_of_instance(instance: ServiceInstance) -> list[str]:
    """The user of an instance: the health watch's work key, and its ``user`` index."""
    user = user_of_instance(instance)
    return [user] if user is not None else []


# --------------------------------------------------------------------------- the reconcile


def _user_key(prefix: str) -> Any:
    def mapper(entry: KVEntry) -> list[str]:
        user = user_of_key(prefix, entry.key)
        return [user] if user is not None else []

    return mapper


async def reconcile(ctx: Context, key: str) -> Result | None:
    if key == STATS_KEY:
        USERS_RUNNING.set(
            sum(1 for k in ctx.cache(ALLOCATIONS_WATCH) if user_of_key(ALLOCATIONS_PREFIX, k))
        )
        return None
    user = key
    if not is_user_id(user):
        return None
    out_key = f"{ALLOCATIONS_PREFIX}{user}"
    request_key = f"{REQUESTS_PREFIX}{user}"
    request_entry = ctx.cache(REQUESTS_WATCH).get(request_key)
    instances = ctx.index(HEALTH_WATCH, "user", user)
    if request_entry is None and instances:
        # The requests watch re-reads at most every 2 s: services that pass before it shows a
        # new request are not held back until then, one read of the key tells.
        request_entry = await ctx.kv.get(request_key)
    # A request that fails validation is the intake API's problem, reported there; it still
    # says that the user asked for a pair.
    requested = request_entry is not None
    # The record as last seen, only to keep the chosen allocation (the writes below read and
    # compare-and-set afresh): a stale view costs at most one rewrite, never a wrong record.
    current_entry = ctx.cache(ALLOCATIONS_WATCH).get(out_key)
    current = (
        ctx.parse(UserAllocation, current_entry, key=out_key) if current_entry is not None else None
    )
    plan = plan_allocation(user, instances, requested=requested, current=current)
    for rejected in plan.rejected:
        INSTANCES_REJECTED.labels(reason=rejected.reason).inc()
        ctx.log.warning("service instance left out", reason=rejected.reason, detail=rejected.detail)
    # The watch of this prefix maps every change of the record back to this user, so what it
    # shows spares the read: a converged user (every resync) costs no request; a view up to
    # 2 s behind costs one failed CAS and a read, or one more reconcile when the watch shows it.
    if plan.desired is None:
        if await ctx.kv.delete_if_present(out_key, seen=current_entry):
            ctx.log.info("allocation removed", requested=requested)
    elif await ctx.kv.put_if_changed(out_key, plan.desired, seen=current_entry):
        ctx.log.info(
            "allocation published",
            allocation=plan.desired.allocation,
            roles=sorted(plan.desired.services),
        )
    if plan.rejected:
        ctx.status.set(
            "Degraded",
            "; ".join(r.detail for r in plan.rejected[:5]),
            observed_index=request_entry.modify_index if request_entry else None,
        )
    return None


controller = Controller(
    name=NAME,
    description="passing core-hmi-<id>-<role> services -> manticore/allocations/data/<id>",
    reconcile=reconcile,
    watches=[
        watches.service_health(
            pattern=SERVICE_PATTERN,
            to_keys=users_of_instance,
            # A reconcile finds its user's instances without scanning every user's.
            indexes={"user": users_of_instance},
            # Only the users' checks travel on the health long poll, not the datacenter's.
            server_filter=f'ServiceName matches "^{JOB_PREFIX}"',
            # New services are read one request each, a few at a time: the short-request pool
            # (6 connections) also carries this controller's writes and session renewals.
            read_concurrency=3,
            # Both long polls answer with every user's checks or services: under churn (every
            # arrival and departure changes them) at most 4 answers a second, each covering
            # every change since the last; a lone change still returns at once.
            rate=4.0,
            burst=4,
        ),
        # Requests only gate: a record is written once the user's services pass, seconds after
        # the request, so this busy prefix re-reads at most every 2 s.
        watches.kv(REQUESTS_PREFIX, to_keys=_user_key(REQUESTS_PREFIX), **watches.LAZY_PREFIX),
        # This controller's own output: every write of it wakes this watch, which re-reads the
        # whole prefix (10,000 entries at 10,000 users), so it re-reads at most every 2 s
        # (``watches.LAZY_PREFIX``).
        # Nothing waits on it: it only keeps the chosen allocation, and every write reads afresh.
        watches.kv(
            ALLOCATIONS_PREFIX,
            to_keys=_user_key(ALLOCATIONS_PREFIX),
            **watches.LAZY_PREFIX,
        ),
        watches.periodic([STATS_KEY], every=STATS_EVERY),
    ],
    writes=[f"{ALLOCATIONS_PREFIX}<id>"],
    models={"manticore-allocation": UserAllocation, "manticore-request": UserRequest},
    workers=4,
    resync_period=60,
    status=True,
)
