"""Where every route lives in HAProxy, and the smallest change that gets it there: the pure part.

HAProxy is rendered once with pre-provisioned *slots*: ``http_NNNNN`` and ``tcp_NNNNN`` are
backends of one server each, ``webapp`` one backend of ``wNNN`` servers. The main frontend finds
a user's slot through the ``hosts`` map (``<subdomain>.<domain> -> http_NNNNN``), the TCP
frontend, bound to the whole ``TCP_PORT_RANGE``, through the ``ports`` map (``<port> ->
tcp_NNNNN``). A user arriving or leaving is then a few runtime commands (``set server ... addr``,
``set server ... state``, ``add map``/``del map``) instead of a reload.

:func:`plan` compares what HAProxy runs (:class:`Applied`) with the routing table and returns
either those runtime operations or a reload with its reason: the first start, a change of
*shape* (domain, main port), a pool above its high-water mark (slots are then grown, with
headroom, so that 1,000 users arriving cost three reloads), a forced safety-net reload, or
``update_mode=reload`` (every change is a reload, as with consul-template). Applying a plan and
planning again with the same table yields nothing to do.

Slots keep their route for as long as it exists (also across reloads while the pool is large
enough), and a freed slot goes back to maintenance and a placeholder address before another user
may get it: its map entry is deleted first, so a request for a departed user's subdomain finds the
404 page, never the next user's container.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from controllers.haproxy.routes import Routing, Target

PLACEHOLDER = "127.0.0.1:1"
HIGH_WATER = 0.9
# A reload sizes each pool for three quarters as many routes again as it holds (in steps of 256
# slots), so it is under 60% full afterwards and the next growth is 57% more routes away (from
# 1,024 slots, 1,000 users of three HTTP routes would cost three reloads; the default 4,096 holds
# them without one). A slot costs HAProxy about 12 KiB, so the headroom is not made larger; a
# reload for any reason also shrinks a pool that emptied.
GROWTH = 1.75
STEP = 256
MAX_SLOTS = 65536

K = TypeVar("K", str, int)

Pool = Literal["http", "tcp", "web"]
POOLS: tuple[Pool, ...] = ("http", "tcp", "web")
MapName = Literal["hosts", "ports"]


def http_backend(slot: int) -> str:
    return f"http_{slot:05d}"


def tcp_backend(slot: int) -> str:
    return f"tcp_{slot:05d}"


def web_server(slot: int) -> str:
    return f"w{slot:03d}"


def slot_server(pool: Pool, slot: int) -> str:
    """The runtime API name (``backend/server``) of a slot."""
    if pool == "http":
        return f"{http_backend(slot)}/s"
    if pool == "tcp":
        return f"{tcp_backend(slot)}/s"
    return f"webapp/{web_server(slot)}"


# -- operations -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetAddr:
    server: str
    address: str


@dataclass(frozen=True, slots=True)
class SetState:
    server: str
    state: Literal["ready", "maint"]


@dataclass(frozen=True, slots=True)
class ShutdownSessions:
    server: str


@dataclass(frozen=True, slots=True)
class MapAdd:
    map: MapName
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class MapSet:
    map: MapName
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class MapDel:
    map: MapName
    key: str


Op = SetAddr | SetState | ShutdownSessions | MapAdd | MapSet | MapDel


# -- state ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """What only a reload can change: the frontends and how many slots exist."""

    domain: str
    main_port: int
    http_slots: int
    tcp_slots: int
    web_slots: int

    def size(self, pool: Pool) -> int:
        return {"http": self.http_slots, "tcp": self.tcp_slots, "web": self.web_slots}[pool]


@dataclass(frozen=True)
class Applied:
    """What HAProxy runs: its shape, the routes, and the slot of each route.

    ``generation`` names the map files of the configuration that is loaded (a reload writes new
    ones, so a rejected reload leaves the files the running workers came from untouched).
    """

    shape: Shape
    routing: Routing
    http: Mapping[str, int] = field(default_factory=dict)
    tcp: Mapping[int, int] = field(default_factory=dict)
    web: Mapping[str, int] = field(default_factory=dict)
    generation: int = 1

    def used(self, pool: Pool) -> int:
        return len(self.http if pool == "http" else self.tcp if pool == "tcp" else self.web)

    def owners(self, pool: Pool) -> dict[int, tuple[str, str]]:
        """slot -> (what it routes: subdomain, port or web app address; backend address)."""
        return self._tables[pool]

    def hosts_map(self) -> dict[str, str]:
        return self._tables["hosts"]

    def ports_map(self) -> dict[str, str]:
        return self._tables["ports"]

    @functools.cached_property
    def _tables(self) -> dict[str, dict[Any, Any]]:
        # Computed once per state: planning, rendering and verifying all read them.
        routing = self.routing
        return {
            "http": {slot: (s, routing.http[s].address) for s, slot in self.http.items()},
            "tcp": {slot: (str(p), routing.tcp[p].address) for p, slot in self.tcp.items()},
            "web": {slot: (address, address) for address, slot in self.web.items()},
            "hosts": {routing.host(s): http_backend(slot) for s, slot in self.http.items()},
            "ports": {str(port): tcp_backend(slot) for port, slot in self.tcp.items()},
        }


@dataclass(frozen=True, slots=True)
class SlotPolicy:
    """Minimum pool sizes (the settings) and the TCP ceiling (one slot per port of the range)."""

    http: int
    tcp: int
    web: int
    tcp_max: int

    def minimum(self, pool: Pool) -> int:
        if pool == "tcp":
            return min(self.tcp, self.tcp_max)
        return self.http if pool == "http" else self.web

    def maximum(self, pool: Pool) -> int:
        return self.tcp_max if pool == "tcp" else MAX_SLOTS

    def size_for(self, pool: Pool, used: int) -> int:
        """The pool size a reload provisions for ``used`` routes (see :data:`GROWTH`)."""
        minimum = self.minimum(pool)
        step = max(1, min(STEP, minimum))
        wanted = max(minimum, step * math.ceil(used * GROWTH / step))
        return max(min(wanted, self.maximum(pool)), used, 1)

    def crowded(self, pool: Pool, used: int, size: int) -> bool:
        """True when a pool must grow: above the high-water mark, unless it cannot grow."""
        if used > size:
            return True
        return used > HIGH_WATER * size and size < self.maximum(pool)


@dataclass(frozen=True)
class Plan:
    """The target state, and how to get there: a reload (with its reason) or runtime ``ops``."""

    target: Applied
    reload: str | None = None
    ops: tuple[Op, ...] = ()

    @property
    def nothing_to_do(self) -> bool:
        return self.reload is None and not self.ops


# -- planning -------------------------------------------------------------------------------


def plan(
    current: Applied | None,
    routing: Routing,
    policy: SlotPolicy,
    *,
    mode: Literal["runtime", "reload"] = "runtime",
    force: str | None = None,
) -> Plan:
    """From what runs (``current``, None when nothing does) to ``routing``; see the module doc."""
    if current is None:
        return Plan(_fresh(routing, policy, generation=1), reload="start")
    if force is not None:
        return Plan(_fresh(routing, policy, current.generation + 1, current), reload=force)
    if routing.domain != current.shape.domain or routing.main_port != current.shape.main_port:
        return Plan(_fresh(routing, policy, current.generation + 1, current), reload="shape")
    needed = {"http": len(routing.http), "tcp": len(routing.tcp), "web": len(routing.web_app)}
    if any(policy.crowded(pool, needed[pool], current.shape.size(pool)) for pool in POOLS):
        return Plan(_fresh(routing, policy, current.generation + 1, current), reload="slots")
    target = _assign(current.shape, routing, current, current.generation)
    ops = runtime_ops(current, target)
    if mode == "reload" and ops:
        return Plan(replace(target, generation=current.generation + 1), reload="change")
    return Plan(target, ops=ops)


def plan_in_place(current: Applied, routing: Routing) -> Plan:
    """Runtime operations only: as much of ``routing`` as the running shape can serve.

    For when a reload is wanted but failed (the configuration was invalid or the master refused
    it): the old configuration keeps serving, users keep coming and going within its slots and
    under its domain and port, and whoever does not fit waits for the reload to succeed. Routes
    already in place are kept before new ones are admitted.
    """
    shape = current.shape
    fitted = Routing(
        domain=shape.domain,
        main_port=shape.main_port,
        web_app=tuple(_fit(routing.web_app, current.web, shape.web_slots)),
        http={s: routing.http[s] for s in _fit(routing.http, current.http, shape.http_slots)},
        tcp={p: routing.tcp[p] for p in _fit(routing.tcp, current.tcp, shape.tcp_slots)},
    )
    target = _assign(shape, fitted, current, current.generation)
    return Plan(target, ops=runtime_ops(current, target))


def _fit(wanted: Iterable[K], held: Mapping[K, int], size: int) -> list[K]:
    keys = sorted(wanted)
    kept = [k for k in keys if k in held]
    return sorted(kept + [k for k in keys if k not in held][: max(0, size - len(kept))])


def _fresh(
    routing: Routing, policy: SlotPolicy, generation: int, current: Applied | None = None
) -> Applied:
    """A reload's target: pools sized for the routes, slots kept where they still fit."""
    shape = Shape(
        domain=routing.domain,
        main_port=routing.main_port,
        http_slots=policy.size_for("http", len(routing.http)),
        tcp_slots=policy.size_for("tcp", len(routing.tcp)),
        web_slots=policy.size_for("web", len(routing.web_app)),
    )
    return _assign(shape, routing, current, generation)


