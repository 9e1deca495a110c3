"""Committing a plan: placements become allocations, stops and in-place updates are written.

The pure :mod:`devstack.nomad.scheduler` decides *where*; this layer builds its input from the
state store (node capacity, usage, this job's spread), turns its placements into Nomad's
``Allocation`` objects, writes stops/updates/follow-up and blocked evaluations at one index, and
hands the changes to the client nodes.
"""

from __future__ import annotations

import socket
from typing import Any

from devstack.nomad import jobspec
from devstack.nomad.events import Event
from devstack.nomad.scheduler import ClusterView, NodeInfo, NodeUsage, place_group
from devstack.nomad.state import (
    TERMINAL_EVAL,
    JobKey,
    alloc_client_terminal,
    alloc_host_ports,
    alloc_terminal,
    alloc_usage,
)
from devstack.nomad.structs import alloc_index
from devstack.nomad.util import new_id, now_ns

from .base import ServerCore


def host_port_free(ip: str, port: int) -> bool:
    """Whether nothing else on this machine listens on ``ip:port``.

    Every simulated node lives on this machine, which other programs share (benchmarks,
    another devstack); a dynamic port one of them holds would fail the container's start.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip or "127.0.0.1", port))
        except OSError:
            return False
    return True


class Planner(ServerCore):
    def _node_info(self, n: dict[str, Any]) -> NodeInfo:
        cached = self._node_infos.get(n["ID"])
        if cached is not None and cached[0] == n["ModifyIndex"]:
            return cached[1]
        res, rsv = n["NodeResources"], n["ReservedResources"]
        reserved_ports: set[int] = set()
        for part in (rsv["Networks"]["ReservedHostPorts"] or "").split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                reserved_ports.update(range(int(lo), int(hi) + 1))
            elif part.isdigit():
                reserved_ports.add(int(part))
        info = NodeInfo(
            id=n["ID"],
            name=n["Name"],
            datacenter=n["Datacenter"],
            node_pool=n["NodePool"],
            node_class=n["NodeClass"],
            region=self.config.region,
            status=n["Status"],
            eligible=n["SchedulingEligibility"] == "eligible",
            draining=n["DrainStrategy"] is not None,
            attributes=n["Attributes"],
            meta=n["Meta"],
            drivers=frozenset(
                d for d, info in n["Drivers"].items() if info["Detected"] and info["Healthy"]
            ),
            ip=n["Attributes"]["unique.network.ip-address"],
            cpu=res["Cpu"]["CpuShares"] - rsv["Cpu"]["CpuShares"],
            memory_mb=res["Memory"]["MemoryMB"] - rsv["Memory"]["MemoryMB"],
            disk_mb=res["Disk"]["DiskMB"] - rsv["Disk"]["DiskMB"],
            min_port=res["MinDynamicPort"],
            max_port=res["MaxDynamicPort"],
            reserved_host_ports=frozenset(reserved_ports),
        )
        self._node_infos[n["ID"]] = (n["ModifyIndex"], info)
        return info

    def _view(self, exclude: set[str], job_key: JobKey) -> ClusterView:
        """The scheduler's input: nodes, their usage (without ``exclude``), this job's spread."""
        view = ClusterView(
            nodes=[self._node_info(n) for n in self.state.nodes.values()],
            port_free=host_port_free,
        )
        for info in view.nodes:
            cpu, mem, disk = self.state.node_usage[info.id]
            view.usage[info.id] = NodeUsage(cpu, mem, disk)
            ports = set(self.state.node_ports[info.id])
            view.ports[info.id] = ports
            view.ip_ports.setdefault(info.ip, set()).update(ports)
        for alloc_id in exclude:
            a = self.state.allocs[alloc_id]
            if alloc_client_terminal(a) or a["NodeID"] not in view.usage:
                continue
            cpu, mem, disk = alloc_usage(a)
            used = view.usage[a["NodeID"]]
            used.cpu -= cpu
            used.memory_mb -= mem
            used.disk_mb -= disk
            for value in alloc_host_ports(a):
                if self.state.node_ports[a["NodeID"]][value] <= 1:
                    view.ports[a["NodeID"]].discard(value)
        for a in self.state.job_allocs(job_key):
            if alloc_terminal(a) or a["ID"] in exclude:
                continue
            groups = view.job_allocs.setdefault(a["NodeID"], {})
            groups[a["TaskGroup"]] = groups.get(a["TaskGroup"], 0) + 1
        return view

    def _apply_plan(
        self,
        ev: dict[str, Any],
        job: dict[str, Any] | None,
        key: JobKey,
        stops: dict[str, str],
        inplace: list[dict[str, Any]],
        wanted: list[tuple[str, str, dict[str, Any] | None, int, bool]],
        followups: list[tuple[dict[str, Any], int]],
        held: dict[str, set[str]],
        now: int,
    ) -> None:
        placed: list[dict[str, Any]] = []
        failed: dict[str, dict[str, Any]] = {}
        queued: dict[str, int] = {}
        index = self.state.begin()
        if job is not None and (
            wanted or (job["Type"] in ("system", "sysbatch") and not job["Stop"])
        ):
            view = self._view(set(stops), key)
            if job["Type"] in ("system", "sysbatch"):
                self._place_system(job, view, held, ev, index, placed, failed, queued)
            else:
                by_group: dict[str, list[tuple[str, dict[str, Any] | None, int, bool]]] = {}
                for gname, name, prev, delay, canary in wanted:
                    by_group.setdefault(gname, []).append((name, prev, delay, canary))
                for gname, items in by_group.items():
                    group = jobspec.group_spec(job, gname)
                    assert group is not None
                    # Canaries are placed first, as Nomad's reconciler lists them.
                    items.sort(key=lambda x: (not x[3], alloc_index(x[0])))
                    result = place_group(view, job, group, len(items), self.rng)
                    for (name, prev, delay, canary), p in zip(
                        items, result.placements, strict=False
                    ):
                        a = self._new_alloc(job, gname, name, p, ev, index, prev, delay, now)
                        if canary:
                            a["DeploymentStatus"] = {
                                "Healthy": None,
                                "Timestamp": "0001-01-01T00:00:00Z",
                                "Canary": True,
                                "ModifyIndex": 0,
                            }
                        placed.append(a)
                    unplaced = len(items) - len(result.placements)
                    queued[gname] = unplaced
                    if result.failed is not None:
                        failed[gname] = result.failed
        events: list[Event] = []
        self._deployment_for_plan(job, key, placed, stops, index, events)
        updated: list[dict[str, Any]] = []
        for alloc_id, desc in stops.items():
            a = self.state.allocs[alloc_id]
            a = {
                **a,
                "DesiredStatus": "stop",
                "DesiredDescription": desc,
                "ModifyIndex": index,
                "AllocModifyIndex": index,
                "ModifyTime": now,
            }
            self.state.put_alloc(a, index)
            events.append(self._alloc_event("PlanResult", a))
            updated.append(a)
        inplaced = []
        for a in inplace:
            if a["ID"] in stops or job is None:
                continue
            a = {**a, "Job": job, "ModifyIndex": index, "AllocModifyIndex": index}
            self.state.put_alloc(a, index)
            events.append(self._alloc_event("PlanResult", a))
            inplaced.append(a)
        for a in placed:
            self.state.put_alloc(a, index)
            events.append(self._alloc_event("PlanResult", a))
            prev_id = a["PreviousAllocation"]
            if prev_id and prev_id in self.state.allocs:
                prev = {
                    **self.state.allocs[prev_id],
                    "NextAllocation": a["ID"],
                    "ModifyIndex": index,
                }
                self.state.put_alloc(prev, index)
                events.append(self._alloc_event("PlanResult", prev))
        for a, when in followups:
            if job is None:
                continue
            fe = self._new_eval(
                job,
                index,
                "alloc-failure",
                wait_until=when,
                description="created for delayed rescheduling",
                previous=ev["ID"],
            )
            self.state.put_eval(fe, index)
            events.append(self._eval_event("EvaluationUpdated", fe))
            a = {**a, "FollowupEvalID": fe["ID"], "ModifyIndex": index}
            self.state.put_alloc(a, index)
            events.append(self._alloc_event("PlanResult", a))
            self._enqueue_later(fe["ID"], (when - now_ns()) / 1e9)
        # The evaluation itself: complete, or complete plus a blocked one that will retry.
        old_blocked = self._blocked.get(key)
        ev = {
            **ev,
            "Status": "complete",
            "QueuedAllocations": queued or None,
            "ModifyIndex": index,
            "ModifyTime": now_ns(),
        }
        if failed:
            ev["FailedTGAllocs"] = failed
            if ev["TriggeredBy"] == "queued-allocs" or ev["ID"] == old_blocked:
                ev["Status"] = "blocked"
                self._blocked[key] = ev["ID"]
            else:
                assert job is not None
                blocked = self._new_eval(
                    job,
                    index,
                    "queued-allocs",
                    status="blocked",
                    description="created to place remaining allocations",
                    previous=ev["ID"],
                )
                blocked["FailedTGAllocs"] = failed
                blocked["ClassEligibility"] = {}
                ev["BlockedEval"] = blocked["ID"]
                self.state.put_eval(blocked, index)
                events.append(self._eval_event("EvaluationUpdated", blocked))
                if old_blocked and old_blocked in self.state.evals:
                    self._cancel_eval(old_blocked, index, events)
                self._blocked[key] = blocked["ID"]
        else:
            ev["FailedTGAllocs"] = None
            if old_blocked == ev["ID"]:
                del self._blocked[key]
            elif old_blocked and old_blocked in self.state.evals:
                self._cancel_eval(old_blocked, index, events)
                del self._blocked[key]
        self.state.put_eval(ev, index)
        events.append(self._eval_event("EvaluationUpdated", ev))
        if job is not None:
            self._refresh_job(key, index, events, queued)
        self.state.commit(index, events)
        for a in placed:
            client = self.clients.get(a["NodeID"])
            if client is not None:
                client.run_alloc(a)
        for a in updated:
            client = self.clients.get(a["NodeID"])
            if client is not None:
                client.stop_alloc(a["ID"])
        for a in inplaced:
            client = self.clients.get(a["NodeID"])
            if client is not None:
                client.update_alloc(a)

    def _cancel_eval(self, eval_id: str, index: int, events: list[Event]) -> None:
        old = self.state.evals[eval_id]
        if old["Status"] in TERMINAL_EVAL:
            return
        old = {
            **old,
            "Status": "canceled",
            "StatusDescription": "evaluation superseded by a newer evaluation of the job",
            "ModifyIndex": index,
            "ModifyTime": now_ns(),
        }
        self.state.put_eval(old, index)
        self._timers.pop(eval_id, None)
        events.append(self._eval_event("EvaluationUpdated", old))

    def _place_system(
        self,
        job: dict[str, Any],
        view: ClusterView,
        held: dict[str, set[str]],
        ev: dict[str, Any],
        index: int,
        placed: list[dict[str, Any]],
        failed: dict[str, dict[str, Any]],
        queued: dict[str, int],
    ) -> None:
        """System jobs: one allocation of each group on every feasible node."""
        nodes = list(view.nodes)
        for group in job["TaskGroups"]:
            gname = group["Name"]
            queued[gname] = 0
            for node in nodes:
                if node.id in held.get(gname, set()):
                    continue
                single = ClusterView(
                    nodes=[node],
                    usage=view.usage,
                    ports=view.ports,
                    ip_ports=view.ip_ports,
                    job_allocs=view.job_allocs,
                )
                result = place_group(single, job, group, 1, self.rng)
                if result.placements:
                    name = f"{job['ID']}.{gname}[0]"
                    placed.append(
                        self._new_alloc(
                            job, gname, name, result.placements[0], ev, index, None, 0, now_ns()
                        )
                    )
                elif result.failed and result.failed["NodesExhausted"]:
                    queued[gname] += 1
                    failed[gname] = result.failed

    def _new_alloc(
        self,
        job: dict[str, Any],
        gname: str,
        name: str,
        p: Any,
        ev: dict[str, Any],
        index: int,
        prev: dict[str, Any] | None,
        delay: int,
        now: int,
    ) -> dict[str, Any]:
        group = jobspec.group_spec(job, gname)
        assert group is not None
        tasks = {}
        task_resources = {}
        lifecycles = {}
        for t in group["Tasks"]:
            cpu, mem = p.task_resources[t["Name"]]
            task_nets = p.task_networks.get(t["Name"]) or None
            tasks[t["Name"]] = {
                "Cpu": {"CpuShares": cpu, "ReservedCores": None},
                "Memory": {"MemoryMB": mem, "MemoryMaxMB": t["Resources"]["MemoryMaxMB"]},
                "Networks": task_nets,
                "Devices": None,
            }
            task_resources[t["Name"]] = {
                "CPU": cpu,
                "Cores": 0,
                "MemoryMB": mem,
                "MemoryMaxMB": t["Resources"]["MemoryMaxMB"],
                "DiskMB": 0,
                "IOPS": 0,
                "Networks": task_nets,
                "Devices": None,
            }
            lifecycles[t["Name"]] = t["Lifecycle"]
        tracker = None
        if prev is not None and prev["ClientStatus"] == "failed":
            old_events = (prev["RescheduleTracker"] or {}).get("Events") or []
            tracker = {
                "Events": [
                    *old_events,
                    {
                        "RescheduleTime": now,
                        "PrevAllocID": prev["ID"],
                        "PrevNodeID": prev["NodeID"],
                        "Delay": delay,
                    },
                ],
                "LastReschedule": "ok",
            }
        total_cpu = sum(c for c, _ in p.task_resources.values())
        total_mem = sum(m for _, m in p.task_resources.values())
        return {
            "ID": new_id(),
            "Namespace": job["Namespace"],
            "EvalID": ev["ID"],
            "Name": name,
            "NodeID": p.node_id,
            "NodeName": p.node_name,
            "JobID": job["ID"],
            "Job": job,
            "TaskGroup": gname,
            "Resources": {
                "CPU": total_cpu,
                "Cores": 0,
                "MemoryMB": total_mem,
                "MemoryMaxMB": 0,
                "DiskMB": p.disk_mb,
                "IOPS": 0,
                # The deprecated combined view: group networks, then every task's own.
                "Networks": (p.networks + [n for nets in p.task_networks.values() for n in nets])
                or None,
                "Devices": None,
            },
            "SharedResources": {"DiskMB": p.disk_mb, "Networks": p.networks or None},
            "TaskResources": task_resources,
            "AllocatedResources": {
                "Tasks": tasks,
                "TaskLifecycles": lifecycles,
                "Shared": {"DiskMB": p.disk_mb, "Networks": p.networks or None, "Ports": p.ports},
            },
            "Metrics": p.metrics,
            "DesiredStatus": "run",
            "DesiredDescription": "",
            "DesiredTransition": {
                "Migrate": None,
                "Reschedule": None,
                "ForceReschedule": None,
                "NoShutdownDelay": None,
            },
            "ClientStatus": "pending",
            "ClientDescription": "",
            "TaskStates": None,
            "AllocStates": None,
            "PreviousAllocation": prev["ID"] if prev is not None else "",
            "NextAllocation": "",
            "DeploymentID": "",
            "DeploymentStatus": None,
            "RescheduleTracker": tracker,
            "NetworkStatus": None,
            "FollowupEvalID": "",
            "PreemptedAllocations": None,
            "PreemptedByAllocation": "",
            "SignedIdentities": None,
            "CreateIndex": index,
            "ModifyIndex": index,
            "AllocModifyIndex": index,
            "CreateTime": now,
            "ModifyTime": now,
        }
