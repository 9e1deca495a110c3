"""The slot plan: property-tested against a model of HAProxy's runtime state.

The model applies runtime operations exactly as HAProxy does (``add map`` adds a duplicate when
the key exists, so the plan must never do that; ``set map``/``del map`` need the key), and checks
after every single operation that each map entry leads to a ready slot holding that route's own
address, old or new: at no moment, not even halfway through a batch, can a subdomain or port
reach someone else's container.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.haproxy.plan import (
    PLACEHOLDER,
    POOLS,
    Applied,
    MapAdd,
    MapDel,
    MapSet,
    Op,
    SetAddr,
    SetState,
    ShutdownSessions,
    SlotPolicy,
    http_backend,
    plan,
    plan_in_place,
    slot_server,
    tcp_backend,
)
from controllers.haproxy.routes import Routing, Target

POLICY = SlotPolicy(http=4, tcp=4, web=2, tcp_max=8)
PORTS = range(20000, 20008)


@dataclass
class FakeHAProxy:
    """Servers (address, ready) and maps, as the runtime API changes them."""

    servers: dict[str, tuple[str, bool]] = field(default_factory=dict)
    maps: dict[str, dict[str, str]] = field(default_factory=lambda: {"hosts": {}, "ports": {}})

    @classmethod
    def loaded(cls, applied: Applied) -> FakeHAProxy:
        """What HAProxy runs right after loading the rendered files of ``applied``."""
        fake = cls()
        for pool in POOLS:
            owners = applied.owners(pool)
            for slot in range(applied.shape.size(pool)):
                owner = owners.get(slot)
                fake.servers[slot_server(pool, slot)] = (
                    (owner[1], True) if owner else (PLACEHOLDER, False)
                )
        fake.maps["hosts"] = applied.hosts_map()
        fake.maps["ports"] = applied.ports_map()
        return fake

    def apply(self, op: Op) -> None:
        if isinstance(op, SetAddr):
            self.servers[op.server] = (op.address, self.servers[op.server][1])
        elif isinstance(op, SetState):
            self.servers[op.server] = (self.servers[op.server][0], op.state == "ready")
        elif isinstance(op, ShutdownSessions):
            assert op.server in self.servers
        elif isinstance(op, MapAdd):
            assert op.key not in self.maps[op.map], f"add map would duplicate {op.key}"
            self.maps[op.map][op.key] = op.value
        elif isinstance(op, MapSet):
            assert op.key in self.maps[op.map]
            self.maps[op.map][op.key] = op.value
        else:
            assert isinstance(op, MapDel)
            assert op.key in self.maps[op.map]
            del self.maps[op.map][op.key]


def assert_never_misroutes(fake: FakeHAProxy, before: Applied, after: Applied) -> None:
    for state in (before, after):
        assert state.routing.domain == before.routing.domain
    allowed: dict[str, set[str]] = {}
    for applied in (before, after):
        for sub, target in applied.routing.http.items():
            allowed.setdefault(applied.routing.host(sub), set()).add(target.address)
        for port, target in applied.routing.tcp.items():
            allowed.setdefault(str(port), set()).add(target.address)
    for name, entries in fake.maps.items():
        for key, backend in entries.items():
            server = f"{backend}/s"
            address, ready = fake.servers[server]
            assert ready, f"{name} {key} -> {server}, which is not ready"
            assert address in allowed[key], f"{key} reaches {address}, not its own container"


@st.composite
def routings(draw: st.DrawFn, domain: str = "m.test") -> Routing:
    users = draw(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=8))
    http: dict[str, Target] = {}
    tcp: dict[int, Target] = {}
    for user in users:
        host_octet = draw(st.integers(1, 3))
        address = f"10.0.0.{host_octet}:{draw(st.integers(20000, 20003))}"
        for role in draw(st.lists(st.sampled_from(["hmi", "broker"]), unique=True, max_size=2)):
            http[(role + user) * 4 + "x" * 8] = Target(user, role, address)
        if draw(st.booleans()):
            port = draw(st.sampled_from(PORTS))
            tcp.setdefault(port, Target(user, "core", address))
    web = draw(
        st.lists(
            st.sampled_from(["10.1.0.1:4000", "10.1.0.2:4000", "[::1]:4000"]),
            unique=True,
            max_size=3,
        )
    )
    return Routing(domain=domain, main_port=8080, web_app=tuple(sorted(web)), http=http, tcp=tcp)


def check_applied(applied: Applied, routing: Routing) -> None:
    """Every route has a slot, slots are distinct and inside their pool."""
    assert applied.routing == routing
    assert set(applied.http) == set(routing.http)
    assert set(applied.tcp) == set(routing.tcp)
    assert set(applied.web) == set(routing.web_app)
    for pool in POOLS:
        slots = list(applied.owners(pool))
        assert len(slots) == applied.used(pool)
        assert all(0 <= s < applied.shape.size(pool) for s in slots)


@settings(max_examples=150, deadline=None)
@given(st.lists(routings(), min_size=1, max_size=8))
def test_any_sequence_of_tables_converges_and_never_misroutes(tables: list[Routing]) -> None:
    current = plan(None, tables[0], POLICY).target
    check_applied(current, tables[0])
    fake = FakeHAProxy.loaded(current)
    for table in tables[1:]:
        step = plan(current, table, POLICY)
        check_applied(step.target, table)
        if step.reload is not None:
            assert step.reload == "slots"
            assert step.target.generation == current.generation + 1
            fake = FakeHAProxy.loaded(step.target)
        else:
            for op in step.ops:
                fake.apply(op)
                assert_never_misroutes(fake, current, step.target)
            assert fake == FakeHAProxy.loaded(step.target)
            assert step.target.generation == current.generation
        current = step.target
        # Idempotent: planning again has nothing to do.
        assert plan(current, table, POLICY).nothing_to_do


@settings(max_examples=100, deadline=None)
@given(routings(), routings())
def test_routes_that_stay_keep_their_slot(first: Routing, second: Routing) -> None:
    current = plan(None, first, POLICY).target
    step = plan(current, second, POLICY)
    if step.reload is None:
        for sub in set(first.http) & set(second.http):
            assert step.target.http[sub] == current.http[sub]
        for port in set(first.tcp) & set(second.tcp):
            assert step.target.tcp[port] == current.tcp[port]


def test_pools_grow_with_headroom_and_only_when_crowded() -> None:
    policy = SlotPolicy(http=1024, tcp=8, web=2, tcp_max=1000)
    size, reloads = policy.size_for("http", 0), []
    for used in range(1, 3001):
        if policy.crowded("http", used, size):
            size = policy.size_for("http", used)
            reloads.append((used, size))
    # 1,000 users of 3 HTTP routes each arriving from the default 1,024 slots: three reloads,
    # each when the pool passed 90% full, leaving it under 60% full.
    assert reloads == [(922, 1792), (1613, 3072), (2765, 4864)]
    assert all(0.5 <= used / size <= 0.6 for used, size in reloads)


def test_plan_reloads_for_slots_only_past_the_high_water_mark() -> None:
    policy = SlotPolicy(http=256, tcp=8, web=2, tcp_max=1000)

    def table(n: int) -> Routing:
        http = {f"{i:016d}": Target(f"u{i}", "hmi", f"10.0.0.1:{10000 + i}") for i in range(n)}
        return Routing("m.test", 8080, http=http)

    current = plan(None, table(200), policy).target
    assert current.shape.http_slots == 512
    assert plan(current, table(460), policy).reload is None
    step = plan(current, table(461), policy)
    assert (step.reload, step.target.shape.http_slots) == ("slots", 1024)
    # A reload for another reason also gives back what emptied.
    step = plan(step.target, table(10), policy, force="periodic")
    assert step.target.shape.http_slots == 256


def test_tcp_pool_never_exceeds_the_port_range() -> None:
    policy = SlotPolicy(http=8, tcp=1024, web=2, tcp_max=10)
    tcp = {20000 + i: Target(f"u{i}", "core", f"10.0.0.1:{i + 1}") for i in range(10)}
    applied = plan(None, Routing("m.test", 8080, tcp=tcp), policy).target
    assert applied.shape.tcp_slots == 10
    # A full range is not "crowded": it cannot grow, and needs no reload.
    assert plan(applied, Routing("m.test", 8080, tcp=tcp), policy).nothing_to_do


def test_a_shape_change_reloads_and_a_forced_reload_says_why() -> None:
    table = Routing("m.test", 8080, http={"a" * 16: Target("a", "hmi", "10.0.0.1:80")})
    current = plan(None, table, POLICY).target
    assert plan(current, replace(table, domain="n.test"), POLICY).reload == "shape"
    assert plan(current, replace(table, main_port=8081), POLICY).reload == "shape"
    assert plan(current, table, POLICY, force="periodic").reload == "periodic"
    moved = replace(table, http={"a" * 16: Target("a", "hmi", "10.0.0.2:80")})
    assert plan(current, moved, POLICY, mode="reload").reload == "change"
    assert plan(current, table, POLICY, mode="reload").nothing_to_do


def test_a_slot_handed_to_another_route_is_parked_first() -> None:
    old = Routing("m.test", 8080, http={"a" * 16: Target("a", "hmi", "10.0.0.1:80")})
    new = Routing("m.test", 8080, http={"b" * 16: Target("b", "hmi", "10.0.0.2:80")})
    current = plan(None, old, POLICY).target
    step = plan(current, new, POLICY)
    slot = http_backend(0) + "/s"
    assert step.ops == (
        MapDel("hosts", "a" * 16 + ".m.test"),
        SetState(slot, "maint"),
        SetAddr(slot, PLACEHOLDER),
        ShutdownSessions(slot),
        SetAddr(slot, "10.0.0.2:80"),
        SetState(slot, "ready"),
        MapAdd("hosts", "b" * 16 + ".m.test", http_backend(0)),
    )


def test_in_place_keeps_the_old_shape_and_admits_what_fits() -> None:
    small = SlotPolicy(http=2, tcp=2, web=1, tcp_max=2)
    first = Routing("m.test", 8080, http={"a" * 16: Target("a", "hmi", "10.0.0.1:80")})
    current = plan(None, first, small).target
    crowded = Routing(
        "n.test",
        9090,
        http={
            "a" * 16: Target("a", "hmi", "10.0.0.1:80"),
            "b" * 16: Target("b", "hmi", "10.0.0.2:80"),
            "c" * 16: Target("c", "hmi", "10.0.0.3:80"),
        },
        tcp={20000: Target("a", "core", "10.0.0.1:1")},
    )
    assert plan(current, crowded, small).reload == "shape"
    step = plan_in_place(current, crowded)
    assert step.reload is None
    assert step.target.shape == current.shape
    assert step.target.routing.domain == "m.test"
    assert set(step.target.http) == {"a" * 16, "b" * 16}
    assert step.target.http["a" * 16] == current.http["a" * 16]
    assert set(step.target.tcp) == {20000}


def test_too_many_routes_for_a_pool_is_an_error_not_a_silent_drop() -> None:
    from controllers.haproxy import plan as plan_module

    with pytest.raises(ValueError, match="do not fit"):
        plan_module._keep_or_take({"a": 1, "b": 2}, {}, 1)
    assert tcp_backend(3) == "tcp_00003"
