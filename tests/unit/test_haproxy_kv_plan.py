"""haproxy-kv's pure part: reservations (unique, stable, bounded) and routes."""

from __future__ import annotations

import random
import re
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from controllers.api.allocations import ServiceAddress, UserAllocation
from controllers.api.haproxy import RouteReservation, UserRoutes
from controllers.haproxy_kv import (
    ReservationPlan,
    new_subdomain,
    plan_reservation,
    plan_routes,
    web_app_plan,
)
from reconciler.clients.consul import HealthCheck, ServiceInstance

ALLOC = "3a1f9d3e-1111-4222-8333-444455556666"


def allocation(address: str = "10.0.0.5", **extra: str) -> UserAllocation:
    services = {
        "hmi": ServiceAddress(address=address, port=21000, route="http"),
        "broker": ServiceAddress(address=address, port=21001, route="http"),
        "core": ServiceAddress(address=address, port=21002, route="tcp"),
    }
    for role, route in extra.items():
        services[role] = ServiceAddress(address=address, port=21010, route=route)  # type: ignore[arg-type]
    return UserAllocation(services=services, job="core-hmi-ada", allocation=ALLOC, node="n1")


def reserve(
    user: str,
    current: RouteReservation | None = None,
    *,
    ports: range = range(20000, 20010),
    port_owners: dict[int, str] | None = None,
    subdomain_owners: dict[str, str] | None = None,
    alloc: UserAllocation | None = None,
    rng: random.Random | None = None,
) -> ReservationPlan:
    rng = rng or random.Random(1)
    return plan_reservation(
        user,
        alloc or allocation(),
        current,
        port_owners=port_owners or {},
        subdomain_owners=subdomain_owners or {},
        ports=ports,
        make_subdomain=lambda: "".join(
            rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(16)
        ),
        pick=rng.choice,
    )


def test_new_subdomains_are_16_unguessable_characters() -> None:
    names = {new_subdomain() for _ in range(2000)}
    assert len(names) == 2000
    assert all(re.fullmatch(r"[a-z0-9]{16}", n) for n in names)
    assert re.fullmatch(r"[a-z0-9]{40}", new_subdomain(40))


def test_a_new_user_gets_a_subdomain_per_http_service_and_a_port_per_tcp_service() -> None:
    plan = reserve("ada")
    assert set(plan.reservation.subdomains) == {"hmi", "broker"}
    assert set(plan.reservation.tcp_ports) == {"core"}
    assert plan.reservation.tcp_ports["core"] in range(20000, 20010)
    assert len(plan.claims) == 3
    assert plan.exhausted == ()


def test_what_a_user_holds_is_kept_and_claims_are_not_asked_for_again() -> None:
    first = reserve("ada").reservation
    owners = dict.fromkeys(first.tcp_ports.values(), "ada")
    subs = dict.fromkeys(first.subdomains.values(), "ada")
    again = reserve(
        "ada", first, port_owners=owners, subdomain_owners=subs, alloc=allocation("10.9.9.9")
    )
    assert again.reservation == first  # the allocation moved: same names and port
    assert again.claims == []


def test_a_role_that_stops_keeps_its_values() -> None:
    first = reserve("ada").reservation
    only_core = UserAllocation(
        services={"core": ServiceAddress(address="10.0.0.5", port=1, route="tcp")},
        job="core-hmi-ada",
        allocation=ALLOC,
        node="n1",
    )
    assert reserve("ada", first, alloc=only_core).reservation == first


def test_lost_claims_are_asked_for_again_and_stolen_values_replaced() -> None:
    first = reserve("ada").reservation
    port = first.tcp_ports["core"]
    hmi = first.subdomains["hmi"]
    # Claim keys lost (deleted by hand): the same values are claimed again.
    regained = reserve("ada", first)
    assert regained.reservation == first
    assert len(regained.claims) == 3
    # Another user holds ada's port and hmi subdomain (a damaged store): ada gets new ones.
    fixed = reserve("ada", first, port_owners={port: "bob"}, subdomain_owners={hmi: "bob"})
    assert fixed.reservation.tcp_ports["core"] != port
    assert fixed.reservation.subdomains["hmi"] != hmi
    assert fixed.reservation.subdomains["broker"] == first.subdomains["broker"]


def test_a_port_outside_a_changed_range_is_replaced() -> None:
    first = reserve("ada", ports=range(20000, 20001)).reservation
    moved = reserve("ada", first, ports=range(30000, 30005)).reservation
    assert moved.tcp_ports["core"] in range(30000, 30005)
    assert moved.subdomains == first.subdomains


