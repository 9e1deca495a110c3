"""Placement: which node each new allocation goes to, and which host ports it gets.

A pure module (a :class:`ClusterView` and a task group in, :class:`Placement` s or a failure
metric out) so it can be tested directly and property-tested; the server builds a view from
its state for each evaluation. It follows Nomad's generic stack: ready, eligible, non-draining
nodes of the job's datacenters and pool; driver, constraint and ``distinct_hosts`` filters;
then resources (``cpu``, ``memory``, ``disk``, then ports, in that order) and a bin-packing
score with job anti-affinity. When nothing fits it returns Nomad's ``AllocMetric`` so the
caller can record ``FailedTGAllocs`` and block the evaluation.
"""

from __future__ import annotations

import fnmatch
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_INTERP = re.compile(r"^\$\{([^}]+)\}$")


@dataclass
class NodeInfo:
    """What placement needs to know of one node: identity, fingerprint and allocatable capacity."""

    id: str
    name: str
    datacenter: str = "dc1"
    node_pool: str = "default"
    node_class: str = ""
    region: str = "global"
    status: str = "ready"
    eligible: bool = True
    draining: bool = False
    attributes: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    drivers: frozenset[str] = frozenset({"docker", "raw_exec"})
    ip: str = "127.0.0.1"
    cpu: int = 4000
    memory_mb: int = 8192
    disk_mb: int = 51200
    min_port: int = 20000
    max_port: int = 32000
    reserved_host_ports: frozenset[int] = frozenset()
    device: str = "lo"


@dataclass
class NodeUsage:
    cpu: int = 0
    memory_mb: int = 0
    disk_mb: int = 0


@dataclass
class ClusterView:
    """Nodes, what non-terminal allocations already use, and where this job already runs.

    Static ports collide per node, as in Nomad. Dynamic ports also avoid every port used on
    the node's IP address: simulated nodes share loopback, and two real ``raw_exec`` listeners
    cannot share a port on one address.
    """

    nodes: list[NodeInfo]
    usage: dict[str, NodeUsage] = field(default_factory=dict)
    ports: dict[str, set[int]] = field(default_factory=dict)  # node id -> ports in use
    ip_ports: dict[str, set[int]] = field(default_factory=dict)  # IP -> ports in use
    # node id -> task group -> allocations of the job being placed (for anti-affinity and
    # distinct_hosts); the job's own allocations being replaced are left out by the caller.
    job_allocs: dict[str, dict[str, int]] = field(default_factory=dict)
    # distinct_property: (target, value) -> count of this job's allocations
    property_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    # Whether a host port is free outside the cluster (simulated nodes share this machine);
    # None: every port not held by an allocation is free, as on a dedicated host.
    port_free: Callable[[str, int], bool] | None = None

    def used(self, node_id: str) -> NodeUsage:
        return self.usage.setdefault(node_id, NodeUsage())


@dataclass
class Placement:
    node_id: str
    node_name: str
    task_resources: dict[str, tuple[int, int]]  # task -> (cpu shares, memory MB)
    disk_mb: int
    networks: list[dict[str, Any]]
    ports: list[dict[str, Any]]
    metrics: dict[str, Any]
    # Ports of the deprecated task-level networks (``resources { network {...} }``), per task.
    task_networks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class GroupResult:
    placements: list[Placement]
    failed: dict[str, Any] | None = None  # AllocMetric of the first failure, coalesced


def _metric() -> dict[str, Any]:
    return {
        "NodesEvaluated": 0,
        "NodesFiltered": 0,
        "NodesInPool": 0,
        "NodesAvailable": {},
        "ClassFiltered": None,
        "ConstraintFiltered": None,
        "NodesExhausted": 0,
        "ClassExhausted": None,
        "DimensionExhausted": None,
        "QuotaExhausted": None,
        "ResourcesExhausted": None,
        "Scores": None,
        "ScoreMetaData": None,
        "AllocationTime": 0,
        "CoalescedFailures": 0,
    }