def _assign(shape: Shape, routing: Routing, current: Applied | None, generation: int) -> Applied:
    http = _keep_or_take(routing.http, current.http if current else {}, shape.http_slots)
    tcp = _keep_or_take(routing.tcp, current.tcp if current else {}, shape.tcp_slots)
    web_keys = {address: address for address in routing.web_app}
    web = _keep_or_take(web_keys, current.web if current else {}, shape.web_slots)
    return Applied(shape, routing, http, tcp, web, generation)


def _keep_or_take(wanted: Mapping[K, object], held: Mapping[K, int], size: int) -> dict[K, int]:
    """Each wanted key keeps its slot if it has one below ``size``; the rest take the lowest free.

    Keys are placed in sorted order so the assignment does not depend on dict order.
    """
    assigned: dict[K, int] = {}
    taken: set[int] = set()
    for key in wanted:
        slot = held.get(key)
        if slot is not None and slot < size and slot not in taken:
            assigned[key] = slot
            taken.add(slot)
    free = (slot for slot in range(size) if slot not in taken)
    for key in sorted(k for k in wanted if k not in assigned):
        slot = next(free, None)
        if slot is None:
            raise ValueError(f"{len(wanted)} routes do not fit in {size} slots")
        assigned[key] = slot
    return assigned