def test_an_exhausted_range_leaves_the_tcp_role_out_and_says_so() -> None:
    full = {p: f"user{p}" for p in range(20000, 20003)}
    plan = reserve("ada", ports=range(20000, 20003), port_owners=full)
    assert plan.exhausted == ("core",)
    assert plan.reservation.tcp_ports == {}
    assert set(plan.reservation.subdomains) == {"hmi", "broker"}
    # Freed port: the next attempt gets it.
    del full[20001]
    assert reserve(
        "ada", plan.reservation, ports=range(20000, 20003), port_owners=full
    ).reservation.tcp_ports == {"core": 20001}


def test_a_colliding_random_subdomain_is_drawn_again() -> None:
    names = iter(["a" * 16, "a" * 16, "b" * 16, "c" * 16])
    plan = plan_reservation(
        "ada",
        allocation(),
        None,
        port_owners={},
        subdomain_owners={"a" * 16: "bob"},
        ports=range(1, 3),
        make_subdomain=lambda: next(names),
    )
    assert sorted(plan.reservation.subdomains.values()) == ["b" * 16, "c" * 16]


def test_routes_follow_the_allocation_and_the_reservation() -> None:
    reservation = RouteReservation(
        subdomains={"hmi": "h" * 16, "broker": "b" * 16, "gone": "g" * 16},
        tcp_ports={"core": 20005},
    )
    routes = plan_routes(allocation("fd00::5", logs="none"), reservation)
    assert routes == UserRoutes.model_validate(
        {
            "http": [
                {"subdomain": "b" * 16, "address": "[fd00::5]:21001", "role": "broker"},
                {"subdomain": "h" * 16, "address": "[fd00::5]:21000", "role": "hmi"},
            ],
            "tcp": [{"port": 20005, "address": "[fd00::5]:21002", "role": "core"}],
        }
    )


def web(sid: str, address: str, port: int, status: str = "passing") -> ServiceInstance:
    return ServiceInstance(
        node="n",
        node_address=address,
        service_id=sid,
        service="manticore-service",
        address=address,
        port=port,
        tags=(),
        meta=MappingProxyType({}),
        checks=(HealthCheck("c", "c", status, sid),),
        status=status,  # type: ignore[arg-type]
    )


def test_web_app_addresses_are_indexed_sorted_and_only_passing() -> None:
    instances = [
        web("a", "10.0.0.2", 4000),
        web("b", "10.0.0.1", 4000),
        web("c", "10.0.0.3", 4000, "critical"),
        web("d", "not-an-ip", 4000),
    ]
    current = {
        "haproxy/webAppAddresses/0": b"10.0.0.1:4000",
        "haproxy/webAppAddresses/5": b"10.0.0.9:4000",
        "haproxy/webAppAddresses/junk": b"x",
    }
    ops, addresses, rejected = web_app_plan(instances, current)
    assert addresses == ["10.0.0.1:4000", "10.0.0.2:4000"]
    assert rejected == ["d: 'not-an-ip':4000"]
    assert [(op.verb, op.key, op.value) for op in ops] == [
        ("set", "haproxy/webAppAddresses/1", b"10.0.0.2:4000"),
        ("delete", "haproxy/webAppAddresses/5", None),
        ("delete", "haproxy/webAppAddresses/junk", None),
    ]
    applied = {
        "haproxy/webAppAddresses/0": b"10.0.0.1:4000",
        "haproxy/webAppAddresses/1": b"10.0.0.2:4000",
    }
    assert web_app_plan(instances, applied)[0] == []


# -- invariants under many users, departures and a shared, possibly stale view ------------------