def _bump(metric: dict[str, Any], key: str, sub: str) -> None:
    if metric[key] is None:
        metric[key] = {}
    metric[key][sub] = metric[key].get(sub, 0) + 1


def resolve_target(target: str, node: NodeInfo) -> tuple[str | None, bool]:
    """Interpolate a constraint target (``${attr.kernel.name}``) against a node."""
    m = _INTERP.match(target)
    if m is None:
        return target, True
    key = m.group(1)
    fixed = {
        "node.unique.id": node.id,
        "node.unique.name": node.name,
        "node.datacenter": node.datacenter,
        "node.class": node.node_class,
        "node.pool": node.node_pool,
        "node.region": node.region,
    }
    if key in fixed:
        return fixed[key], True
    if key.startswith("attr."):
        value = node.attributes.get(key[5:])
    elif key.startswith("meta."):
        value = node.meta.get(key[5:])
    else:
        value = None
    return value, value is not None


def _version_tuple(text: str) -> tuple[int, ...] | None:
    m = re.match(r"^v?(\d+(?:\.\d+)*)", text.strip())
    if m is None:
        return None
    return tuple(int(p) for p in m.group(1).split("."))


def _check_version(lval: str, spec: str) -> bool:
    have = _version_tuple(lval)
    if have is None:
        return False
    for clause in spec.split(","):
        m = re.match(r"^\s*(>=|<=|!=|~>|=|>|<)?\s*(\S+)\s*$", clause)
        if m is None:
            return False
        op, want_text = m.group(1) or "=", m.group(2)
        want = _version_tuple(want_text)
        if want is None:
            return False
        width = max(len(have), len(want))
        h = have + (0,) * (width - len(have))
        w = want + (0,) * (width - len(want))
        if op == "~>":
            upper = (*want[:-2], want[-2] + 1) if len(want) > 1 else (want[0] + 1,)
            ok = w <= h and h[: len(upper)] < upper
        else:
            ok = {
                "=": h == w,
                "!=": h != w,
                ">": h > w,
                ">=": h >= w,
                "<": h < w,
                "<=": h <= w,
            }[op]
        if not ok:
            return False
    return True


def _ordered(lval: str, rval: str, op: str) -> bool:
    try:
        a: Any = float(lval)
        b: Any = float(rval)
    except ValueError:
        a, b = lval, rval
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def check_constraint(constraint: dict[str, Any], node: NodeInfo) -> bool:
    """Whether ``node`` satisfies one constraint (``distinct_*`` are handled by the caller)."""
    op = constraint.get("Operand") or "="
    if op in ("distinct_hosts", "distinct_property"):
        return True
    lval, lfound = resolve_target(constraint.get("LTarget", ""), node)
    rval, rfound = resolve_target(constraint.get("RTarget", ""), node)
    if op == "is_set":
        return lfound
    if op == "is_not_set":
        return not lfound
    if op in ("!=", "not"):
        return lval != rval
    if not lfound or not rfound or lval is None or rval is None:
        return False
    if op in ("=", "==", "is"):
        return lval == rval
    if op in ("<", "<=", ">", ">="):
        return _ordered(lval, rval, op)
    if op in ("version", "semver"):
        return _check_version(lval, rval)
    if op == "regexp":
        try:
            return re.search(rval, lval) is not None
        except re.error:
            return False
    if op in ("set_contains", "set_contains_all", "set_contains_any"):
        have = {p.strip() for p in lval.split(",")}
        want = {p.strip() for p in rval.split(",")}
        return bool(have & want) if op == "set_contains_any" else want <= have
    return False


def constraint_string(c: dict[str, Any]) -> str:
    """Nomad's ``Constraint.String()``, the key of ``ConstraintFiltered``."""
    return f"{c.get('LTarget', '')} {c.get('Operand', '=')} {c.get('RTarget', '')}"


