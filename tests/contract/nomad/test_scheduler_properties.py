"""Properties of the pure scheduler: never over-commit, never reuse a port, place what fits."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from devstack.nomad.jobspec import canonicalize
from devstack.nomad.scheduler import ClusterView, NodeInfo, NodeUsage, Placement, place_group


def _job(count: int, cpu: int, mem: int, dynamic: int, static: list[int], distinct: bool) -> dict:
    network: dict[str, Any] = {
        "DynamicPorts": [{"Label": f"d{i}"} for i in range(dynamic)],
        "ReservedPorts": [{"Label": f"s{i}", "Value": v} for i, v in enumerate(static)],
    }
    raw = {
        "ID": "j",
        "TaskGroups": [
            {
                "Name": "g",
                "Count": count,
                "Networks": [network],
                "EphemeralDisk": {"SizeMB": 10},
                "Constraints": [{"Operand": "distinct_hosts", "RTarget": "true"}]
                if distinct
                else [],
                "Tasks": [
                    {"Name": "t", "Driver": "docker", "Resources": {"CPU": cpu, "MemoryMB": mem}}
                ],
            }
        ],
    }
    return canonicalize(raw)


class Cluster(RuleBasedStateMachine):
    """Jobs come and go on a small cluster; the scheduler's bookkeeping is checked throughout."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes = [
            NodeInfo(
                id=f"n{i}",
                name=f"n{i}",
                cpu=1000,
                memory_mb=1000,
                disk_mb=1000,
                min_port=20000,
                max_port=20040,
                ip=f"10.0.0.{i}",
            )
            for i in range(3)
        ]
        self.placed: dict[int, list[Placement]] = {}
        self.demand: dict[int, tuple[int, int]] = {}
        self.next_id = 0
        self.rng = random.Random(0)

    def _view(self) -> ClusterView:
        view = ClusterView(nodes=self.nodes)
        for jid, placements in self.placed.items():
            cpu, mem = self.demand[jid]
            for p in placements:
                used = view.usage.setdefault(p.node_id, NodeUsage())
                used.cpu += cpu
                used.memory_mb += mem
                used.disk_mb += p.disk_mb
                view.ports.setdefault(p.node_id, set()).update(x["Value"] for x in p.ports)
                node_ip = next(n.ip for n in self.nodes if n.id == p.node_id)
                view.ip_ports.setdefault(node_ip, set()).update(x["Value"] for x in p.ports)
        return view

    @rule(
        count=st.integers(1, 4),
        cpu=st.integers(1, 600),
        mem=st.integers(10, 600),
        dynamic=st.integers(0, 3),
        static=st.lists(st.sampled_from([8080, 8081, 9000]), max_size=2, unique=True),
        distinct=st.booleans(),
    )
    def submit(
        self, count: int, cpu: int, mem: int, dynamic: int, static: list[int], distinct: bool
    ) -> None:
        job = _job(count, cpu, mem, dynamic, static, distinct)
        group = job["TaskGroups"][0]
        result = place_group(self._view(), job, group, count, self.rng)
        jid = self.next_id
        self.next_id += 1
        self.demand[jid] = (cpu, mem)
        self.placed[jid] = result.placements
        if distinct:
            assert len({p.node_id for p in result.placements}) == len(result.placements)
        if result.failed is None:
            assert len(result.placements) == count
        else:
            assert result.failed["CoalescedFailures"] == count - len(result.placements) - 1
            # Nothing placeable was refused: every node was really filtered or exhausted.
            metric = result.failed
            assert metric["NodesFiltered"] + metric["NodesExhausted"] == metric["NodesEvaluated"]
            view = self._view()
            for p in result.placements:
                spread = view.job_allocs.setdefault(p.node_id, {})
                spread["g"] = spread.get("g", 0) + 1
            single = place_group(view, job, group, 1, random.Random(1))
            assert not single.placements

    @precondition(lambda self: bool(self.placed))
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        jid = data.draw(st.sampled_from(sorted(self.placed)))
        del self.placed[jid]

    @invariant()
    def no_node_over_committed(self) -> None:
        view = self._view()
        for node in self.nodes:
            used = view.usage.get(node.id, NodeUsage())
            assert used.cpu <= node.cpu
            assert used.memory_mb <= node.memory_mb
            assert used.disk_mb <= node.disk_mb

    @invariant()
    def no_port_twice_on_a_node(self) -> None:
        seen: dict[str, set[int]] = {}
        for placements in self.placed.values():
            for p in placements:
                values = [x["Value"] for x in p.ports]
                assert len(values) == len(set(values))
                taken = seen.setdefault(p.node_id, set())
                assert not taken & set(values)
                taken.update(values)
                assert all(
                    x["Value"] in (8080, 8081, 9000) or 20000 <= x["Value"] <= 20040
                    for x in p.ports
                )


TestCluster = Cluster.TestCase
TestCluster.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    asks=st.lists(st.tuples(st.integers(1, 4000), st.integers(10, 8000)), min_size=1, max_size=12)
)
def test_every_placeable_job_is_eventually_placed(asks: list[tuple[int, int]]) -> None:
    """Submitting jobs one by one, each either places or is genuinely unplaceable right now;
    and once everything else stops, every job that fits an empty node does place."""
    nodes = [NodeInfo(id=f"n{i}", name=f"n{i}", cpu=4000, memory_mb=8192) for i in range(3)]
    for cpu, mem in asks:
        job = _job(1, cpu, mem, 1, [], False)
        empty = ClusterView(nodes=nodes)
        result = place_group(empty, job, job["TaskGroups"][0], 1, random.Random(0))
        fits_alone = cpu <= 4000 and mem <= 8192
        assert bool(result.placements) == fits_alone


@pytest.mark.parametrize(
    ("ltarget", "operand", "rtarget", "ok"),
    [
        ("${attr.kernel.name}", "=", "linux", True),
        ("${attr.kernel.name}", "!=", "linux", False),
        ("${meta.rack}", "=", "r1", True),
        ("${meta.missing}", "is_not_set", "", True),
        ("${attr.nomad.version}", "semver", ">= 1.5.0, < 2.0", True),
        ("${attr.nomad.version}", "version", "< 1.0", False),
        ("${node.datacenter}", "regexp", "^dc[0-9]$", True),
        ("${meta.tags}", "set_contains", "a,b", True),
        ("${meta.tags}", "set_contains_any", "x,c", True),
        ("${attr.cpu.numcores}", ">=", "4", True),
    ],
)
def test_constraint_operators(ltarget: str, operand: str, rtarget: str, ok: bool) -> None:
    node = NodeInfo(
        id="n",
        name="n",
        attributes={"kernel.name": "linux", "nomad.version": "1.9.7", "cpu.numcores": "8"},
        meta={"rack": "r1", "tags": "a,b,c"},
    )
    job = _job(1, 100, 100, 0, [], False)
    job["Constraints"] = [{"LTarget": ltarget, "RTarget": rtarget, "Operand": operand}]
    result = place_group(ClusterView(nodes=[node]), job, job["TaskGroups"][0], 1)
    assert bool(result.placements) is ok
    if not ok:
        assert result.failed is not None
        assert result.failed["ConstraintFiltered"] == {f"{ltarget} {operand} {rtarget}": 1}
