"""haproxy-kv: allocations -> ``haproxy/``, the data HAProxy routes every user with.

For each user with an allocation record it publishes ``haproxy/data/<id>``
(:class:`~controllers.api.haproxy.UserRoutes`): one unguessable subdomain per HTTP service
(``secrets``, ``MANTICORE_SUBDOMAIN_LENGTH`` characters of ``[a-z0-9]``, 16 by default) and one
external TCP port per TCP service from ``TCP_PORT_RANGE_START..END``. Beside them it keeps
``haproxy/webAppAddresses/<i>`` (one ``ip:port`` per passing instance of the web app service,
rewritten in one fenced transaction), ``haproxy/domainName`` and ``haproxy/mainPort``, as
Manticore's consul-template template reads them.

**Random values are reserved before they are used.** A user's subdomains and ports are written
to ``manticore/routes/data/<id>`` (:class:`~controllers.api.haproxy.RouteReservation`) before any
route names them, and kept for the user's lifetime: a restart, a new leader or an allocation
that moves finds them there. They are given up only when the user's request is gone.

**Uniqueness is Consul's, not ours.** Each reserved port and subdomain is also claimed under its
own key (``manticore/routes/tcp/<port>``, ``manticore/routes/subdomains/<name>``, value the user
id), created in the same transaction as the reservation with ``cas=0``. Two workers, or a new
leader whose cache has not yet seen the old leader's last write, may pick the same free port;
Consul commits only one of the two transactions, and the other picks again. No port or
subdomain can be handed to two users, whatever the workers, replicas or cache lag.

**Exhaustion.** When the range has no free port the user still gets their HTTP routes; the TCP
route is left out with a ``NoTCPPort`` status entry, a log line,
``manticore_tcp_port_exhausted_total`` and ``manticore_users_waiting_for_tcp_port``, and the key
is retried every 15 s, so a port freed by a departing user is taken up. Other users keep theirs.

Invalid input (an allocation record or reservation that fails validation) is reported through
``ctx.parse`` and that user is left exactly as it is.

**Cost at scale.** A reconcile touches the user's own keys only, whatever the number of users.
The reservation, the claims and the published routes are read from the watch caches (a claim's
owner by key, the claims a user holds through the routes watch's ``owner`` index), and every
write is a CAS on the index the cache showed, so a cache that is behind costs a failed
transaction and fresh reads of exactly the keys it depended on, never a wrong write. A new
user costs one read (a reservation missing from the cache is confirmed absent) and one
transaction (reservation, claims and routes); a routed user whose caches are current costs
nothing; a departure is one fenced transaction deleting routes, claims and reservation that
also checks the request is absent (``check-not-exists``). A free port is found by random
lookups of the claims; the range is scanned only when those all miss (a range nearly full),
which is O(range), never a copy of every claim. Consul connections: four long polls (requests,
allocations, ``manticore/routes/``, ``haproxy/``), the lock watch and the short-request pool;
the web app's instances are polled every ``WEB_APP_POLL`` seconds. The routes and haproxy
watches see every write of this controller and re-read their whole prefix on each wake, so they
are rate-limited (``watches.LAZY_PREFIX``): nothing waits on them.
"""

from __future__ import annotations

import random
import secrets
import string
import time
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge
from pydantic import TypeAdapter, ValidationError

from controllers.api.allocations import UserAllocation
from controllers.api.haproxy import (
    ROUTES_DATA_PREFIX,
    ROUTES_SUBDOMAIN_PREFIX,
    ROUTES_TCP_PREFIX,
    Address,
    HTTPRoute,
    RouteReservation,
    TCPRoute,
    UserRoutes,
)
from controllers.api.ids import (
    ALLOCATIONS_PREFIX,
    HAPROXY_DATA_PREFIX,
    HAPROXY_DOMAIN_KEY,
    HAPROXY_MAIN_PORT_KEY,
    HAPROXY_PREFIX,
    HAPROXY_WEB_APP_PREFIX,
    REQUESTS_PREFIX,
    is_user_id,
    user_of_key,
)
from controllers.settings import HAProxySettings, Settings
from reconciler import watches
from reconciler.clients.consul import KVEntry, KVOp, ServiceInstance
from reconciler.controller import Context, Controller, Dependencies
from reconciler.kv import decode, encode
from reconciler.result import InvalidValue, Result, TemporaryError