def _implied_constraints(group: dict[str, Any]) -> list[dict[str, Any]]:
    services = list(group.get("Services") or [])
    for task in group.get("Tasks") or []:
        services.extend(task.get("Services") or [])
    out = []
    providers = {s.get("Provider") or "consul" for s in services}
    if "consul" in providers:
        out.append(
            {"LTarget": "${attr.consul.version}", "RTarget": ">= 1.8.0", "Operand": "semver"}
        )
    if "nomad" in providers:
        out.append(
            {"LTarget": "${attr.nomad.service_discovery}", "RTarget": "true", "Operand": "="}
        )
    return out


def _distinct_hosts(job: dict[str, Any], group: dict[str, Any]) -> tuple[bool, bool]:
    job_level = any(c.get("Operand") == "distinct_hosts" for c in job.get("Constraints") or [])
    group_level = any(
        c.get("Operand") == "distinct_hosts" for c in group.get("Constraints") or []
    ) or any(
        c.get("Operand") == "distinct_hosts"
        for t in group.get("Tasks") or []
        for c in t.get("Constraints") or []
    )
    return job_level, group_level


def _distinct_properties(job: dict[str, Any], group: dict[str, Any]) -> list[dict[str, Any]]:
    out = [c for c in job.get("Constraints") or [] if c.get("Operand") == "distinct_property"]
    out += [c for c in group.get("Constraints") or [] if c.get("Operand") == "distinct_property"]
    return out


def _pick_ports(
    asks: list[dict[str, Any]],
    node: NodeInfo,
    taken: set[int],
    shared: set[int],
    rng: random.Random,
    chosen: set[int],
    task_level: bool = False,
    port_free: Callable[[str, int], bool] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | str:
    """Assign static and dynamic ports on ``node``; a dimension string if they do not fit."""
    networks: list[dict[str, Any]] = []
    ports: list[dict[str, Any]] = []
    for net in asks:
        reserved_out = []
        for p in net.get("ReservedPorts") or []:
            value = int(p.get("Value", 0))
            if value in taken or value in chosen or value in node.reserved_host_ports:
                return f"network: reserved port collision {p['Label']}={value}"
            chosen.add(value)
            entry = {"Label": p["Label"], "Value": value}
            to = int(p.get("To", 0))
            if to:
                entry["To"] = value if to == -1 else to
            reserved_out.append({**entry, "HostNetwork": p.get("HostNetwork") or "default"})
            ports.append({**entry, "HostIP": node.ip})
        dynamic_out = []
        span = node.max_port - node.min_port + 1
        for p in net.get("DynamicPorts") or []:
            value = -1
            for _ in range(20):
                candidate = rng.randint(node.min_port, node.max_port)
                if (
                    candidate not in taken
                    and candidate not in chosen
                    and candidate not in shared
                    and (port_free is None or port_free(node.ip, candidate))
                ):
                    value = candidate
                    break
            if value < 0:
                start = rng.randrange(span)
                for offset in range(span):
                    candidate = node.min_port + (start + offset) % span
                    if (
                        candidate not in taken
                        and candidate not in shared
                        and candidate not in chosen
                        and candidate not in node.reserved_host_ports
                        and (port_free is None or port_free(node.ip, candidate))
                    ):
                        value = candidate
                        break
            if value < 0:
                return "network: dynamic port selection failed"
            chosen.add(value)
            entry = {"Label": p["Label"], "Value": value}
            to = int(p.get("To", 0))
            if to:
                entry["To"] = value if to == -1 else to
            dynamic_out.append({**entry, "HostNetwork": p.get("HostNetwork") or "default"})
            ports.append({**entry, "HostIP": node.ip})
        allocated: dict[str, Any] = {"Mode": net.get("Mode") or "host", "IP": node.ip}
        if task_level:
            # A task network's offer names the host device and address, as NetworkIndex does.
            allocated = {"Device": node.device, "IP": node.ip}
            if net.get("Mode"):
                allocated["Mode"] = net["Mode"]
        if net.get("MBits"):
            allocated["MBits"] = net["MBits"]
        if reserved_out:
            allocated["ReservedPorts"] = reserved_out
        if dynamic_out:
            allocated["DynamicPorts"] = dynamic_out
        networks.append(allocated)
    return networks, ports


def _pick_all_ports(
    group: dict[str, Any], node: NodeInfo, view: ClusterView, rng: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[dict[str, Any]]]] | str:
    """The group's network ports, then each task's own (first) network, as Nomad's bin-packer."""
    taken = view.ports.setdefault(node.id, set())
    shared = view.ip_ports.setdefault(node.ip, set())
    chosen: set[int] = set()
    free = view.port_free
    picked = _pick_ports(
        group.get("Networks") or [], node, taken, shared, rng, chosen, port_free=free
    )
    if isinstance(picked, str):
        return picked
    task_networks: dict[str, list[dict[str, Any]]] = {}
    for task in group.get("Tasks") or []:
        asks = (task.get("Resources") or {}).get("Networks") or []
        if not asks:
            continue
        offer = _pick_ports(
            asks[:1], node, taken, shared, rng, chosen, task_level=True, port_free=free
        )
        if isinstance(offer, str):
            return offer
        task_networks[task["Name"]] = offer[0]
    return picked[0], picked[1], task_networks


