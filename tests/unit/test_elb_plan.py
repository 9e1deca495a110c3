"""The elb controller's pure plan: spread, sticky, add before remove, never above the quota."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.api.elb import ListenerRecord, UserListener
from controllers.api.haproxy import UserRoutes
from controllers.elb import (
    Demand,
    ELBPlan,
    Layout,
    demand_of,
    desired_records,
    fixed_listeners,
    plan_listeners,
    record_ops,
    stale_record_ops,
)
from controllers.settings import ELBSettings, HAProxySettings
from reconciler.clients.consul import KVEntry
from reconciler.clients.elb import Listener, LoadBalancer
from reconciler.kv import encode

HTTP = Listener(80, 8080, "HTTP", "HTTP")
WS = Listener(2020, 8080, "TCP", "TCP")
RANGE = range(20000, 20100)


def layout(quota: int = 10) -> Layout:
    return Layout(fixed=(HTTP, WS), managed=RANGE, quota=quota)


def lb(name: str, *listeners: Listener) -> LoadBalancer:
    return LoadBalancer(
        name, f"{name}.elb.example", "internet-facing", tuple(sorted(listeners)), ()
    )


def tcp(port: int) -> Listener:
    return Listener(port, port, "TCP", "TCP")


def user(name: str, port: int, arrival: int = 0) -> Demand:
    return Demand(name, (UserListener(role="core", port=port, instance_port=port),), arrival)


def apply(
    balancers: Mapping[str, LoadBalancer | None], plan: ELBPlan, quota: int
) -> dict[str, LoadBalancer | None]:
    """AWS's view after the plan: creates first, then deletes, checking the quota at each step."""
    out: dict[str, LoadBalancer | None] = {}
    for name, current in balancers.items():
        if current is None:
            out[name] = None
            continue
        have = {lst.load_balancer_port: lst for lst in current.listeners}
        for lst in plan.creates.get(name, []):
            assert lst.load_balancer_port not in have, "created a listener that exists"
            have[lst.load_balancer_port] = lst
        assert len(have) <= quota, f"{name}: {len(have)} listeners above the quota {quota}"
        for port in plan.deletes.get(name, []):
            have.pop(port, None)
        out[name] = lb(name, *have.values())
    return out


def test_fixed_listeners_follow_the_configuration() -> None:
    haproxy = HAProxySettings()
    plain = ELBSettings.model_validate({"ELB_MANTICORE_NAME": ("m",), "ELB_WS_PORT": 2020})
    assert fixed_listeners(plain, haproxy) == (
        Listener(80, 8080, "HTTP", "HTTP"),
        Listener(2020, 8080, "TCP", "TCP"),
    )
    arn = "arn:aws:acm:us-east-1:123456789012:certificate/abc"
    secure = ELBSettings.model_validate(
        {
            "ELB_MANTICORE_NAME": ("m",),
            "ELB_WS_PORT": 2020,
            "ELB_SSL_PORT": 8443,
            "ELB_ENCRYPT_HTTP": True,
            "ELB_ENCRYPT_WS": True,
            "SSL_CERTIFICATE_ARN": arn,
        }
    )
    assert fixed_listeners(secure, haproxy) == (
        Listener(443, 8080, "HTTPS", "HTTP", arn),
        Listener(2020, 8080, "SSL", "TCP", arn),
        Listener(8443, 8080, "SSL", "TCP", arn),
    )


def test_a_fresh_load_balancer_gets_fixed_and_user_listeners_in_one_call() -> None:
    balancers = {"a": lb("a")}
    plan = plan_listeners([user("ada", 20001), user("bob", 20002)], {}, balancers, layout())
    assert plan.creates == {"a": [HTTP, WS, tcp(20001), tcp(20002)]}
    assert plan.deletes == {"a": []}
    assert plan.assignments == {"ada": "a", "bob": "a"}


def test_matching_listeners_are_never_touched_and_stale_ones_removed() -> None:
    balancers = {"a": lb("a", HTTP, WS, tcp(20001), tcp(20003), Listener(9999, 9999))}
    plan = plan_listeners([user("ada", 20001), user("bob", 20002)], {}, balancers, layout())
    assert plan.creates == {"a": [tcp(20002)]}
    assert plan.deletes == {"a": [20003]}  # 9999 is not ours: left alone
    assert plan.foreign == {"a": [9999]}


def test_a_hand_edited_listener_on_a_managed_port_is_replaced_over_two_passes() -> None:
    balancers = {"a": lb("a", HTTP, WS, Listener(20001, 31000))}
    first = plan_listeners([user("ada", 20001)], {}, balancers, layout())
    assert first.deletes == {"a": [20001]}
    assert first.creates == {"a": []}
    assert first.replaced == {"a": [20001]}
    assert not first.ready("ada")
    second = plan_listeners([user("ada", 20001)], {}, apply(balancers, first, 10), layout())
    assert second.creates == {"a": [tcp(20001)]}
    assert second.ready("ada")


def test_users_are_spread_over_load_balancers_and_stay_where_they_are() -> None:
    balancers = {"a": lb("a", HTTP, WS, tcp(20001)), "b": lb("b")}
    demands = [user("ada", 20001, 1), user("bob", 20002, 2), user("cy", 20003, 3)]
    plan = plan_listeners(demands, {}, balancers, layout())
    assert plan.assignments["ada"] == "a"  # her listener is there
    assert plan.assignments["bob"] == "b"  # b has the most room
    assert plan.assignments["cy"] in {"a", "b"}
    # The record is authoritative among load balancers that hold the port.
    both = {"a": lb("a", HTTP, WS, tcp(20001)), "b": lb("b", HTTP, WS, tcp(20001))}
    rec = ListenerRecord(load_balancer="b", listeners=list(user("ada", 20001).listeners))
    again = plan_listeners([user("ada", 20001)], {"ada": rec}, both, layout())
    assert again.assignments == {"ada": "b"}
    assert again.deletes == {"a": [20001], "b": []}