NAME = "haproxy-kv"
ROUTES_PREFIX = "manticore/routes/"
REQUESTS_WATCH = f"kv:{REQUESTS_PREFIX}"
ALLOCATIONS_WATCH = f"kv:{ALLOCATIONS_PREFIX}"
ROUTES_WATCH = f"kv:{ROUTES_PREFIX}"
HAPROXY_WATCH = f"kv:{HAPROXY_PREFIX}"
WEB_APP_WATCH = "web-app"
WEB_APP_KEY = "_web_app"
GLOBALS_KEY = "_globals"
STATS_KEY = "_stats"
STATS_EVERY = 15.0
EXHAUSTED_RETRY = 15.0
# One transaction carries at most 127 operations besides the fencing check.
MAX_WEB_APP_ADDRESSES = 120
RESERVE_ATTEMPTS = 8
PORT_PROBES = 32
MAX_RELEASE_OPS = 100
OWNER_INDEX = "owner"
KIND_INDEX = "kind"
WEB_APP_POLL = 5.0
# The routes and haproxy watches see every write of this controller, and each wake re-reads
# the whole prefix (tens of thousands of entries at 10,000 users): at most one re-read
# every 2 s (``watches.LAZY_PREFIX``). Nothing waits on them (every write is a CAS that tells
# when they are behind).
RECENT_CLAIMS = 10.0
SUBDOMAIN_ALPHABET = string.ascii_lowercase + string.digits

USERS_ROUTED = Gauge("manticore_users_routed", "Users with routes published (haproxy/data)")
TCP_PORTS_IN_USE = Gauge(
    "manticore_tcp_ports_in_use", "External TCP ports reserved by users (manticore/routes/tcp)"
)
TCP_PORTS_TOTAL = Gauge(
    "manticore_tcp_ports_total", "Size of TCP_PORT_RANGE_START..TCP_PORT_RANGE_END"
)
TCP_PORT_EXHAUSTED = Counter(
    "manticore_tcp_port_exhausted_total",
    "Times a user's TCP service found no free port in the TCP port range",
)
USERS_WAITING_FOR_PORT = Gauge(
    "manticore_users_waiting_for_tcp_port",
    "Users routed without their TCP route because the TCP port range is exhausted",
)
WEB_APP_ADDRESSES = Gauge(
    "manticore_web_app_addresses", "Passing web app instances in haproxy/webAppAddresses"
)
RESERVATION_CONFLICTS = Counter(
    "manticore_route_reservation_conflicts_total",
    "Reservations refused by Consul because a port or subdomain was claimed concurrently",
)

_ADDRESS: TypeAdapter[str] = TypeAdapter(Address)


# --------------------------------------------------------------------------- the pure part


def new_subdomain(length: int = 16) -> str:
    """An unguessable subdomain: ``length`` characters of ``[a-z0-9]`` from ``secrets``."""
    return "".join(secrets.choice(SUBDOMAIN_ALPHABET) for _ in range(length))


def ip_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class ReservationPlan:
    """The reservation a user should hold, and the claims that must exist for it."""

    reservation: RouteReservation
    claim_ports: frozenset[int] = frozenset()
    claim_subdomains: frozenset[str] = frozenset()
    exhausted: tuple[str, ...] = ()

    @property
    def claims(self) -> list[str]:
        return [f"{ROUTES_TCP_PREFIX}{p}" for p in sorted(self.claim_ports)] + [
            f"{ROUTES_SUBDOMAIN_PREFIX}{s}" for s in sorted(self.claim_subdomains)
        ]


