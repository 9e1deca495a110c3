"""elb: the TCP ports in ``haproxy/data`` -> Classic ELB listeners, recorded per user.

Every configured load balancer (``ELB_MANTICORE_NAME``, comma-separated) gets the fixed
listeners to HAProxy's main port (HTTP, or HTTPS with ``ELB_ENCRYPT_HTTP``; the websocket port
``ELB_WS_PORT``; ``ELB_SSL_PORT``), and each user's TCP route gets a ``TCP P -> P`` listener
(``SSL`` with ``ELB_ENCRYPT_TCP``) on one of them. The load balancer a user got is recorded in
``manticore/elb/data/<id>`` (:class:`~controllers.api.elb.ListenerRecord`) once the listener
exists.

One work key (``elb``) converges everything, because AWS rewards batching: one
``DescribeLoadBalancers``, then per load balancer at most one ``CreateLoadBalancerListeners``
and one ``DeleteLoadBalancerListeners``, paced (``MANTICORE_ELB_CALLS_PER_SECOND``). The plan is
pure (:func:`plan_listeners`) and follows these rules:

- **Diff against what AWS says**, not against what we remember; a listener that already matches
  is never touched, so no listener is ever deleted and created again to "refresh" it. (One
  whose definition differs on a managed port, a hand edit, is deleted and created on the next
  pass: Classic ELB cannot change a listener in place.)
- **Add before remove**, and **never above the quota** at any moment: creates go first but only
  as many as fit next to the listeners still present; the rest wait for the removals of this
  pass and are created on the next one, a second later.
- **Only managed ports are ours**: the fixed ports and the TCP port range. Anything else on the
  load balancer is left alone and counted against the quota.
- **Users are spread and sticky**: a user stays on the load balancer that has their listener
  (or their record); a new user goes to the one with the most room, in order of arrival
  (``CreateIndex`` of ``haproxy/data/<id>``). Users beyond the total capacity (quota minus fixed
  and foreign listeners, per load balancer) get no listener: a status entry
  (``reconciler/status/elb/<id>``, phase ``OverCapacity``), a log line and
  ``manticore_elb_users_over_capacity`` say so, and they are served in arrival order as room
  frees.
- **Throttling is temporary**: after botocore's own retries, a throttled call ends the pass with
  a growing delay (1 s doubling to 60 s, jittered); the next pass re-reads AWS and goes on from
  where the world is. A quota lower than configured (``TooManyListeners``/``LimitExceeded``
  from AWS) is learned for that load balancer until restart and reported.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
from prometheus_client import Counter, Gauge

from controllers.api.elb import ListenerRecord, UserListener
from controllers.api.haproxy import UserRoutes
from controllers.api.ids import ELB_PREFIX, HAPROXY_DATA_PREFIX, user_of_key
from controllers.settings import ELBSettings, HAProxySettings, Settings
from reconciler import watches
from reconciler.clients.consul import KVEntry, KVOp
from reconciler.clients.elb import Listener, LoadBalancer
from reconciler.clients.errors import (
    ConfigError,
    Conflict,
    NotFound,
    QuotaExceeded,
    Throttled,
)
from reconciler.controller import Context, Controller, Dependencies, constant_key
from reconciler.kv import encode
from reconciler.ratelimit import TokenBucket
from reconciler.result import Result, TemporaryError

NAME = "elb"
KEY = "elb"
ROUTES_WATCH = f"kv:{HAPROXY_DATA_PREFIX}"
RECORDS_WATCH = f"kv:{ELB_PREFIX}"
DRIFT_EVERY = 60.0
NEXT_PASS = 1.0
QUOTA_RETRY = 60.0
MAX_THROTTLE_DELAY = 60.0
RECORD_OPS = 100

LISTENERS = Gauge(
    "manticore_elb_listeners", "Listeners on the load balancer (all kinds)", ["load_balancer"]
)
LISTENER_QUOTA = Gauge(
    "manticore_elb_listener_quota",
    "Listener quota of the load balancer (configured, or lower as learned from AWS)",
    ["load_balancer"],
)
USER_LISTENERS = Gauge(
    "manticore_elb_user_listeners", "Users' TCP listeners on the load balancer", ["load_balancer"]
)
LOAD_BALANCER_UP = Gauge(
    "manticore_elb_load_balancer_up",
    "1 when the configured load balancer was found at the last pass",
    ["load_balancer"],
)
USERS_WITH_LISTENER = Gauge(
    "manticore_elb_users_with_listener", "Users whose TCP listener exists (manticore/elb/data)"
)
USERS_OVER_CAPACITY = Gauge(
    "manticore_elb_users_over_capacity",
    "Users with a TCP route but no listener: every load balancer is at its quota",
)
API_CALLS = Counter(
    "manticore_elb_api_calls_total", "Mutating ELB calls by call and outcome", ["call", "outcome"]
)
for _call in ("CreateLoadBalancerListeners", "DeleteLoadBalancerListeners"):
    for _outcome in ("ok", "throttled", "quota", "error"):
        API_CALLS.labels(call=_call, outcome=_outcome)


# --------------------------------------------------------------------------- the pure part


@dataclass(frozen=True)
class Demand:
    """One user's TCP listeners, and when they arrived (the order capacity is served in)."""

    user: str
    listeners: tuple[UserListener, ...]
    arrival: int = 0


