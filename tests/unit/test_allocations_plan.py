"""The allocations controller's pure rule: which instances make a user's record."""

from __future__ import annotations

import uuid
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.allocations import (
    allocation_of,
    plan_allocation,
    user_of_instance,
    users_of_instance,
)
from controllers.api.allocations import UserAllocation
from reconciler.clients.consul import HealthCheck, ServiceInstance

ALLOC_A = "3a1f9d3e-1111-4222-8333-444455556666"
ALLOC_B = "7b2e8c4d-aaaa-4bbb-8ccc-ddddeeeeffff"
ROLES = {"hmi": ("http", 21000), "broker": ("http", 21001), "core": ("tcp", 21002)}


def instance(
    user: str = "ada",
    role: str = "hmi",
    *,
    alloc: str = ALLOC_A,
    status: str = "passing",
    route: str | None = None,
    port: int | None = None,
    address: str = "10.0.0.5",
    node: str = "node-1",
    meta: dict[str, str] | None = None,
    service: str | None = None,
    service_id: str | None = None,
) -> ServiceInstance:
    default_route, default_port = ROLES.get(role, ("none", 22000))
    name = service or f"core-hmi-{user}-{role}"
    sid = service_id or f"_nomad-task-{alloc}-core-{name}-{role}"
    tags = ("manticore", f"route-{route or default_route}")
    return ServiceInstance(
        node=node,
        node_address=address,
        service_id=sid,
        service=name,
        address=address,
        port=port if port is not None else default_port,
        tags=tags,
        meta=MappingProxyType(
            meta
            if meta is not None
            else {
                "manticore_user": user,
                "manticore_role": role,
                "manticore_route": route or default_route,
            }
        ),
        checks=(HealthCheck(f"_nomad-check-{role}", "alive", status, sid),),
        status=status,  # type: ignore[arg-type]
    )


def full(user: str = "ada", alloc: str = ALLOC_A, **kwargs: object) -> list[ServiceInstance]:
    return [instance(user, role, alloc=alloc, **kwargs) for role in ROLES]  # type: ignore[arg-type]


def test_every_passing_service_of_one_allocation_makes_the_record() -> None:
    plan = plan_allocation("ada", full(), requested=True)
    assert plan.rejected == ()
    assert plan.desired == UserAllocation.model_validate(
        {
            "services": {
                "hmi": {"address": "10.0.0.5", "port": 21000, "route": "http"},
                "broker": {"address": "10.0.0.5", "port": 21001, "route": "http"},
                "core": {"address": "10.0.0.5", "port": 21002, "route": "tcp"},
            },
            "job": "core-hmi-ada",
            "allocation": ALLOC_A,
            "node": "node-1",
        }
    )


def test_no_request_no_record_rogue_services_are_ignored() -> None:
    assert plan_allocation("ada", full(), requested=False).desired is None


def test_no_services_no_record() -> None:
    assert plan_allocation("ada", [], requested=True).desired is None


def test_an_allocation_without_every_required_role_is_not_published_yet() -> None:
    for missing in ROLES:
        partial = [i for i in full() if i.meta["manticore_role"] != missing]
        assert plan_allocation("ada", partial, requested=True).desired is None, missing
    custom = plan_allocation("ada", full()[:1], requested=True, required_roles=frozenset())
    assert custom.desired is not None
    assert set(custom.desired.services) == {"hmi"}


def test_one_critical_or_warning_service_withholds_the_record() -> None:
    for status in ("critical", "warning", "maintenance"):
        instances = [*full()[:2], instance("ada", "core", status=status)]
        assert plan_allocation("ada", instances, requested=True).desired is None, status


def test_a_fully_passing_replacement_allocation_is_used_when_the_old_one_fails() -> None:
    old = [*full(alloc=ALLOC_A)[:2], instance("ada", "core", alloc=ALLOC_A, status="critical")]
    new = full(alloc=ALLOC_B, node="node-2")
    plan = plan_allocation("ada", old + new, requested=True)
    assert plan.desired is not None
    assert (plan.desired.allocation, plan.desired.node) == (ALLOC_B, "node-2")


def test_the_recorded_allocation_is_kept_while_it_passes_so_routes_do_not_flap() -> None:
    both = full(alloc=ALLOC_A) + full(alloc=ALLOC_B, address="10.0.0.9")
    first = plan_allocation("ada", both, requested=True).desired
    assert first is not None
    for current_alloc in (ALLOC_A, ALLOC_B):
        current = first.model_copy(update={"allocation": current_alloc})
        again = plan_allocation("ada", both, requested=True, current=current).desired
        assert again is not None
        assert again.allocation == current_alloc


def test_extra_roles_with_route_none_are_recorded() -> None:
    instances = [*full(), instance("ada", "logs", route="none", port=22001)]
    plan = plan_allocation("ada", instances, requested=True)
    assert plan.desired is not None
    assert plan.desired.services["logs"].route == "none"


def test_bad_instances_are_rejected_with_a_reason_and_the_rest_still_counts() -> None:
    bad = [
        instance("ada", "core", route="udp", service_id=f"_nomad-task-{ALLOC_A}-x-1"),
        instance("ada", "hmi", address="not-an-ip", service_id=f"_nomad-task-{ALLOC_A}-x-2"),
        instance("ada", "broker", service_id="hand-registered"),
        instance("ada", "Bad Role", service="core-hmi-ada-Bad Role"),
        instance("ada", "x", meta={"manticore_user": "ada", "manticore_role": "y"}),
    ]
    plan = plan_allocation("ada", bad, requested=True)
    assert plan.desired is None
    assert sorted(r.reason for r in plan.rejected) == [
        "address",
        "allocation",
        "role",
        "role",
        "route",
    ]
    good = plan_allocation("ada", [*bad, *full(alloc=ALLOC_B)], requested=True)
    assert good.desired is not None
    assert good.desired.allocation == ALLOC_B
    assert len(good.rejected) == 5


def test_a_role_registered_twice_in_one_allocation_makes_it_unusable() -> None:
    twice = [*full(), instance("ada", "hmi", service_id=f"_nomad-task-{ALLOC_A}-other-hmi")]
    plan = plan_allocation("ada", twice, requested=True)
    assert plan.desired is None
    assert {r.reason for r in plan.rejected} == {"duplicate-role"}


def test_user_comes_from_meta_confirmed_by_the_name() -> None:
    # Ids and roles contain hyphens: "core-hmi-a-b-hmi" is user "a-b" only because meta says so.
    inst = instance("a-b", "hmi")
    assert user_of_instance(inst) == "a-b"
    assert users_of_instance(inst) == ["a-b"]
    liar = instance("ada", "hmi", meta={"manticore_user": "bob", "manticore_role": "hmi"})
    assert user_of_instance(liar) is None
    assert users_of_instance(instance("ada", meta={})) == []
    assert users_of_instance(instance("ada", meta={"manticore_user": "../x"})) == []


def test_allocation_id_from_nomad_service_id_or_meta() -> None:
    assert allocation_of(instance()) == ALLOC_A
    by_meta = instance(
        service_id="core-hmi-ada-hmi-1",
        meta={"manticore_user": "ada", "manticore_role": "hmi", "manticore_alloc_id": ALLOC_B},
    )
    assert allocation_of(by_meta) == ALLOC_B
    assert allocation_of(instance(service_id="core-hmi-ada-hmi-1")) is None


statuses = st.sampled_from(["passing", "passing", "passing", "warning", "critical"])


@st.composite
def worlds(draw: st.DrawFn) -> list[ServiceInstance]:
    allocs = draw(st.lists(st.uuids().map(str), min_size=0, max_size=3, unique=True))
    out: list[ServiceInstance] = []
    for alloc in allocs:
        roles = draw(st.lists(st.sampled_from([*ROLES, "file"]), min_size=1, unique=True))
        for role in roles:
            out.append(instance("ada", role, alloc=alloc, status=draw(statuses)))
    rogue = draw(st.booleans())
    if rogue:
        out.append(instance("ada", "hmi", service_id=f"rogue-{uuid.uuid4()}"))
    return out


@settings(max_examples=300, deadline=None)
@given(worlds(), st.booleans())
def test_a_record_only_ever_lists_one_fully_passing_allocation(
    instances: list[ServiceInstance], requested: bool
) -> None:
    plan = plan_allocation("ada", instances, requested=requested)
    if plan.desired is None:
        # Nothing usable: no request, or no allocation whose registered services all pass.
        def complete(alloc: str | None) -> bool:
            members = [j for j in instances if allocation_of(j) == alloc]
            roles = {j.meta["manticore_role"] for j in members}
            return set(ROLES) <= roles and all(j.passing for j in members)

        ok = {
            allocation_of(i) for i in instances if allocation_of(i) and complete(allocation_of(i))
        }
        assert not requested or not ok
        return
    assert requested
    members = [i for i in instances if allocation_of(i) == plan.desired.allocation]
    assert all(i.passing for i in members)
    assert set(plan.desired.services) == {i.meta["manticore_role"] for i in members}
    assert set(ROLES) <= set(plan.desired.services)
    # Idempotent: planning again with the record as current chooses the same record.
    again = plan_allocation("ada", instances, requested=True, current=plan.desired)
    assert again.desired == plan.desired