def test_beyond_capacity_users_are_reported_in_arrival_order() -> None:
    balancers = {"a": lb("a", HTTP, WS), "b": lb("b", HTTP, WS)}
    demands = [user(f"u{i}", 20000 + i, arrival=100 - i) for i in range(6)]
    plan = plan_listeners(demands, {}, balancers, layout(quota=4))  # two user slots each
    assert sorted(plan.assignments) == ["u2", "u3", "u4", "u5"]  # the first to arrive
    assert sorted(plan.over_capacity) == ["u0", "u1"]
    assert plan.capacity == {"a": 2, "b": 2}


def test_add_before_remove_never_goes_above_the_quota() -> None:
    # Full: ada leaves and bob arrives in the same pass. Creating bob first would make 4 > 3.
    balancers = {"a": lb("a", HTTP, WS, tcp(20001))}
    plan = plan_listeners([user("bob", 20002)], {}, balancers, layout(quota=3))
    assert plan.creates == {"a": []}
    assert plan.deletes == {"a": [20001]}
    assert plan.deferred == {"a": ["bob"]}
    assert not plan.ready("bob")
    after = apply(balancers, plan, 3)
    second = plan_listeners([user("bob", 20002)], {}, after, layout(quota=3))
    assert second.creates == {"a": [tcp(20002)]}
    assert second.ready("bob")


def test_a_missing_load_balancer_has_no_capacity() -> None:
    plan = plan_listeners([user("ada", 20001)], {}, {"gone": None, "b": lb("b")}, layout())
    assert plan.assignments == {"ada": "b"}
    assert "gone" not in plan.creates


def test_a_learned_quota_limits_one_load_balancer() -> None:
    balancers = {"a": lb("a", HTTP, WS), "b": lb("b", HTTP, WS)}
    plan = plan_listeners(
        [user("ada", 20001), user("bob", 20002)], {}, balancers, layout(), quotas={"a": 2}
    )
    assert plan.assignments == {"ada": "b", "bob": "b"}


def test_records_and_their_writes() -> None:
    balancers = {"a": lb("a", HTTP, WS, tcp(20001))}
    demands = {"ada": user("ada", 20001)}
    plan = plan_listeners(demands.values(), {}, balancers, layout())
    records = desired_records(plan, demands, balancers)
    assert records == {
        "ada": ListenerRecord(
            load_balancer="a", dns_name="a.elb.example", listeners=list(demands["ada"].listeners)
        )
    }
    current = {
        "manticore/elb/data/ada": KVEntry("manticore/elb/data/ada", encode(records["ada"])),
        "manticore/elb/data/gone": KVEntry("manticore/elb/data/gone", b"{}"),
    }
    assert record_ops(records, current) == []
    assert [op.key for op in stale_record_ops(records, current)] == ["manticore/elb/data/gone"]


def test_a_user_s_routes_become_their_listeners() -> None:
    routes = UserRoutes.model_validate(
        {"tcp": [{"port": 20005, "address": "10.0.0.1:21002", "role": "core"}]}
    )
    assert demand_of("ada", routes, 7, encrypt=True) == Demand(
        "ada",
        (UserListener(role="core", port=20005, instance_port=20005, protocol="SSL"),),
        7,
    )


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict[str, LoadBalancer | None], list[Demand], int]:
    quota = draw(st.integers(3, 8))
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    balancers: dict[str, LoadBalancer | None] = {}
    for name in names:
        if draw(st.integers(0, 9)) == 0:
            balancers[name] = None
            continue
        ports = draw(st.lists(st.sampled_from(list(RANGE[:30])), max_size=quota - 2, unique=True))
        fixed = [HTTP, WS] if draw(st.booleans()) else []
        balancers[name] = lb(name, *fixed, *(tcp(p) for p in ports))
    user_ports = draw(st.lists(st.sampled_from(list(RANGE[:30])), max_size=15, unique=True))
    demands = [user(f"u{p}", p, arrival=draw(st.integers(0, 5))) for p in user_ports]
    return balancers, demands, quota


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_applying_the_plan_converges_within_the_quota_and_then_plans_nothing(
    world: tuple[dict[str, LoadBalancer | None], list[Demand], int],
) -> None:
    balancers, demands, quota = world
    records: dict[str, ListenerRecord] = {}
    by_user = {d.user: d for d in demands}
    for _ in range(3):  # deferred creates and replacements take one more pass each
        plan = plan_listeners(demands, records, balancers, layout(quota))
        balancers = apply(balancers, plan, quota)  # asserts the quota at every step
        records = desired_records(plan, by_user, balancers)
    final = plan_listeners(demands, records, balancers, layout(quota))
    assert not final.changes, "applying the plan and planning again must yield nothing"
    # Every user is either on exactly one load balancer, or reported over capacity.
    for demand in demands:
        port = demand.listeners[0].port
        holders = [
            n
            for n, b in balancers.items()
            if b and any(x.load_balancer_port == port for x in b.listeners)
        ]
        if demand.user in final.over_capacity:
            assert holders == []
            room = sum(final.capacity.values()) - sum(
                len(d.listeners) for d in demands if d.user in final.assignments
            )
            assert room < len(demand.listeners)
        else:
            assert holders == [final.assignments[demand.user]]
            assert records[demand.user].load_balancer == holders[0]
    for _name, balancer in balancers.items():
        if balancer is not None:
            assert {HTTP, WS} <= set(balancer.listeners)
            assert len(balancer.listeners) <= quota