class Reservations(RuleBasedStateMachine):
    """Users come and go; each reservation is committed as Consul would (claims with cas=0)."""

    RANGE = range(20000, 20012)

    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random(7)
        self.claims: dict[str, str] = {}  # claim key -> user: what Consul holds
        self.reservations: dict[str, RouteReservation] = {}
        self.stale: dict[str, str] = {}  # a cache that may lag

    def _owners(self, view: dict[str, str]) -> tuple[dict[int, str], dict[str, str]]:
        ports = {int(k.split("/")[-1]): u for k, u in view.items() if "/tcp/" in k}
        subs = {k.split("/")[-1]: u for k, u in view.items() if "/subdomains/" in k}
        return ports, subs

    def _commit(self, user: str, plan: ReservationPlan) -> bool:
        if any(self.claims.get(c, user) != user for c in plan.claims):
            return False  # Consul refuses: some cas=0 claim exists
        if any(c in self.claims for c in plan.claims):
            return False  # cas=0 on a key that exists, even our own: refused too
        for claim in plan.claims:
            self.claims[claim] = user
        self.reservations[user] = plan.reservation
        return True

    @rule(user=st.sampled_from([f"u{i}" for i in range(16)]), stale=st.booleans())
    def arrive_or_reconcile(self, user: str, stale: bool) -> None:
        for _ in range(8):
            view = self.stale if stale else self.claims
            ports, subs = self._owners(view)
            plan = plan_reservation(
                user,
                allocation(),
                self.reservations.get(user),
                port_owners=ports,
                subdomain_owners=subs,
                ports=self.RANGE,
                make_subdomain=lambda: "".join(self.rng.choice("ab") for _ in range(16)),
                pick=self.rng.choice,
            )
            if self._commit(user, plan):
                return
            stale = False  # the controller re-reads the contested claims

    @precondition(lambda self: bool(self.reservations))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        user = data.draw(st.sampled_from(sorted(self.reservations)))
        del self.reservations[user]
        self.claims = {k: u for k, u in self.claims.items() if u != user}

    @rule()
    def cache_catches_up(self) -> None:
        self.stale = dict(self.claims)

    @invariant()
    def no_port_or_subdomain_belongs_to_two_users(self) -> None:
        seen_ports: dict[int, str] = {}
        seen_subs: dict[str, str] = {}
        for user, res in self.reservations.items():
            for port in res.tcp_ports.values():
                assert port in self.RANGE
                assert seen_ports.setdefault(port, user) == user
                assert self.claims[f"manticore/routes/tcp/{port}"] == user
            for sub in res.subdomains.values():
                assert seen_subs.setdefault(sub, user) == user
                assert self.claims[f"manticore/routes/subdomains/{sub}"] == user

    @invariant()
    def a_user_without_a_port_means_the_range_is_full(self) -> None:
        without = [u for u, r in self.reservations.items() if "core" not in r.tcp_ports]
        if without:
            used = sum(len(r.tcp_ports) for r in self.reservations.values())
            assert used == len(self.RANGE)


Reservations.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestReservations = Reservations.TestCase


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.sampled_from(["http", "tcp", "none"]), max_size=4))
def test_plan_idempotence_applying_a_plan_then_planning_again_yields_nothing(
    seed: int, extra_routes: list[str]
) -> None:
    alloc = allocation(**{f"x{i}": r for i, r in enumerate(extra_routes)})
    rng = random.Random(seed)
    first = reserve("ada", alloc=alloc, rng=rng)
    claimed_ports = dict.fromkeys(first.reservation.tcp_ports.values(), "ada")
    claimed_subs = dict.fromkeys(first.reservation.subdomains.values(), "ada")
    second = reserve(
        "ada",
        first.reservation,
        alloc=alloc,
        port_owners=claimed_ports,
        subdomain_owners=claimed_subs,
        rng=rng,
    )
    assert second.reservation == first.reservation
    assert second.claims == []
    assert plan_routes(alloc, second.reservation) == plan_routes(alloc, first.reservation)


def test_claims_read_the_cache_lazily_and_learn_what_a_fresh_read_said() -> None:
    from controllers.haproxy_kv import claims_of
    from reconciler.clients.consul import KVEntry

    cache = {
        "manticore/routes/tcp/20001": KVEntry("manticore/routes/tcp/20001", b"ada"),
        "manticore/routes/tcp/junk": KVEntry("manticore/routes/tcp/junk", b"x"),
        "manticore/routes/subdomains/" + "a" * 16: KVEntry("s", b"bob"),
        "manticore/routes/data/ada": KVEntry("manticore/routes/data/ada", b"{}"),
    }
    ports, subdomains = claims_of(cache)
    assert ports.get(20001) == "ada"
    assert ports.get(20002) is None
    assert subdomains["a" * 16] == "bob"
    assert sorted(ports) == [20001]
    assert len(subdomains) == 1
    ports.learn(20002, "carol")  # the cache was behind: a fresh read found carol's claim
    ports.learn(20001, None)  # ...and ada's is gone
    assert ports.get(20002) == "carol"
    assert ports.get(20001) is None
    assert sorted(ports) == [20002]
    plan = reserve("dan", ports=range(20001, 20003), port_owners=ports)
    assert plan.reservation.tcp_ports == {"core": 20001}


class NoListing(dict[int, str]):
    """Claims that may be looked up but never listed: choosing a port must not walk them."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the claims were listed")

    def keys(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the claims were listed")


def test_a_free_port_is_found_by_lookups_not_by_listing_every_claim() -> None:
    from controllers.haproxy_kv import free_port

    ports = range(40000, 52000)
    owners = NoListing({p: f"u{p}" for p in range(40000, 50000)})
    rng = random.Random(7)
    for _ in range(50):
        port = free_port(ports, owners, set(), rng.choice)
        assert port is not None
        assert port >= 50000
    # Nearly full: the probes miss, the range (not the claims) is scanned, the one free port is
    # found; full: None.
    owners = NoListing({p: "x" for p in ports if p != 45678})
    assert free_port(ports, owners, set(), rng.choice) == 45678
    assert free_port(ports, owners, {45678}, rng.choice) is None
    assert free_port(range(0), {}, set(), rng.choice) is None