@dataclass(frozen=True)
class Layout:
    """What the configuration asks of every load balancer."""

    fixed: tuple[Listener, ...]
    managed: range
    quota: int
    certificate: str | None = None

    def user_listener(self, lst: UserListener) -> Listener:
        return Listener(
            load_balancer_port=lst.port,
            instance_port=lst.instance_port,
            protocol=lst.protocol,
            instance_protocol="TCP",
            ssl_certificate_id=self.certificate if lst.protocol == "SSL" else None,
        )

    def is_managed(self, port: int) -> bool:
        return port in self.managed or any(f.load_balancer_port == port for f in self.fixed)


@dataclass
class ELBPlan:
    """The changes of one pass, per load balancer, and what they mean for each user."""

    assignments: dict[str, str] = field(default_factory=dict)  # user -> load balancer
    creates: dict[str, list[Listener]] = field(default_factory=dict)
    deletes: dict[str, list[int]] = field(default_factory=dict)
    deferred: dict[str, list[str]] = field(default_factory=dict)  # lb -> users created next pass
    replaced: dict[str, list[int]] = field(default_factory=dict)  # lb -> ports recreated next
    over_capacity: list[str] = field(default_factory=list)
    capacity: dict[str, int] = field(default_factory=dict)  # lb -> user listener slots
    foreign: dict[str, list[int]] = field(default_factory=dict)  # lb -> unmanaged ports
    listeners_after: dict[str, int] = field(default_factory=dict)
    user_listeners_after: dict[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return any(self.creates.values()) or any(self.deletes.values())

    def ready(self, user: str) -> bool:
        """True when the user's listeners exist once this pass is applied."""
        lb = self.assignments.get(user)
        return lb is not None and user not in self.deferred.get(lb, [])


def fixed_listeners(elb: ELBSettings, haproxy: HAProxySettings) -> tuple[Listener, ...]:
    """The listeners every load balancer has besides the users': all to HAProxy's main port."""
    main = haproxy.main_port
    cert = elb.certificate_arn
    out = [
        Listener(elb.https_port, main, "HTTPS", "HTTP", cert)
        if elb.encrypt_http
        else Listener(elb.http_port, main, "HTTP", "HTTP")
    ]
    if elb.ws_port is not None:
        out.append(
            Listener(elb.ws_port, main, "SSL", "TCP", cert)
            if elb.encrypt_ws
            else Listener(elb.ws_port, main, "TCP", "TCP")
        )
    if elb.ssl_port is not None:
        out.append(Listener(elb.ssl_port, main, "SSL", "TCP", cert))
    return tuple(out)


def demand_of(user: str, routes: UserRoutes, arrival: int, *, encrypt: bool) -> Demand:
    return Demand(
        user=user,
        listeners=tuple(
            UserListener(
                role=r.role, port=r.port, instance_port=r.port, protocol="SSL" if encrypt else "TCP"
            )
            for r in sorted(routes.tcp, key=lambda r: r.port)
        ),
        arrival=arrival,
    )


def plan_listeners(
    demands: Iterable[Demand],
    records: Mapping[str, ListenerRecord],
    balancers: Mapping[str, LoadBalancer | None],
    layout: Layout,
    *,
    quotas: Mapping[str, int] | None = None,
) -> ELBPlan:
    """One pass over every load balancer (pure). ``balancers`` is in configuration order; a
    ``None`` value is a configured load balancer AWS does not know (no capacity)."""
    plan = ELBPlan()
    present = {name: lb for name, lb in balancers.items() if lb is not None}
    order = list(present)
    fixed_ports = {f.load_balancer_port for f in layout.fixed}
    actual: dict[str, dict[int, Listener]] = {
        name: {lst.load_balancer_port: lst for lst in lb.listeners} for name, lb in present.items()
    }
    room: dict[str, int] = {}
    for name in order:
        foreign = sorted(p for p in actual[name] if not layout.is_managed(p))
        plan.foreign[name] = foreign
        quota = min(layout.quota, (quotas or {}).get(name, layout.quota))
        room[name] = max(0, quota - len(layout.fixed) - len(foreign))
        plan.capacity[name] = room[name]

    wanted = [d for d in demands if d.listeners]
    wanted.sort(key=lambda d: (d.arrival, d.user))
    unplaced: list[Demand] = []
    for demand in wanted:
        ports = [lst.port for lst in demand.listeners]
        record = records.get(demand.user)
        holding = [n for n in order if any(p in actual[n] for p in ports)]
        candidates = []
        if record is not None and record.load_balancer in holding:
            candidates.append(record.load_balancer)
        candidates += [n for n in holding if n not in candidates]
        if record is not None and record.load_balancer in present:
            candidates.append(record.load_balancer)
        chosen = next((n for n in candidates if room[n] >= len(ports)), None)
        if chosen is None:
            unplaced.append(demand)
            continue
        plan.assignments[demand.user] = chosen
        room[chosen] -= len(ports)
    for demand in unplaced:
        need = len(demand.listeners)
        best = max(order, key=lambda n: (room[n], -order.index(n)), default=None)
        if best is None or room[best] < need:
            plan.over_capacity.append(demand.user)
            continue
        plan.assignments[demand.user] = best
        room[best] -= need

    by_user = {d.user: d for d in wanted}
    for name in order:
        have = actual[name]
        desired: dict[int, tuple[Listener, str | None]] = {
            f.load_balancer_port: (f, None) for f in layout.fixed
        }
        users = sorted(
            (u for u, lb in plan.assignments.items() if lb == name),
            key=lambda u: (by_user[u].arrival, u),
        )
        for user in users:
            for lst in by_user[user].listeners:
                desired[lst.port] = (layout.user_listener(lst), user)
        creates: list[tuple[Listener, str | None]] = []
        deletes: list[int] = []
        replaced: list[int] = []
        for port, (listener, owner) in desired.items():
            current = have.get(port)
            if current is None:
                creates.append((listener, owner))
            elif current != listener:
                replaced.append(port)
                deletes.append(port)
        deletes += sorted(
            p for p in have if layout.is_managed(p) and p not in desired and p not in deletes
        )
        # Add before remove, never above the quota: what does not fit beside the listeners
        # still present waits for this pass's removals. Fixed listeners first, then by arrival.
        quota = min(layout.quota, (quotas or {}).get(name, layout.quota))
        fits = max(0, quota - len(have))
        creates.sort(key=lambda c: (c[1] is not None, by_user[c[1]].arrival if c[1] else 0))
        now, later = creates[:fits], creates[fits:]
        deferred = sorted({owner for _, owner in later if owner is not None})
        # A user is ready only when all their listeners exist after this pass.
        deferred += [
            u for u in users if u not in deferred and any(p in replaced for p in _ports(by_user[u]))
        ]
        plan.creates[name] = sorted((c[0] for c in now), key=lambda lst: lst.load_balancer_port)
        plan.deletes[name] = sorted(deletes)
        plan.deferred[name] = sorted(set(deferred))
        plan.replaced[name] = sorted(replaced)
        after = set(have) | {c[0].load_balancer_port for c in now}
        after -= set(deletes)
        plan.listeners_after[name] = len(after)
        plan.user_listeners_after[name] = sum(
            1 for p in after if p not in fixed_ports and p in layout.managed
        )
    return plan


def _ports(demand: Demand) -> list[int]:
    return [lst.port for lst in demand.listeners]


def desired_records(
    plan: ELBPlan, demands: Mapping[str, Demand], balancers: Mapping[str, LoadBalancer | None]
) -> dict[str, ListenerRecord]:
    out: dict[str, ListenerRecord] = {}
    for user, lb in plan.assignments.items():
        if not plan.ready(user):
            continue
        balancer = balancers.get(lb)
        out[user] = ListenerRecord(
            load_balancer=lb,
            dns_name=balancer.dns_name if balancer is not None else "",
            listeners=list(demands[user].listeners),
        )
    return out


def record_ops(desired: Mapping[str, ListenerRecord], current: Mapping[str, KVEntry]) -> list[KVOp]:
    """Writes making ``manticore/elb/data/`` equal ``desired`` (only what differs)."""
    ops: list[KVOp] = []
    for user, record in sorted(desired.items()):
        key = f"{ELB_PREFIX}{user}"
        value = encode(record)
        entry = current.get(key)
        if entry is None or entry.value != value:
            ops.append(KVOp.set(key, value))
    return ops


def stale_record_ops(desired: Mapping[str, ListenerRecord], current: Iterable[str]) -> list[KVOp]:
    return [
        KVOp.delete(key)
        for key in sorted(current)
        if (user := user_of_key(ELB_PREFIX, key)) is None or user not in desired
    ]


# --------------------------------------------------------------------------- the controller


@dataclass
class ELBController:
    """Configuration (from the environment at start, or given by a test) and pacing state."""

    elb_config: ELBSettings | None = None
    haproxy_config: HAProxySettings | None = None
    learned_quota: dict[str, int] = field(default_factory=dict)
    throttles: int = 0
    _bucket: TokenBucket | None = None

    def configs(self) -> tuple[ELBSettings, HAProxySettings]:
        if self.elb_config is None or self.haproxy_config is None:
            settings = Settings.from_env()
            self.elb_config = self.elb_config or settings.elb
            self.haproxy_config = self.haproxy_config or settings.haproxy
        return self.elb_config, self.haproxy_config

    def layout(self) -> Layout:
        elb, haproxy = self.configs()
        return Layout(
            fixed=fixed_listeners(elb, haproxy),
            managed=haproxy.tcp_port_range,
            quota=elb.listener_quota,
            certificate=elb.certificate_arn,
        )

    async def startup(self, deps: Dependencies) -> None:
        elb, haproxy = self.configs()
        if not elb.enabled:
            raise ConfigError(
                "the elb controller needs ELB_MANTICORE_NAME (one Classic ELB name, or several "
                "separated by commas)"
            )
        inside = [p for p in elb.fixed_ports if p in haproxy.tcp_port_range]
        if inside:
            raise ConfigError(
                f"ELB fixed listener port(s) {inside} lie inside TCP_PORT_RANGE_START.."
                f"TCP_PORT_RANGE_END ({haproxy.tcp_port_range_start}-{haproxy.tcp_port_range_end})"
            )
        if elb.listener_quota <= len(elb.fixed_ports):
            raise ConfigError(
                f"MANTICORE_ELB_LISTENER_QUOTA={elb.listener_quota} leaves no room for users "
                f"beside {len(elb.fixed_ports)} fixed listener(s)"
            )
        for name in elb.load_balancers:
            LISTENER_QUOTA.labels(load_balancer=name).set(elb.listener_quota)
            LOAD_BALANCER_UP.labels(load_balancer=name)
            LISTENERS.labels(load_balancer=name)
            USER_LISTENERS.labels(load_balancer=name)

    async def _pace(self) -> None:
        elb, _ = self.configs()
        if self._bucket is None:
            self._bucket = TokenBucket(rate=elb.calls_per_second, burst=2)
        wait = self._bucket.reserve()
        if wait > 0:
            await anyio.sleep(wait)

    def _throttled(self, what: str) -> TemporaryError:
        self.throttles += 1
        delay = min(MAX_THROTTLE_DELAY, 2.0 ** (self.throttles - 1))
        return TemporaryError(f"{what}: throttled by AWS", delay=delay * random.uniform(0.5, 1.0))

    async def describe(self, ctx: Context, names: Sequence[str]) -> dict[str, LoadBalancer | None]:
        try:
            found = {lb.name: lb for lb in await ctx.elb.describe_load_balancers(names)}
        except Throttled as exc:
            raise self._throttled("DescribeLoadBalancers") from exc
        except NotFound:
            # One of them is missing: find which, so the others still converge.
            found = {}
            for name in names:
                try:
                    found[name] = await ctx.elb.describe_load_balancer(name)
                except NotFound:
                    ctx.log.error("load balancer not found", load_balancer=name)
                except Throttled as exc:
                    raise self._throttled("DescribeLoadBalancers") from exc
        return {name: found.get(name) for name in names}

    async def create(
        self, ctx: Context, name: str, listeners: Sequence[Listener], have: int
    ) -> set[int]:
        """Create ``listeners`` in as few calls as the quota allows; the ports not created.

        One call normally. When AWS refuses the batch for its quota (lower than configured),
        the first half (fixed listeners and the earliest users come first) is tried, and so on:
        a refused single listener tells the real quota exactly, which is used from then on.
        """
        elb, _ = self.configs()
        remaining = list(listeners)
        attempt = remaining
        created = 0
        while attempt:
            try:
                await self._pace()
                await ctx.elb.create_listeners(name, attempt)
            except Throttled as exc:
                API_CALLS.labels(call="CreateLoadBalancerListeners", outcome="throttled").inc()
                raise self._throttled(f"CreateLoadBalancerListeners({name})") from exc
            except QuotaExceeded as exc:
                API_CALLS.labels(call="CreateLoadBalancerListeners", outcome="quota").inc()
                if len(attempt) > 1:
                    attempt = attempt[: len(attempt) // 2]
                    continue
                learned = have + created
                self.learned_quota[name] = learned
                LISTENER_QUOTA.labels(load_balancer=name).set(learned)
                ctx.log.error(
                    "listener quota lower than configured; using what AWS allows",
                    load_balancer=name,
                    configured=elb.listener_quota,
                    learned=learned,
                    error=str(exc),
                )
                break
            except (Conflict, NotFound) as exc:
                API_CALLS.labels(call="CreateLoadBalancerListeners", outcome="error").inc()
                raise TemporaryError(f"{name} changed under us: {exc}", delay=NEXT_PASS) from exc
            API_CALLS.labels(call="CreateLoadBalancerListeners", outcome="ok").inc()
            ctx.log.info(
                "listeners created",
                load_balancer=name,
                ports=[lst.load_balancer_port for lst in attempt],
            )
            created += len(attempt)
            remaining = remaining[len(attempt) :]
            attempt = remaining
        return {lst.load_balancer_port for lst in remaining}

    async def reconcile(self, ctx: Context, key: str) -> Result | None:
        elb, _ = self.configs()
        layout = self.layout()
        record_entries = {
            k: e for k, e in ctx.cache(RECORDS_WATCH).items() if isinstance(e, KVEntry)
        }
        records: dict[str, ListenerRecord] = {}
        for k, e in record_entries.items():
            user = user_of_key(ELB_PREFIX, k)
            if user is None:
                continue
            parsed = ctx.parse(ListenerRecord, e, report_as=user)
            if parsed is not None:
                records[user] = parsed
        demands: dict[str, Demand] = {}
        for entry in list(ctx.cache(ROUTES_WATCH).values()):
            user = user_of_key(HAPROXY_DATA_PREFIX, entry.key)
            if user is None:
                continue
            routes = ctx.parse(UserRoutes, entry, report_as=user)
            if routes is None:
                # Unreadable input: the user keeps what they have, nothing more.
                if user in records:
                    demands[user] = Demand(user, tuple(records[user].listeners), entry.create_index)
                continue
            outside = [r.port for r in routes.tcp if r.port not in layout.managed]
            if outside:
                ctx.status.set(
                    "Invalid",
                    f"TCP port(s) {outside} are outside TCP_PORT_RANGE_START..END; not listened",
                    key=user,
                    observed_index=entry.modify_index,
                )
                continue
            demands[user] = demand_of(user, routes, entry.create_index, encrypt=elb.encrypt_tcp)

        balancers = await self.describe(ctx, elb.load_balancers)
        plan = plan_listeners(
            demands.values(), records, balancers, layout, quotas=self.learned_quota
        )

        retry: float | None = None
        # 1. Add (everything that fits).
        for name, listeners in plan.creates.items():
            if not listeners:
                continue
            have = balancers[name]
            missed = await self.create(ctx, name, listeners, len(have.listeners) if have else 0)
            if missed:
                retry = NEXT_PASS
                for user, lb in plan.assignments.items():
                    if lb == name and missed & set(_ports(demands[user])):
                        plan.deferred.setdefault(name, []).append(user)

        # 2. Record who got what (only users whose listeners now exist).
        wanted_records = desired_records(plan, demands, balancers)
        writes = record_ops(wanted_records, record_entries)
        for start in range(0, len(writes), RECORD_OPS):
            await ctx.kv.apply(writes[start : start + RECORD_OPS])

        # 3. Remove.
        for name, ports in plan.deletes.items():
            if not ports:
                continue
            try:
                await self._pace()
                await ctx.elb.delete_listeners(name, ports)
                API_CALLS.labels(call="DeleteLoadBalancerListeners", outcome="ok").inc()
                ctx.log.info("listeners deleted", load_balancer=name, ports=ports)
            except Throttled as exc:
                API_CALLS.labels(call="DeleteLoadBalancerListeners", outcome="throttled").inc()
                raise self._throttled(f"DeleteLoadBalancerListeners({name})") from exc
            except NotFound as exc:
                API_CALLS.labels(call="DeleteLoadBalancerListeners", outcome="error").inc()
                raise TemporaryError(f"{name} vanished: {exc}", delay=NEXT_PASS) from exc
        stale = stale_record_ops(wanted_records, record_entries)
        for start in range(0, len(stale), RECORD_OPS):
            await ctx.kv.apply(stale[start : start + RECORD_OPS])
        self.throttles = 0

        self.report(ctx, plan, balancers, demands, len(wanted_records))
        if any(plan.deferred.values()) or any(plan.replaced.values()):
            retry = NEXT_PASS
        return Result(requeue_after=retry) if retry is not None else None

    def report(
        self,
        ctx: Context,
        plan: ELBPlan,
        balancers: Mapping[str, LoadBalancer | None],
        demands: Mapping[str, Demand],
        recorded: int,
    ) -> None:
        elb, _ = self.configs()
        for name, lb in balancers.items():
            LOAD_BALANCER_UP.labels(load_balancer=name).set(lb is not None)
            LISTENERS.labels(load_balancer=name).set(plan.listeners_after.get(name, 0))
            USER_LISTENERS.labels(load_balancer=name).set(plan.user_listeners_after.get(name, 0))
            LISTENER_QUOTA.labels(load_balancer=name).set(
                min(elb.listener_quota, self.learned_quota.get(name, elb.listener_quota))
            )
            if lb is None:
                ctx.status.set("Missing", f"load balancer {name} does not exist", key=f"_lb_{name}")
        USERS_WITH_LISTENER.set(recorded)
        USERS_OVER_CAPACITY.set(len(plan.over_capacity))
        capacity = sum(plan.capacity.values())
        for user in plan.over_capacity:
            ctx.status.set(
                "OverCapacity",
                f"no listener: the {len(plan.capacity)} load balancer(s) hold {capacity} user "
                f"listeners in all (quota {elb.listener_quota} each, minus fixed and foreign "
                "listeners); waiting for room, in order of arrival",
                key=user,
            )
        if plan.over_capacity:
            ctx.log.warning(
                "users beyond ELB listener capacity",
                users=len(plan.over_capacity),
                capacity=capacity,
            )
        for name, users in plan.deferred.items():
            for user in users:
                ctx.status.set(
                    "Pending", f"listener on {name} is created on the next pass", key=user
                )


def build(
    elb: ELBSettings | None = None,
    haproxy: HAProxySettings | None = None,
    *,
    drift_every: float = DRIFT_EVERY,
) -> Controller:
    """The elb controller (configuration: the environment's, read at start). ``drift_every``:
    how often AWS is compared even when nothing in Consul changed (hand edits on the ELB)."""
    state = ELBController(elb, haproxy)
    return Controller(
        name=NAME,
        description="haproxy/data TCP ports -> Classic ELB listeners, manticore/elb/data/<id>",
        reconcile=state.reconcile,
        startup=state.startup,
        watches=[
            # One value per user, written by haproxy-kv: every write wakes the watch, which
            # re-reads the whole prefix (10,000 entries at 10,000 users), so while haproxy-kv
            # writes its records that was a re-read (and a pass over every user) per write. One
            # pass converges every user, so it re-reads at most every 2 s
            # (``watches.LAZY_PREFIX``). The
            # records' watch is not limited: a pass relies on it to know what each user holds,
            # and its writes are this controller's own, batched (RECORD_OPS per transaction).
            watches.kv(HAPROXY_DATA_PREFIX, to_keys=constant_key(KEY), **watches.LAZY_PREFIX),
            watches.kv(ELB_PREFIX, to_keys=constant_key(KEY)),
            watches.periodic([KEY], every=drift_every),
        ],
        writes=[f"{ELB_PREFIX}<id>", "Classic ELB listeners of ELB_MANTICORE_NAME"],
        models={"manticore-elb-listener": ListenerRecord, "haproxy-user-routes": UserRoutes},
        needs=frozenset({"consul", "elb"}),
        workers=1,
        resync_period=max(drift_every, 30.0),
        reconcile_timeout=300,
        status=True,
    )


controller = build()