def plan_reservation(
    user: str,
    allocation: UserAllocation,
    current: RouteReservation | None,
    *,
    port_owners: Mapping[int, str],
    subdomain_owners: Mapping[str, str],
    ports: range,
    make_subdomain: Callable[[], str],
    pick: Callable[[Sequence[int]], int] = random.choice,
    also_taken: Container[int] = (),
) -> ReservationPlan:
    """What the user's reservation must become (pure but for the injected randomness).

    What the user holds is kept for life (stable across restarts, leaders and moves) unless it
    cannot be: a port now outside the range, or a port or subdomain claimed by another user
    (a damaged store), is replaced. Roles that are not running any more keep their values, so a
    restarting HMI comes back on the same subdomain. ``claim_*`` lists what the reservation
    holds but no claim key says is the user's yet (new values, and claims lost by hand).
    """
    held = current or RouteReservation()
    subdomains = {
        role: sub
        for role, sub in held.subdomains.items()
        if subdomain_owners.get(sub, user) == user
    }
    tcp_ports = {
        role: port
        for role, port in held.tcp_ports.items()
        if port in ports and port_owners.get(port, user) == user
    }
    exhausted: list[str] = []
    for role, service in sorted(allocation.services.items()):
        if service.route == "http" and role not in subdomains:
            sub = make_subdomain()
            while subdomain_owners.get(sub) is not None or sub in subdomains.values():
                sub = make_subdomain()
            subdomains[role] = sub
        elif service.route == "tcp" and role not in tcp_ports:
            port = free_port(ports, port_owners, set(tcp_ports.values()), pick, also_taken)
            if port is None:
                exhausted.append(role)
                continue
            tcp_ports[role] = port
    reservation = RouteReservation(subdomains=subdomains, tcp_ports=tcp_ports)
    return ReservationPlan(
        reservation=reservation,
        claim_ports=frozenset(p for p in tcp_ports.values() if port_owners.get(p) != user),
        claim_subdomains=frozenset(
            s for s in subdomains.values() if subdomain_owners.get(s) != user
        ),
        exhausted=tuple(exhausted),
    )


def free_port(
    ports: range,
    port_owners: Mapping[int, str],
    mine: Collection[int],
    pick: Callable[[Sequence[int]], int] = random.choice,
    also_taken: Container[int] = (),
) -> int | None:
    """A port of ``ports`` nobody holds, or None when the range is exhausted (pure).

    ``PORT_PROBES`` random draws first, each one lookup of the claims (independent of the
    number of users); only when they all hit a claimed port (a range nearly full) is the range
    scanned, which is O(range) lookups and never a copy of every claim. ``also_taken``: ports
    claimed so recently that the claims may not show them yet (a hint: Consul decides).
    """

    def free(port: int) -> bool:
        return port not in mine and port not in also_taken and port_owners.get(port) is None

    if not ports:
        return None
    for _ in range(PORT_PROBES):
        port = pick(ports)
        if free(port):
            return port
    left = [p for p in ports if free(p)]
    return pick(left) if left else None


def plan_routes(allocation: UserAllocation, reservation: RouteReservation) -> UserRoutes:
    """The user's routes: every service whose route kind has a reserved value (pure)."""
    http: list[HTTPRoute] = []
    tcp: list[TCPRoute] = []
    for role, service in sorted(allocation.services.items()):
        target = ip_port(service.address, service.port)
        if service.route == "http" and role in reservation.subdomains:
            http.append(
                HTTPRoute(subdomain=reservation.subdomains[role], address=target, role=role)
            )
        elif service.route == "tcp" and role in reservation.tcp_ports:
            tcp.append(TCPRoute(port=reservation.tcp_ports[role], address=target, role=role))
    return UserRoutes(http=http, tcp=tcp)


K = TypeVar("K", int, str)