def group_demand(group: dict[str, Any]) -> tuple[int, int, int]:
    """CPU shares, memory MB and disk MB one allocation of ``group`` reserves."""
    cpu = sum(int(t["Resources"]["CPU"]) for t in group.get("Tasks") or [])
    mem = sum(int(t["Resources"]["MemoryMB"]) for t in group.get("Tasks") or [])
    disk = int((group.get("EphemeralDisk") or {}).get("SizeMB", 300))
    return cpu, mem, disk


def _binpack_score(node: NodeInfo, used: NodeUsage, cpu: int, mem: int) -> float:
    # Nomad's ScoreFitBinPack: the fuller a node would be, the better it scores (0..1).
    free_cpu = 1 - (used.cpu + cpu) / max(node.cpu, 1)
    free_mem = 1 - (used.memory_mb + mem) / max(node.memory_mb, 1)
    total = 10**free_cpu + 10**free_mem
    return (20 - total) / 18


def place_group(
    view: ClusterView,
    job: dict[str, Any],
    group: dict[str, Any],
    count: int,
    rng: random.Random | None = None,
) -> GroupResult:
    """Place ``count`` allocations of ``group``; ``view`` is updated to include them.

    Stops at the first allocation that fits nowhere, as Nomad does: the remaining ones are
    identical, so they are reported as ``CoalescedFailures`` of that one failure.
    """
    rng = rng or random.Random()
    result = GroupResult(placements=[])
    cpu, mem, disk = group_demand(group)
    task_res = {
        t["Name"]: (int(t["Resources"]["CPU"]), int(t["Resources"]["MemoryMB"]))
        for t in group.get("Tasks") or []
    }
    drivers = {t.get("Driver", "") for t in group.get("Tasks") or []}
    constraints = [
        c
        for c in (job.get("Constraints") or [])
        + (group.get("Constraints") or [])
        + [c for t in group.get("Tasks") or [] for c in t.get("Constraints") or []]
        + _implied_constraints(group)
        if c.get("Operand") not in ("distinct_hosts", "distinct_property")
    ]
    job_distinct, group_distinct = _distinct_hosts(job, group)
    props = _distinct_properties(job, group)
    datacenters = job.get("Datacenters") or ["*"]
    pool = job.get("NodePool") or "default"
    gname = group["Name"]

    for i in range(count):
        metric = _metric()
        in_pool = [n for n in view.nodes if n.node_pool == pool or pool == "all"]
        ready = [
            n
            for n in in_pool
            if n.status == "ready"
            and n.eligible
            and not n.draining
            and any(fnmatch.fnmatchcase(n.datacenter, dc) for dc in datacenters)
        ]
        metric["NodesInPool"] = sum(1 for n in in_pool if n.status == "ready")
        for n in ready:
            metric["NodesAvailable"][n.datacenter] = (
                metric["NodesAvailable"].get(n.datacenter, 0) + 1
            )
        for dc in datacenters:
            if "*" not in dc and dc not in metric["NodesAvailable"]:
                metric["NodesAvailable"][dc] = 0
        order = list(ready)
        rng.shuffle(order)
        best: tuple[float, NodeInfo, Any] | None = None
        for node in order:
            metric["NodesEvaluated"] += 1
            if not drivers <= node.drivers:
                metric["NodesFiltered"] += 1
                _bump(metric, "ConstraintFiltered", "missing drivers")
                continue
            failed = next((c for c in constraints if not check_constraint(c, node)), None)
            if failed is not None:
                metric["NodesFiltered"] += 1
                _bump(metric, "ConstraintFiltered", constraint_string(failed))
                continue
            on_node = view.job_allocs.get(node.id, {})
            if (job_distinct and sum(on_node.values()) > 0) or (
                group_distinct and on_node.get(gname, 0) > 0
            ):
                metric["NodesFiltered"] += 1
                _bump(metric, "ConstraintFiltered", "distinct_hosts")
                continue
            prop_failed = None
            for c in props:
                value, found = resolve_target(c.get("LTarget", ""), node)
                limit = int(c.get("RTarget") or 1) if (c.get("RTarget") or "1").isdigit() else 1
                if not found or view.property_counts.get((c["LTarget"], value or ""), 0) >= limit:
                    prop_failed = c
                    break
            if prop_failed is not None:
                metric["NodesFiltered"] += 1
                _bump(metric, "ConstraintFiltered", "distinct_property")
                continue
            used = view.used(node.id)
            dimension = None
            if used.cpu + cpu > node.cpu:
                dimension = "cpu"
            elif used.memory_mb + mem > node.memory_mb:
                dimension = "memory"
            elif used.disk_mb + disk > node.disk_mb:
                dimension = "disk"
            picked: Any = None
            if dimension is None:
                picked = _pick_all_ports(group, node, view, rng)
                if isinstance(picked, str):
                    dimension = picked
            if dimension is not None:
                metric["NodesExhausted"] += 1
                _bump(metric, "DimensionExhausted", dimension)
                if dimension in ("cpu", "memory"):
                    if metric["ResourcesExhausted"] is None:
                        metric["ResourcesExhausted"] = {}
                    for tname, (tcpu, tmem) in task_res.items():
                        entry = metric["ResourcesExhausted"].setdefault(
                            tname, {"CPU": 0, "MemoryMB": 0}
                        )
                        if dimension == "cpu":
                            entry["CPU"] = tcpu
                        else:
                            entry["MemoryMB"] = tmem
                continue
            score = _binpack_score(node, used, cpu, mem)
            collisions = on_node.get(gname, 0)
            if collisions:
                score -= (collisions + 1) / max(group.get("Count", 1), 1)
            if best is None or score > best[0]:
                best = (score, node, picked)
        if best is None:
            metric["CoalescedFailures"] = count - i - 1
            result.failed = metric
            return result
        _, node, (networks, ports, task_networks) = best
        used = view.used(node.id)
        used.cpu += cpu
        used.memory_mb += mem
        used.disk_mb += disk
        values = [p["Value"] for p in ports] + [
            p["Value"]
            for nets in task_networks.values()
            for n in nets
            for p in (n.get("ReservedPorts") or []) + (n.get("DynamicPorts") or [])
        ]
        view.ports.setdefault(node.id, set()).update(values)
        view.ip_ports.setdefault(node.ip, set()).update(values)
        view.job_allocs.setdefault(node.id, {})[gname] = (
            view.job_allocs.get(node.id, {}).get(gname, 0) + 1
        )
        for c in props:
            value, _found = resolve_target(c.get("LTarget", ""), node)
            key = (c["LTarget"], value or "")
            view.property_counts[key] = view.property_counts.get(key, 0) + 1
        result.placements.append(
            Placement(
                node_id=node.id,
                node_name=node.name,
                task_resources=task_res,
                disk_mb=disk,
                networks=networks,
                ports=ports,
                metrics=metric,
                task_networks=task_networks,
            )
        )
    return result