def runtime_ops(current: Applied, target: Applied) -> tuple[Op, ...]:
    """The runtime commands turning ``current`` into ``target`` (same shape).

    Order matters and is fixed: every map entry that goes away is deleted and every freed slot
    parked first, then addresses change, then new slots are readied before their map entries
    point at them. At no point does a key route to a slot holding someone else's address.
    """
    assert current.shape == target.shape
    removals: list[Op] = []
    changes: list[Op] = []
    additions: list[Op] = []
    for pool in POOLS:
        before = current.owners(pool)
        after = target.owners(pool)
        # Only the slots whose owner or address differ (a set operation in C, not a walk over
        # every slot): an arrival among thousands of routes costs its own commands only.
        touched = sorted({slot for slot, _ in before.items() ^ after.items()})
        for slot in touched:
            was, now = before.get(slot), after.get(slot)
            if was is None:
                continue
            if now is not None and now[0] == was[0]:
                if now[1] != was[1]:
                    changes.append(SetAddr(slot_server(pool, slot), now[1]))
                continue
            # Freed, or handed to another route: parked first, whatever comes next.
            server = slot_server(pool, slot)
            removals += [
                SetState(server, "maint"),
                SetAddr(server, PLACEHOLDER),
                ShutdownSessions(server),
            ]
        for slot in touched:
            was, now = before.get(slot), after.get(slot)
            if now is None or (was is not None and was[0] == now[0]):
                continue
            server = slot_server(pool, slot)
            additions += [SetAddr(server, now[1]), SetState(server, "ready")]
    map_removals, map_changes, map_additions = _map_ops(
        "hosts", current.hosts_map(), target.hosts_map()
    )
    port_removals, port_changes, port_additions = _map_ops(
        "ports", current.ports_map(), target.ports_map()
    )
    return tuple(
        map_removals
        + port_removals
        + removals
        + changes
        + additions
        + map_changes
        + port_changes
        + map_additions
        + port_additions
    )


def _map_ops(
    name: MapName, before: Mapping[str, str], after: Mapping[str, str]
) -> tuple[list[Op], list[Op], list[Op]]:
    touched = {key for key, _ in before.items() ^ after.items()}
    removals: list[Op] = [MapDel(name, key) for key in sorted(touched) if key not in after]
    changes: list[Op] = [
        MapSet(name, key, after[key]) for key in sorted(touched) if key in before and key in after
    ]
    additions: list[Op] = [MapAdd(name, key, after[key]) for key in sorted(touched - before.keys())]
    return removals, changes, additions


def routes_of(applied: Applied) -> Iterable[tuple[str, Target]]:
    """Every (host or port, target) HAProxy routes, for logs and tests."""
    for subdomain, target in sorted(applied.routing.http.items()):
        yield applied.routing.host(subdomain), target
    for port, target in sorted(applied.routing.tcp.items()):
        yield str(port), target