class Claims(Mapping[K, str]):
    """Owner of each claimed port (or subdomain), read from the routes cache on demand.

    A lookup costs one dict access, so a reconcile that keeps what the user holds never walks
    every claim; only choosing a new port iterates them. ``learn`` overlays what a fresh read
    of one claim key said (an owner, or None for absent) when the cache was behind.
    """

    def __init__(
        self, cache: Mapping[str, Any], prefix: str, parse: Callable[[str], K | None]
    ) -> None:
        self._cache = cache
        self._prefix = prefix
        self._parse: Callable[[str], K | None] = parse
        self._overlay: dict[K, str | None] = {}

    def learn(self, item: K, owner: str | None) -> None:
        self._overlay[item] = owner

    def __getitem__(self, item: K) -> str:
        if item in self._overlay:
            owner = self._overlay[item]
            if owner is None:
                raise KeyError(item)
            return owner
        entry = self._cache.get(f"{self._prefix}{item}")
        if not isinstance(entry, KVEntry):
            raise KeyError(item)
        return entry.text

    def __iter__(self) -> Iterator[K]:
        for known, owner in self._overlay.items():
            if owner is not None:
                yield known
        for key in list(self._cache):
            if key.startswith(self._prefix):
                parsed = self._parse(key[len(self._prefix) :])
                if parsed is not None and parsed not in self._overlay:
                    yield parsed

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _port_of(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _subdomain_of(text: str) -> str | None:
    return text or None


def claims_of(cache: Mapping[str, Any]) -> tuple[Claims[int], Claims[str]]:
    """Port -> user and subdomain -> user, as views of the claim keys in the routes cache."""
    return (
        Claims(cache, ROUTES_TCP_PREFIX, _port_of),
        Claims(cache, ROUTES_SUBDOMAIN_PREFIX, _subdomain_of),
    )


def web_app_plan(
    instances: Iterable[ServiceInstance], current: Mapping[str, bytes | None]
) -> tuple[list[KVOp], list[str], list[str]]:
    """Operations making ``haproxy/webAppAddresses/<i>`` list the passing instances (pure).

    Returns ``(ops, addresses, rejected)``: ``ip:port`` sorted, one key per index from 0; keys
    not wanted (beyond the count, or anything else under the prefix) are deleted.
    """
    addresses: set[str] = set()
    rejected: list[str] = []
    for instance in instances:
        if not instance.passing:
            continue
        try:
            addresses.add(_ADDRESS.validate_python(ip_port(instance.address, instance.port)))
        except ValidationError:
            rejected.append(f"{instance.service_id}: {instance.address!r}:{instance.port}")
    wanted = {
        f"{HAPROXY_WEB_APP_PREFIX}{i}": a.encode()
        for i, a in enumerate(sorted(addresses)[:MAX_WEB_APP_ADDRESSES])
    }
    ops = [KVOp.set(k, v) for k, v in wanted.items() if current.get(k) != v]
    ops += [KVOp.delete(k) for k in sorted(current) if k not in wanted]
    return ops, sorted(addresses), rejected


# --------------------------------------------------------------------------- the controller


def _routes_key(entry: KVEntry) -> list[str]:
    if entry.key.startswith(ROUTES_DATA_PREFIX):
        user = user_of_key(ROUTES_DATA_PREFIX, entry.key)
        return [user] if user else []
    owner = entry.text
    return [owner] if is_user_id(owner) else []


def _claim_owner(entry: KVEntry) -> list[str]:
    """Owner index of the routes cache: the user a claim key names (reservations: none)."""
    if entry.key.startswith((ROUTES_TCP_PREFIX, ROUTES_SUBDOMAIN_PREFIX)):
        owner = entry.text
        return [owner] if is_user_id(owner) else []
    return []


def _haproxy_kind(entry: KVEntry) -> list[str]:
    """Kind index of the haproxy cache: the web app addresses, found without a scan."""
    return [WEB_APP_KEY] if entry.key.startswith(HAPROXY_WEB_APP_PREFIX) else []


def _haproxy_key(entry: KVEntry) -> list[str]:
    key = entry.key
    if key.startswith(HAPROXY_DATA_PREFIX):
        user = user_of_key(HAPROXY_DATA_PREFIX, key)
        return [user] if user else []
    if key.startswith(HAPROXY_WEB_APP_PREFIX):
        return [WEB_APP_KEY]
    if key in (HAPROXY_DOMAIN_KEY, HAPROXY_MAIN_PORT_KEY):
        return [GLOBALS_KEY]
    return []


def _user_key(prefix: str) -> Callable[[KVEntry], list[str]]:
    def mapper(entry: KVEntry) -> list[str]:
        user = user_of_key(prefix, entry.key)
        return [user] if user else []

    return mapper


class RecentPorts(Container[int]):
    """Ports claimed in the last ``RECENT_CLAIMS`` seconds (a hint for choosing: see above)."""

    def __init__(self) -> None:
        self._at: dict[int, float] = {}

    def __contains__(self, port: object) -> bool:
        at = self._at.get(port) if isinstance(port, int) else None
        return at is not None and at > time.monotonic() - RECENT_CLAIMS

    def add(self, ports: Iterable[int]) -> None:
        now = time.monotonic()
        for port in ports:
            self._at[port] = now

    def discard(self, ports: Iterable[int]) -> None:
        for port in ports:
            self._at.pop(port, None)

    def prune(self) -> None:
        horizon = time.monotonic() - RECENT_CLAIMS
        self._at = {p: t for p, t in self._at.items() if t > horizon}


@dataclass
class HAProxyKV:
    """The controller's configuration (from the environment at start, or given by a test) and
    what it remembers between reconciles (only for metrics: the state is in Consul)."""

    config: HAProxySettings | None = None
    waiting_for_port: set[str] = field(default_factory=set)
    # Ports this replica claimed in the last RECENT_CLAIMS seconds: the routes cache is
    # rate-limited and may not show them yet, and drawing them again only costs a conflict.
    recent_ports: RecentPorts = field(default_factory=lambda: RecentPorts())

    @property
    def cfg(self) -> HAProxySettings:
        if self.config is None:
            self.config = Settings.from_env().haproxy
        return self.config

    async def startup(self, deps: Dependencies) -> None:
        cfg = self.cfg  # raises ConfigError with the variable's name
        TCP_PORTS_TOTAL.set(len(cfg.tcp_port_range))

    async def reconcile(self, ctx: Context, key: str) -> Result | None:
        if key == STATS_KEY:
            return self.stats(ctx)
        if key == GLOBALS_KEY:
            haproxy = ctx.cache(HAPROXY_WATCH)
            for global_key, value in (
                (HAPROXY_DOMAIN_KEY, self.cfg.domain_name.encode()),
                (HAPROXY_MAIN_PORT_KEY, str(self.cfg.main_port).encode()),
            ):
                cached = haproxy.get(global_key)
                if cached is None or cached.value != value:
                    await ctx.kv.put_if_changed(global_key, value)
            return None
        if key == WEB_APP_KEY:
            return await self.web_app(ctx)
        if is_user_id(key):
            return await self.user(ctx, key)
        return None

    # -- one user
    async def user(self, ctx: Context, user: str) -> Result | None:
        routes_key = f"{HAPROXY_DATA_PREFIX}{user}"
        if f"{REQUESTS_PREFIX}{user}" not in ctx.cache(REQUESTS_WATCH) and await self.depart(
            ctx, user
        ):
            return None
        alloc_entry = ctx.cache(ALLOCATIONS_WATCH).get(f"{ALLOCATIONS_PREFIX}{user}")
        if alloc_entry is None:
            # Not running (yet, or any more): no route, but the reservation stays for life.
            self.waiting_for_port.discard(user)
            if await self.unpublish(ctx, routes_key):
                ctx.log.info("routes removed: no allocation")
            return None
        allocation = ctx.parse(UserAllocation, alloc_entry)
        if allocation is None:
            return None
        plan = await self.reserve(ctx, user, allocation)
        if plan is None:
            return None
        if plan.exhausted:
            self.waiting_for_port.add(user)
            TCP_PORT_EXHAUSTED.inc()
            size = len(self.cfg.tcp_port_range)
            message = (
                f"TCP port range {self.cfg.tcp_port_range_start}-{self.cfg.tcp_port_range_end} "
                f"is exhausted ({size} ports, all reserved): no TCP route for "
                f"{', '.join(plan.exhausted)}; retrying every {EXHAUSTED_RETRY:g} s"
            )
            ctx.log.error("tcp port range exhausted", roles=list(plan.exhausted), size=size)
            ctx.status.set("NoTCPPort", message, observed_index=alloc_entry.modify_index)
            return Result(requeue_after=EXHAUSTED_RETRY)
        self.waiting_for_port.discard(user)
        return None

    async def reserve(
        self, ctx: Context, user: str, allocation: UserAllocation
    ) -> ReservationPlan | None:
        """Make the user's reservation, its claims and its routes exist in Consul, atomically.

        The reservation and the published routes are read from the watch caches (no request
        when they are current: a resync of a routed user costs nothing). Every write is a CAS
        on the index the cache showed, so a cache that is behind makes the transaction fail
        rather than overwrite; then exactly the keys it depended on are read fresh and the plan
        is made again. A reservation absent from the cache is read once (a new user, or a cache
        that has not seen a reservation yet, which must not be drawn again).
        """
        key = f"{ROUTES_DATA_PREFIX}{user}"
        routes_key = f"{HAPROXY_DATA_PREFIX}{user}"
        routes_cache = ctx.cache(ROUTES_WATCH)
        port_owners, subdomain_owners = claims_of(routes_cache)
        entry: KVEntry | None = routes_cache.get(key)
        if entry is None:
            entry = await ctx.kv.get(key)
        published: KVEntry | None = ctx.cache(HAPROXY_WATCH).get(routes_key)
        fresh = False  # whether `published` was read from Consul rather than the cache
        for _ in range(RESERVE_ATTEMPTS):
            current = None
            if entry is not None:
                current = ctx.parse(RouteReservation, entry)
                if current is None:
                    return None  # reported; a damaged reservation is left for a human
            plan = plan_reservation(
                user,
                allocation,
                current,
                port_owners=port_owners,
                subdomain_owners=subdomain_owners,
                ports=self.cfg.tcp_port_range,
                make_subdomain=lambda: new_subdomain(self.cfg.subdomain_length),
                also_taken=self.recent_ports,
            )
            routes = plan_routes(allocation, plan.reservation)
            wanted = encode(routes)
            reserving = plan.reservation != current or bool(plan.claims)
            ops: list[KVOp] = []
            if reserving:
                ops.append(
                    KVOp.cas(
                        key, encode(plan.reservation), index=entry.modify_index if entry else 0
                    )
                )
                ops += [KVOp.cas(claim, user.encode(), index=0) for claim in plan.claims]
            if published is None or published.value != wanted:
                if not reserving and published is None and not fresh:
                    # Only the routes to write and the cache has none: it may be behind (the
                    # write that made them is ours, just done). One read settles it.
                    published, fresh = await ctx.kv.get(routes_key), True
                    if published is not None and published.value == wanted:
                        return plan
                ops.append(
                    KVOp.cas(routes_key, wanted, index=published.modify_index if published else 0)
                )
            if not ops:
                return plan
            if await ctx.kv.apply(ops):
                self.recent_ports.add(plan.claim_ports)
                if reserving:
                    ctx.log.info(
                        "routes reserved",
                        subdomains=sorted(plan.reservation.subdomains),
                        tcp_ports=plan.reservation.tcp_ports,
                    )
                if published is None or published.value != wanted:
                    ctx.log.info(
                        "routes published",
                        http=[r.role for r in routes.http],
                        tcp=[r.port for r in routes.tcp],
                    )
                return plan
            # Someone claimed one of our picks first, or our view of the reservation, of the
            # routes or of a claim was behind: learn the truth for exactly those keys, again.
            if plan.claims:
                RESERVATION_CONFLICTS.inc()
            entry = await ctx.kv.get(key)
            published, fresh = await ctx.kv.get(routes_key), True
            for claim in plan.claims:
                found = await ctx.kv.get(claim)
                owner = found.text if found is not None else None
                if claim.startswith(ROUTES_TCP_PREFIX):
                    port_owners.learn(int(claim[len(ROUTES_TCP_PREFIX) :]), owner)
                else:
                    subdomain_owners.learn(claim[len(ROUTES_SUBDOMAIN_PREFIX) :], owner)
        raise TemporaryError(f"{user}: reservation conflicted {RESERVE_ATTEMPTS} times")

    async def unpublish(self, ctx: Context, routes_key: str) -> bool:
        """Remove a user's routes the cache shows (one CAS delete; a fresh read if behind)."""
        published = ctx.cache(HAPROXY_WATCH).get(routes_key)
        if published is None:
            return False  # if the cache is behind, the watch brings the key, and us, back
        if await ctx.kv.apply([KVOp.delete_cas(routes_key, index=published.modify_index)]):
            return True
        return await ctx.kv.delete_if_present(routes_key)

    def held_claims(self, ctx: Context, user: str, held: RouteReservation) -> dict[str, KVEntry]:
        """The claim keys the caches say are the user's: those its reservation names, and any
        other claim whose value is the user (found through the owner index, not a scan)."""
        cache = ctx.cache(ROUTES_WATCH)
        keys = {f"{ROUTES_TCP_PREFIX}{p}" for p in held.tcp_ports.values()}
        keys |= {f"{ROUTES_SUBDOMAIN_PREFIX}{s}" for s in held.subdomains.values()}
        found: dict[str, KVEntry] = {}
        for key in keys:
            entry = cache.get(key)
            if isinstance(entry, KVEntry) and entry.text == user:
                found[key] = entry
        for entry in ctx.index(ROUTES_WATCH, OWNER_INDEX, user):
            if isinstance(entry, KVEntry) and entry.text == user:
                found[entry.key] = entry
        return found

    async def depart(self, ctx: Context, user: str) -> bool:
        """The user's request is not in the cache: give up everything the user held, in one
        fenced transaction that also checks the request really is absent. False when Consul
        says it exists (the requests cache was behind): the user is live, route them."""
        key = f"{ROUTES_DATA_PREFIX}{user}"
        routes_key = f"{HAPROXY_DATA_PREFIX}{user}"
        entry = ctx.cache(ROUTES_WATCH).get(key)
        published = ctx.cache(HAPROXY_WATCH).get(routes_key)
        held = _lenient(entry) if isinstance(entry, KVEntry) else RouteReservation()
        claims = self.held_claims(ctx, user, held)
        self.waiting_for_port.discard(user)
        if entry is None and published is None and not claims:
            if f"{ALLOCATIONS_PREFIX}{user}" in ctx.cache(ALLOCATIONS_WATCH):
                # A new user: the allocation record came before the requests watch (which
                # re-reads at most every 2 s) showed the request. One read tells, rather
                # than hold the user back until it does.
                return await ctx.kv.get(f"{REQUESTS_PREFIX}{user}") is None
            # Nothing of the user in the caches. If they are behind, the watch that brings a
            # key of the user reconciles the user again.
            return True
        # Giving up a reservation cannot be undone (the random values are gone): the
        # transaction checks the request is absent, so a cache that lags cannot cost a live
        # user their subdomains and port.
        ops = [KVOp.check_not_exists(f"{REQUESTS_PREFIX}{user}")]
        if published is not None:
            ops.append(KVOp.delete(routes_key))  # a departed user's routes go, whatever they say
        ops += [KVOp.delete_cas(k, index=e.modify_index) for k, e in sorted(claims.items())]
        if isinstance(entry, KVEntry):
            ops.append(KVOp.delete_cas(key, index=entry.modify_index))
        self.recent_ports.discard(held.tcp_ports.values())
        if len(ops) <= MAX_RELEASE_OPS and await ctx.kv.apply(ops):
            ctx.log.info(
                "user released",
                routes=published is not None,
                reservation=entry is not None,
                claims=len(claims),
            )
            return True
        # The request exists after all, or the caches were behind on the user's keys.
        if await ctx.kv.get(f"{REQUESTS_PREFIX}{user}") is not None:
            return False
        await self.release(ctx, user)
        return True

    async def release(self, ctx: Context, user: str) -> None:
        """The user left and the caches were behind: the same release from fresh reads."""
        if await ctx.kv.delete_if_present(f"{HAPROXY_DATA_PREFIX}{user}"):
            ctx.log.info("routes removed: request gone")
        key = f"{ROUTES_DATA_PREFIX}{user}"
        entry = await ctx.kv.get(key)
        held = _lenient(entry) if entry is not None else RouteReservation()
        self.recent_ports.discard(held.tcp_ports.values())
        claims = set(self.held_claims(ctx, user, held))
        claims |= {f"{ROUTES_TCP_PREFIX}{p}" for p in held.tcp_ports.values()}
        claims |= {f"{ROUTES_SUBDOMAIN_PREFIX}{s}" for s in held.subdomains.values()}
        ops: list[KVOp] = []
        for claim in sorted(claims):
            found = await ctx.kv.get(claim)
            if found is not None and found.text == user:
                ops.append(KVOp.delete_cas(claim, index=found.modify_index))
        if entry is not None:
            ops.append(KVOp.delete_cas(key, index=entry.modify_index))
        for start in range(0, len(ops), MAX_RELEASE_OPS):
            if not await ctx.kv.apply(ops[start : start + MAX_RELEASE_OPS]):
                raise TemporaryError(f"{user}: reservation changed while releasing it")
        if ops:
            ctx.log.info("reservation released", claims=len(ops) - (entry is not None))

    # -- the web app and the globals
    async def web_app(self, ctx: Context) -> Result | None:
        """Polled (one short request every ``WEB_APP_POLL`` s) rather than long-polled: the
        web app changes at a deploy, and a long poll would hold a Consul connection of its own.
        What is published now comes from the haproxy cache (its web app index)."""
        current = {
            e.key: e.value
            for e in ctx.index(HAPROXY_WATCH, KIND_INDEX, WEB_APP_KEY)
            if isinstance(e, KVEntry)
        }
        _, instances = await ctx.consul.health_service(self.cfg.web_app_service)
        ops, addresses, rejected = web_app_plan(instances, current)
        if ops and await ctx.kv.apply(ops):
            ctx.log.info("web app addresses published", addresses=addresses)
        WEB_APP_ADDRESSES.set(min(len(addresses), MAX_WEB_APP_ADDRESSES))
        problems = [f"unusable instance {r}" for r in rejected]
        if len(addresses) > MAX_WEB_APP_ADDRESSES:
            problems.append(
                f"{len(addresses)} web app instances pass; only {MAX_WEB_APP_ADDRESSES} "
                "fit one transaction and are published"
            )
        if problems:
            ctx.status.set("Degraded", "; ".join(problems))
        return None

    def stats(self, ctx: Context) -> Result | None:
        self.recent_ports.prune()
        haproxy = ctx.cache(HAPROXY_WATCH)
        USERS_ROUTED.set(sum(1 for k in haproxy if user_of_key(HAPROXY_DATA_PREFIX, k)))
        ports, _ = claims_of(ctx.cache(ROUTES_WATCH))
        in_range = self.cfg.tcp_port_range
        TCP_PORTS_IN_USE.set(sum(1 for p in ports if p in in_range))
        TCP_PORTS_TOTAL.set(len(in_range))
        requests = ctx.cache(REQUESTS_WATCH)
        self.waiting_for_port = {
            u for u in self.waiting_for_port if f"{REQUESTS_PREFIX}{u}" in requests
        }
        USERS_WAITING_FOR_PORT.set(len(self.waiting_for_port))
        return None


def _lenient(entry: KVEntry) -> RouteReservation:
    """A reservation being released: whatever of it parses (a damaged one frees nothing)."""
    try:
        return decode(RouteReservation, entry.value, key=entry.key)
    except InvalidValue:
        return RouteReservation()


def build(config: HAProxySettings | None = None) -> Controller:
    """The haproxy-kv controller (``config``: the environment's, read at start)."""
    state = HAProxyKV(config)
    return Controller(
        name=NAME,
        description="allocations -> haproxy/data/<id> (+ webAppAddresses, domainName, mainPort)",
        reconcile=state.reconcile,
        startup=state.startup,
        watches=[
            # Requests only gate: a user is routed once their allocation record exists, seconds
            # after the request, and a departure's transaction checks the request is really
            # gone; so this busy prefix (every arrival and departure) re-reads at most every 2 s.
            watches.kv(REQUESTS_PREFIX, to_keys=_user_key(REQUESTS_PREFIX), **watches.LAZY_PREFIX),
            watches.kv(ALLOCATIONS_PREFIX, to_keys=_user_key(ALLOCATIONS_PREFIX)),
            watches.kv(
                ROUTES_PREFIX,
                to_keys=_routes_key,
                indexes={OWNER_INDEX: _claim_owner},
                **watches.LAZY_PREFIX,
            ),
            watches.kv(
                HAPROXY_PREFIX,
                to_keys=_haproxy_key,
                indexes={KIND_INDEX: _haproxy_kind},
                **watches.LAZY_PREFIX,
            ),
            watches.periodic([WEB_APP_KEY], every=WEB_APP_POLL, name=WEB_APP_WATCH),
            watches.periodic([STATS_KEY], every=STATS_EVERY),
            watches.periodic([GLOBALS_KEY], every=60.0),
        ],
        writes=[
            f"{HAPROXY_DATA_PREFIX}<id>",
            f"{HAPROXY_WEB_APP_PREFIX}<i>",
            HAPROXY_DOMAIN_KEY,
            HAPROXY_MAIN_PORT_KEY,
            f"{ROUTES_DATA_PREFIX}<id>",
            f"{ROUTES_TCP_PREFIX}<port>",
            f"{ROUTES_SUBDOMAIN_PREFIX}<subdomain>",
        ],
        models={
            "haproxy-user-routes": UserRoutes,
            "manticore-route-reservation": RouteReservation,
            "manticore-allocation": UserAllocation,
        },
        workers=4,
        resync_period=60,
        status=True,
    )


controller = build()
