"""Client nodes as the server sees them: registration, status, eligibility and drains.

A node going ``down`` makes its allocations lost and replaced; a node that becomes available
again unblocks blocked evaluations and gets its system jobs.

Drains work like Nomad's node drainer: a service group's allocations on the node are marked to
migrate at most ``migrate.max_parallel`` at a time, the next ones once enough of the group has
a known health again (its replacements passed ``migrate.min_healthy_time``); batch allocations
are left to finish; system allocations go last (never with ``IgnoreSystemJobs``). The drain
ends when nothing it moves is left on the node, or at its deadline, which marks every remaining
allocation at once (a negative deadline forces that at the start). The node stays ineligible.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from devstack.nomad import jobspec
from devstack.nomad.config import CONSUL_VERSION, NOMAD_VERSION
from devstack.nomad.errors import NomadError
from devstack.nomad.events import Event
from devstack.nomad.state import JobKey, alloc_client_terminal, alloc_terminal
from devstack.nomad.structs import alloc_index, rfc3339
from devstack.nomad.util import SECOND, new_id, now_ns

from .evals import Reconciler


class NodeManager(Reconciler):
    # --- nodes ------------------------------------------------------------------------------

    def add_node(
        self,
        *,
        name: str | None = None,
        datacenter: str | None = None,
        cpu: int | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        meta: dict[str, str] | None = None,
        attributes: dict[str, str] | None = None,
        node_class: str = "",
        node_pool: str = "default",
        drivers: tuple[str, ...] = ("docker", "raw_exec"),
        reserved_cpu: int = 0,
        reserved_memory_mb: int = 0,
        reserved_ports: str = "",
        node_id: str | None = None,
    ) -> str:
        """Register a new client node (ready and eligible) and start its simulated client."""
        cfg = self.config
        node_id = node_id or new_id()
        name = name or f"nomad-client-{len(self.state.nodes) + 1}"
        cpu = cfg.node_cpu if cpu is None else cpu
        memory_mb = cfg.node_memory if memory_mb is None else memory_mb
        disk_mb = cfg.node_disk if disk_mb is None else disk_mb
        ip = cfg.node_ip
        attrs = {
            "arch": "x86_64",
            "cpu.arch": "amd64",
            "cpu.modelname": "devstack simulated CPU",
            "cpu.numcores": str(max(1, cpu // 1000)),
            "cpu.frequency": "1000",
            "cpu.totalcompute": str(cpu),
            "cpu.reservablecores": str(max(1, cpu // 1000)),
            "kernel.name": "linux",
            "kernel.version": os.uname().release,
            "os.name": "ubuntu",
            "os.version": "22.04",
            "memory.totalbytes": str(memory_mb * 1024 * 1024),
            "unique.hostname": name,
            "unique.network.ip-address": ip,
            "unique.storage.bytestotal": str(disk_mb * 1024 * 1024),
            "unique.storage.bytesfree": str(disk_mb * 1024 * 1024),
            "unique.storage.volume": self.data_dir,
            "nomad.version": NOMAD_VERSION,
            "nomad.revision": "devstack",
            "nomad.service_discovery": "true",
            "nomad.advertise.address": self.http_addr,
            "os.signals": "SIGTERM,SIGKILL,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2",
        }
        for d in drivers:
            attrs[f"driver.{d}"] = "1"
        if d_consul := cfg.consul_addr:
            attrs.update(
                {
                    "consul.version": CONSUL_VERSION,
                    "consul.revision": "devstack",
                    "consul.server": "true",
                    "consul.datacenter": "dc1",
                    "consul.connect": "false",
                    "unique.consul.name": d_consul,
                }
            )
        attrs.update(attributes or {})
        now = now_ns()
        index = self.state.begin()
        node = {
            "ID": node_id,
            "SecretID": "",
            "Datacenter": datacenter or cfg.datacenter,
            "Name": name,
            "HTTPAddr": self.http_addr,
            "TLSEnabled": False,
            "Attributes": attrs,
            "NodeResources": {
                "Cpu": {
                    "CpuShares": cpu,
                    "TotalCpuCores": max(1, cpu // 1000),
                    "ReservableCpuCores": list(range(max(1, cpu // 1000))),
                },
                "Memory": {"MemoryMB": memory_mb},
                "Disk": {"DiskMB": disk_mb},
                "Networks": None,
                "NodeNetworks": [
                    {
                        "Mode": "host",
                        "Device": "lo",
                        "Addresses": [
                            {
                                "Family": "ipv4",
                                "Alias": "default",
                                "Address": ip,
                                "ReservedPorts": "",
                                "Gateway": "",
                            }
                        ],
                    }
                ],
                "Devices": None,
                "MinDynamicPort": 20000,
                "MaxDynamicPort": 32000,
            },
            "ReservedResources": {
                "Cpu": {"CpuShares": reserved_cpu},
                "Memory": {"MemoryMB": reserved_memory_mb},
                "Disk": {"DiskMB": 0},
                "Networks": {"ReservedHostPorts": reserved_ports},
            },
            "Links": {},
            "Meta": {**cfg.node_meta, **(meta or {})},
            "NodeClass": node_class,
            "NodePool": node_pool,
            "ComputedClass": "v1:" + str(abs(hash((node_class, node_pool))) % 10**18),
            "Drain": False,
            "DrainStrategy": None,
            "SchedulingEligibility": "eligible",
            "Status": "ready",
            "StatusDescription": "",
            "StatusUpdatedAt": now // SECOND,
            "Events": [
                {
                    "Message": "Node registered",
                    "Subsystem": "Cluster",
                    "Details": None,
                    "Timestamp": rfc3339(now),
                    "CreateIndex": 0,
                }
            ],
            "Drivers": {
                d: {
                    "Attributes": {f"driver.{d}": "true"},
                    "Detected": True,
                    "Healthy": True,
                    "HealthDescription": "Healthy",
                    "UpdateTime": rfc3339(now),
                }
                for d in drivers
            },
            "HostVolumes": None,
            "HostNetworks": None,
            "CSIControllerPlugins": None,
            "CSINodePlugins": None,
            "LastDrain": None,
            "CreateIndex": index,
            "ModifyIndex": index,
        }
        self.state.put_node(node, index)
        self.state.commit(index, [self._node_event("NodeRegistration", node)])
        self._attach_client(node_id)
        self._node_changed(node_id)
        return node_id

    def _node_changed(self, node_id: str) -> None:
        if not self.running and self._worker is None:
            return
        self._unblock_soon()
        # System jobs run on every node: a new or returning node gets their allocations.
        for job in list(self.state.jobs.values()):
            if job["Type"] in ("system", "sysbatch") and not job["Stop"]:
                index = self.state.begin()
                ev = self._new_eval(job, index, "node-update", node_id=node_id)
                self.state.put_eval(ev, index)
                self.state.commit(index, [self._eval_event("EvaluationUpdated", ev)])
                self._enqueue(ev["ID"])

    def node(self, node_id: str) -> dict[str, Any]:
        node = self.state.nodes.get(node_id)
        if node is None:
            raise NomadError(404, "node not found")
        return node

    def set_node_status(self, node_id: str, status: str) -> list[str]:
        """Mark a node ``down`` (its allocations become lost and are replaced) or ``ready``."""
        node = self.node(node_id)
        if status not in ("ready", "down", "initializing", "disconnected"):
            raise NomadError(400, f"invalid status for node: {status}")
        index = self.state.begin()
        now = now_ns()
        node = {
            **node,
            "Status": status,
            "StatusUpdatedAt": now // SECOND,
            "ModifyIndex": index,
            "Events": [
                *node["Events"],
                {
                    "Message": f"Node status changed to {status}",
                    "Subsystem": "Cluster",
                    "Details": None,
                    "Timestamp": rfc3339(now),
                    "CreateIndex": index,
                },
            ][-10:],
        }
        self.state.put_node(node, index)
        events = [self._node_event("NodeStreamEvent", node)]
        eval_ids: list[str] = []
        if status == "down":
            jobs: dict[JobKey, None] = {}
            for a in self.state.node_allocs(node_id):
                if alloc_client_terminal(a):
                    continue
                a = {
                    **a,
                    "ClientStatus": "lost",
                    "DesiredStatus": "stop",
                    "DesiredDescription": "alloc is lost since its node is down",
                    "ModifyIndex": index,
                    "AllocModifyIndex": index,
                    "ModifyTime": now,
                }
                self.state.put_alloc(a, index)
                events.append(self._alloc_event("PlanResult", a))
                jobs[(a["Namespace"], a["JobID"])] = None
            for key in jobs:
                job = self.state.jobs.get(key)
                if job is None:
                    continue
                ev = self._new_eval(job, index, "node-update", node_id=node_id)
                ev["NodeModifyIndex"] = index
                self.state.put_eval(ev, index)
                events.append(self._eval_event("EvaluationUpdated", ev))
                eval_ids.append(ev["ID"])
            for key in jobs:
                self._refresh_job(key, index, events)
        self.state.commit(index, events)
        client = self.clients.get(node_id)
        if status == "down" and client is not None:
            client.lose_all()
        for eval_id in eval_ids:
            self._enqueue(eval_id)
        if status == "ready":
            self._node_changed(node_id)
        return eval_ids

    def set_eligibility(self, node_id: str, body: Any) -> dict[str, Any]:
        node = self.node(node_id)
        if not isinstance(body, dict):
            raise NomadError(400, "request body is not a JSON object")
        elig = body.get("Eligibility")
        if elig not in ("eligible", "ineligible"):
            raise NomadError(
                400, f'invalid scheduling eligibility "{elig}"'.replace('"None"', '""')
            )
        if elig == "eligible" and node["DrainStrategy"] is not None:
            raise NomadError(
                500, "can not set node's scheduling eligibility to eligible while it is draining"
            )
        index = self.state.begin()
        node = {**node, "SchedulingEligibility": elig, "ModifyIndex": index}
        self.state.put_node(node, index)
        self.state.commit(index, [self._node_event("NodeEligibility", node)])
        if elig == "eligible":
            self._node_changed(node_id)
        return {
            "EvalIDs": None,
            "EvalCreateIndex": 0,
            "NodeModifyIndex": index,
            "Index": index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }

    def drain_node(self, node_id: str, body: Any) -> dict[str, Any]:
        node = self.node(node_id)
        if not isinstance(body, dict):
            raise NomadError(400, "request body is not a JSON object")
        spec = body.get("DrainSpec")
        mark_eligible = bool(body.get("MarkEligible"))
        index = self.state.begin()
        now = now_ns()
        events: list[Event] = []
        eval_ids: list[str] = []
        if spec is None:
            last = node["LastDrain"]
            if node["DrainStrategy"] is not None and last is not None:
                last = {**last, "Status": "canceled", "UpdatedAt": rfc3339(now)}
            node = {
                **node,
                "Drain": False,
                "DrainStrategy": None,
                "LastDrain": last,
                "SchedulingEligibility": "eligible"
                if mark_eligible
                else node["SchedulingEligibility"],
                "ModifyIndex": index,
            }
        else:
            if not isinstance(spec, dict):
                raise NomadError(400, "invalid DrainSpec")
            deadline = int(spec.get("Deadline") or 0)
            node = {
                **node,
                "Drain": True,
                "DrainStrategy": {
                    "DrainSpec": {
                        "Deadline": deadline,
                        "IgnoreSystemJobs": bool(spec.get("IgnoreSystemJobs")),
                    },
                    "ForceDeadline": rfc3339(now + max(deadline, 0)) if deadline else None,
                    "StartedAt": rfc3339(now),
                },
                "SchedulingEligibility": "ineligible",
                "LastDrain": {
                    "StartedAt": rfc3339(now),
                    "UpdatedAt": rfc3339(now),
                    "Status": "draining",
                    "AccessorID": "",
                    "Meta": body.get("Meta"),
                },
                "ModifyIndex": index,
            }
        self.state.put_node(node, index)
        events.insert(0, self._node_event("NodeDrain", node))
        self.state.commit(index, events)
        timer = self._timers.pop(f"drain:{node_id}", None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        if spec is None and node["SchedulingEligibility"] == "eligible":
            self._node_changed(node_id)
        elif spec is not None:
            deadline = node["DrainStrategy"]["DrainSpec"]["Deadline"]
            started = node["DrainStrategy"]["StartedAt"]
            if deadline < 0:
                loop.call_soon(self._drain_deadline, node_id, started)
            else:
                if deadline > 0:
                    self._timers[f"drain:{node_id}"] = loop.call_later(
                        deadline / 1e9, self._drain_deadline, node_id, started
                    )
                loop.call_soon(self._maybe_finish_drain, node_id)
        # Nomad's Node.UpdateDrain creates evaluations only when the node turns eligible;
        # the drainer creates the migrations' own as it goes.
        return {
            "EvalIDs": eval_ids or None,
            "EvalCreateIndex": index if eval_ids else 0,
            "NodeModifyIndex": index,
            "Index": index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }

    # --- the node drainer ---------------------------------------------------------------------

    def _drain_progress(self) -> None:
        for node_id, node in list(self.state.nodes.items()):
            if node["DrainStrategy"] is not None:
                self._maybe_finish_drain(node_id)

    def _drain_moves(self, node: dict[str, Any], a: dict[str, Any]) -> bool:
        """Whether the drain of ``node`` has to move ``a`` off it."""
        system = a["Job"]["Type"] in ("system", "sysbatch")
        return not (system and node["DrainStrategy"]["DrainSpec"]["IgnoreSystemJobs"])

    def _drain_step(self, node_id: str) -> list[dict[str, Any]]:
        """The allocations of a draining node to mark for migration now."""
        node = self.state.nodes[node_id]
        remaining = [
            a
            for a in self.state.node_allocs(node_id)
            if not alloc_client_terminal(a) and self._drain_moves(node, a)
        ]
        others = [a for a in remaining if a["Job"]["Type"] not in ("system", "sysbatch")]
        marked = []
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for a in others:
            # Batch allocations finish on their own (or are stopped at the deadline).
            if a["Job"]["Type"] == "batch" or (a["DesiredTransition"] or {}).get("Migrate"):
                continue
            if a["DesiredStatus"] != "run":
                continue
            groups.setdefault((a["Namespace"], a["JobID"], a["TaskGroup"]), []).append(a)
        for (ns, job_id, gname), drainable in groups.items():
            job = self.state.jobs.get((ns, job_id))
            group = jobspec.group_spec(job, gname) if job is not None else None
            if group is None:
                marked += drainable
                continue
            max_parallel = int((group.get("Migrate") or {}).get("MaxParallel") or 1)
            healthy = sum(
                1
                for x in self.state.job_allocs((ns, job_id))
                if x["TaskGroup"] == gname
                and not alloc_terminal(x)
                and not (x["DesiredTransition"] or {}).get("Migrate")
                and (x["DeploymentStatus"] or {}).get("Healthy") is not None
            )
            n = min(len(drainable), healthy - (group["Count"] - max_parallel))
            drainable.sort(key=lambda x: alloc_index(x["Name"]))
            marked += drainable[: max(n, 0)]
        if not others:
            marked += [
                a
                for a in remaining
                if a["DesiredStatus"] == "run" and not (a["DesiredTransition"] or {}).get("Migrate")
            ]
        return marked

    def _mark_for_migration(self, allocs: list[dict[str, Any]], node_id: str) -> None:
        if not allocs:
            return
        index = self.state.begin()
        events: list[Event] = []
        jobs: dict[JobKey, None] = {}
        for a in allocs:
            a = {
                **a,
                "DesiredTransition": {**(a["DesiredTransition"] or {}), "Migrate": True},
                "ModifyIndex": index,
            }
            self.state.put_alloc(a, index)
            events.append(self._alloc_event("AllocationUpdateDesiredStatus", a))
            jobs[(a["Namespace"], a["JobID"])] = None
        eval_ids = []
        for key in jobs:
            job = self.state.jobs.get(key)
            if job is None:
                continue
            ev = self._new_eval(job, index, "node-drain", node_id=node_id)
            self.state.put_eval(ev, index)
            events.append(self._eval_event("EvaluationUpdated", ev))
            eval_ids.append(ev["ID"])
        self.state.commit(index, events)
        for eval_id in eval_ids:
            self._enqueue(eval_id)

    def _drain_deadline(self, node_id: str, started: str) -> None:
        """The deadline: every allocation still to move is marked, and the drain is over."""
        self._timers.pop(f"drain:{node_id}", None)
        node = self.state.nodes.get(node_id)
        if node is None or node["DrainStrategy"] is None or not self.running:
            return
        if node["DrainStrategy"]["StartedAt"] != started:
            return
        self._mark_for_migration(
            [
                a
                for a in self.state.node_allocs(node_id)
                if not alloc_client_terminal(a)
                and a["DesiredStatus"] == "run"
                and self._drain_moves(node, a)
                and not (a["DesiredTransition"] or {}).get("Migrate")
            ],
            node_id,
        )
        self._complete_drain(node_id)

    def _maybe_finish_drain(self, node_id: str) -> None:
        node = self.state.nodes.get(node_id)
        if node is None or node["DrainStrategy"] is None or not self.running:
            return
        self._mark_for_migration(self._drain_step(node_id), node_id)
        node = self.state.nodes[node_id]
        if any(
            not alloc_client_terminal(a) and self._drain_moves(node, a)
            for a in self.state.node_allocs(node_id)
        ):
            return
        self._complete_drain(node_id)

    def _complete_drain(self, node_id: str) -> None:
        timer = self._timers.pop(f"drain:{node_id}", None)
        if timer is not None:
            timer.cancel()
        node = self.state.nodes[node_id]
        index = self.state.begin()
        now = now_ns()
        last = {**(node["LastDrain"] or {}), "Status": "complete", "UpdatedAt": rfc3339(now)}
        node = {
            **node,
            "Drain": False,
            "DrainStrategy": None,
            "LastDrain": last,
            "ModifyIndex": index,
        }
        self.state.put_node(node, index)
        self.state.commit(index, [self._node_event("NodeDrain", node)])

    def evaluate_node(self, node_id: str) -> dict[str, Any]:
        """``POST /v1/node/<id>/evaluate``: re-evaluate every job with work on the node."""
        self.node(node_id)
        keys: dict[JobKey, None] = {}
        for a in self.state.node_allocs(node_id):
            if not alloc_terminal(a):
                keys[(a["Namespace"], a["JobID"])] = None
        for key, job in self.state.jobs.items():
            if job["Type"] in ("system", "sysbatch") and not job["Stop"]:
                keys[key] = None
        index = self.state.begin()
        events: list[Event] = []
        eval_ids = []
        for key in keys:
            target = self.state.jobs.get(key)
            if target is None:
                continue
            ev = self._new_eval(target, index, "node-update", node_id=node_id)
            ev["NodeModifyIndex"] = self.state.nodes[node_id]["ModifyIndex"]
            self.state.put_eval(ev, index)
            events.append(self._eval_event("EvaluationUpdated", ev))
            eval_ids.append(ev["ID"])
        self.state.commit(index, events)
        for eval_id in eval_ids:
            self._enqueue(eval_id)
        return {
            "EvalIDs": eval_ids or None,
            "EvalCreateIndex": index if eval_ids else 0,
            "NodeModifyIndex": self.state.nodes[node_id]["ModifyIndex"],
            "Index": index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }
