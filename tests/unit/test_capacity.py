"""Free capacity as Nomad's scheduler counts it: usable nodes, live allocations, whole groups."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controllers.templates import JobTemplate, UserResources
from controllers.waitlist.capacity import (
    AllocInfo,
    NodeFree,
    NodeInfo,
    Placement,
    free_resources,
    node_usable,
    users_that_fit,
)

PER_USER = UserResources(cpu=150, memory_mb=128, disk_mb=50)
PLACEMENT = Placement(("dc1", "edge-*"), "default", frozenset({"raw_exec"}))


def node(id: str = "n1", **kw: object) -> NodeInfo:
    base: dict[str, object] = {
        "id": id,
        "status": "ready",
        "eligible": True,
        "draining": False,
        "datacenter": "dc1",
        "node_pool": "default",
        "drivers": frozenset({"docker", "raw_exec"}),
        "cpu": 1000,
        "memory_mb": 1024,
        "disk_mb": 1000,
    }
    base.update(kw)
    return NodeInfo(**base)  # type: ignore[arg-type]


def alloc(node_id: str = "n1", terminal: bool = False, cpu: int = 150) -> AllocInfo:
    return AllocInfo("a", node_id, "core-hmi-x", terminal, cpu, 128, 50)


def test_only_nodes_the_job_could_land_on_count() -> None:
    assert node_usable(node(), PLACEMENT)
    assert node_usable(node(datacenter="edge-7"), PLACEMENT)
    for bad in (
        node(status="down"),
        node(status="initializing"),
        node(eligible=False),
        node(draining=True),
        node(datacenter="dc2"),
        node(node_pool="gpu"),
        node(drivers=frozenset({"docker"})),
    ):
        assert not node_usable(bad, PLACEMENT), bad


def test_live_allocations_hold_their_share_terminal_ones_do_not() -> None:
    free = free_resources(
        [node("n1"), node("n2", status="down")],
        [alloc("n1"), alloc("n1", terminal=True), alloc("n2")],
        PLACEMENT,
    )
    assert free == [NodeFree("n1", 850, 896, 950)]
    assert users_that_fit(free, PER_USER) == 5  # 850 // 150


def test_a_group_is_placed_whole_on_one_node() -> None:
    # two nodes with room for 1.5 users each: 2 users, not 3
    free = [NodeFree("a", 225, 4096, 4096), NodeFree("b", 225, 4096, 4096)]
    assert users_that_fit(free, PER_USER) == 2
    # the tightest dimension decides; an overcommitted node counts 0, never negative
    assert users_that_fit([NodeFree("c", 10_000, 200, 10_000)], PER_USER) == 1
    assert users_that_fit([NodeFree("d", -300, 4096, 4096)], PER_USER) == 0


def test_placement_of_the_templates() -> None:
    docker = Placement.of(JobTemplate.load(), ("dc1", "dc2"))
    assert docker == Placement(("dc1", "dc2"), "default", frozenset({"docker"}))


@given(
    st.lists(
        st.tuples(st.integers(-500, 3000), st.integers(-500, 3000), st.integers(-500, 3000)),
        max_size=8,
    ),
    st.integers(1, 400),
    st.integers(1, 400),
    st.integers(0, 400),
)
def test_count_equals_placing_one_user_at_a_time(nodes, cpu, mem, disk) -> None:  # type: ignore[no-untyped-def]
    per = UserResources(cpu, mem, disk)
    free = [NodeFree(str(i), c, m, d) for i, (c, m, d) in enumerate(nodes)]
    room = [[c, m, d] for c, m, d in nodes]
    placed = 0
    while True:
        target = next((r for r in room if r[0] >= cpu and r[1] >= mem and r[2] >= disk), None)
        if target is None:
            break
        target[0] -= cpu
        target[1] -= mem
        target[2] -= disk
        placed += 1
        assert placed < 100_000
    assert users_that_fit(free, per) == placed
