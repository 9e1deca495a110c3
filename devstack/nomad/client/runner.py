"""The simulated client node: runs the allocations the scheduler puts on it.

An :class:`AllocRunner` per allocation drives Nomad's client lifecycle: task states and events
(``Received``, ``Task Setup``, ``Started``, ``Terminated``, ``Restarting``...), the restart
policy, sibling kills, service registration around task start and stop (deregistered *before*
the kill), and reports to the server, coalesced per loop turn as a real client batches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from typing import Any, Protocol

from devstack.nomad import jobspec
from devstack.nomad.config import NomadConfig
from devstack.nomad.structs import rfc3339 as _rfc3339
from devstack.nomad.util import format_go_duration, now_ns

from .consul_sync import AddressError, ConsulSync, service_registrations
from .drivers import DRIVERS, DriverError, ExitResult, TaskContext, TaskHandle
from .taskenv import interpolate_any, task_env

log = logging.getLogger("devstack.nomad.client")
ZERO_TIME = "0001-01-01T00:00:00Z"
MAX_EVENTS = 10


class ServerLink(Protocol):
    """What a client node needs from its server and agent (declared here, where it is used)."""

    config: NomadConfig
    data_dir: str
    consul: ConsulSync | None

    def node(self, node_id: str) -> dict[str, Any]: ...

    def update_alloc_client(
        self, alloc_id: str, client_status: str, description: str, task_states: dict[str, Any]
    ) -> None: ...

    def register_native(
        self, owner: str, alloc: dict[str, Any], regs: list[dict[str, Any]]
    ) -> None: ...

    def deregister_native(self, owner: str) -> None: ...

    def update_alloc_health(self, alloc_id: str, healthy: bool) -> None: ...


def task_event(type_: str, message: str, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "Type": type_,
        "Time": now_ns(),
        "Message": "",
        "DisplayMessage": message,
        "Details": {},
        "FailsTask": False,
        "RestartReason": "",
        "SetupError": "",
        "DriverError": "",
        "ExitCode": 0,
        "Signal": 0,
        "KillTimeout": 0,
        "KillError": "",
        "KillReason": "",
        "StartDelay": 0,
        "DownloadError": "",
        "ValidationError": "",
        "DiskLimit": 0,
        "FailedSibling": "",
        "TaskSignalReason": "",
        "TaskSignal": "",
        "DriverMessage": "",
        "GenericSource": "",
    }
    event.update(extra)
    return event


def client_status(states: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """Nomad's ``getClientStatus``: failed beats running beats pending beats complete."""
    kinds = set()
    for st in states.values():
        if st["State"] == "dead":
            kinds.add("failed" if st["Failed"] else "dead")
        else:
            kinds.add(st["State"])
    if "failed" in kinds:
        return "failed", "Failed tasks"
    if "running" in kinds:
        return "running", "Tasks are running"
    if "pending" in kinds:
        return "pending", "No tasks have started"
    return "complete", "All tasks have completed"


class TaskRunner:
    def __init__(self, runner: AllocRunner, task: dict[str, Any]) -> None:
        self.ar = runner
        self.task = task
        self.name = task["Name"]
        self.kill_reason = ""
        self.kill_event = asyncio.Event()
        self.state: dict[str, Any] = {
            "State": "pending",
            "Failed": False,
            "Restarts": 0,
            "LastRestart": ZERO_TIME,
            "StartedAt": ZERO_TIME,
            "FinishedAt": ZERO_TIME,
            "Events": [
                task_event("Received", "Task received by client"),
                task_event(
                    "Task Setup", "Building Task Directory", Message="Building Task Directory"
                ),
            ],
            "TaskHandle": None,
        }

    def emit(self, event: dict[str, Any], **state: Any) -> None:
        self.state["Events"] = [*self.state["Events"], event][-MAX_EVENTS:]
        self.state.update(state)
        self.ar.changed()

    def kill(self, reason: str = "") -> None:
        self.kill_reason = reason
        self.kill_event.set()

    async def _until_killed(self, aw: Any) -> Any:
        """Run ``aw`` unless a kill comes first; (True, None) if killed."""
        fut = asyncio.ensure_future(aw)
        killed = asyncio.ensure_future(self.kill_event.wait())
        done, _ = await asyncio.wait({fut, killed}, return_when=asyncio.FIRST_COMPLETED)
        if fut in done:
            killed.cancel()
            return False, fut.result()
        fut.cancel()
        with contextlib.suppress(asyncio.CancelledError, DriverError, Exception):
            await fut
        return True, None

    def _dead(self, failed: bool) -> None:
        self.state.update({"State": "dead", "Failed": failed, "FinishedAt": _rfc3339(now_ns())})
        self.ar.changed()

    async def run(self) -> None:
        policy = self.task["RestartPolicy"]
        interval = policy["Interval"] / 1e9
        attempts: list[float] = []
        driver = DRIVERS.get(self.task["Driver"])
        batch = self.ar.alloc["Job"]["Type"] in ("batch", "sysbatch")
        while True:
            if self.kill_event.is_set():
                self._dead(False)
                return
            result: ExitResult | None = None
            if driver is None:
                self.emit(
                    task_event(
                        "Driver Failure",
                        f'failed to start task "{self.name}": driver "{self.task["Driver"]}" '
                        "not available",
                        FailsTask=True,
                    )
                )
                self._dead(True)
                return
            env = self.ar.env_for(self.task)
            ctx = TaskContext(
                alloc_id=self.ar.alloc["ID"],
                task_name=self.name,
                config=interpolate_any(self.task["Config"] or {}, env, self.ar.node),
                env=env,
                task_dir=self.ar.task_dir(self.name),
                logs_dir=os.path.join(self.ar.alloc_dir, "alloc", "logs"),
                start_delay=self.ar.cluster.config.docker_start_delay,
                ports=self.ar.served_ports(self.task),
                node_meta=self.ar.node.get("Meta") or {},
            )
            if self.task["Driver"] == "docker":
                image = (self.task["Config"] or {}).get("image", "")
                self.emit(task_event("Driver", "Downloading image", Details={"image": str(image)}))
            try:
                killed, handle = await self._until_killed(DRIVERS[self.task["Driver"]].start(ctx))
            except DriverError as exc:
                killed, handle = False, None
                self.emit(task_event("Driver Failure", str(exc), DriverError=str(exc)))
            if killed:
                self._dead(False)
                return
            if handle is not None:
                self.emit(
                    task_event("Started", "Task started by client"),
                    State="running",
                    StartedAt=_rfc3339(now_ns()),
                )
                self.ar.register_task_services(self.task, env)
                result = await self._supervise(handle)
                if result is None:
                    return
            # The task exited or failed to start: the restart policy decides what comes next.
            if result is not None and batch and result.successful:
                self._dead(False)
                return
            now = time.monotonic()
            attempts = [t for t in attempts if now - t < interval]
            delay = policy["Delay"] / 1e9
            if len(attempts) >= policy["Attempts"]:
                if policy["Mode"] != "delay":
                    self.emit(
                        task_event(
                            "Not Restarting",
                            f"Exceeded allowed attempts {policy['Attempts']} in interval "
                            f'{format_go_duration(policy["Interval"])} and mode is "fail"',
                            FailsTask=True,
                            RestartReason="Exceeded allowed attempts",
                        )
                    )
                    self._dead(True)
                    self.ar.task_failed(self)
                    return
                delay = max(delay, interval - (now - attempts[0]))
                attempts = []
                reason = "Exceeded allowed attempts, applying a delay"
            else:
                reason = "Restart within policy"
            attempts.append(now)
            self.emit(
                task_event(
                    "Restarting",
                    f"Task restarting in {format_go_duration(int(delay * 1e9))}",
                    RestartReason=reason,
                    StartDelay=int(delay * 1e9),
                ),
                State="pending",
                Restarts=self.state["Restarts"] + 1,
                LastRestart=_rfc3339(now_ns()),
            )
            killed, _ = await self._until_killed(asyncio.sleep(delay))
            if killed:
                self._dead(False)
                return

    async def _supervise(self, handle: TaskHandle) -> ExitResult | None:
        """Wait for the task to exit (its result) or be killed (None, after killing it)."""
        killed, result = await self._until_killed(handle.wait())
        if killed:
            kill_timeout = min(
                self.task["KillTimeout"] / 1e9, self.ar.cluster.config.max_kill_timeout
            )
            # Nomad deregisters services before it kills, so nothing routes to a dying task.
            await self.ar.deregister_task_services(self.task)
            event_extra = {"KillTimeout": self.task["KillTimeout"]}
            if self.kill_reason:
                self.emit(
                    task_event(
                        "Sibling Task Failed", self.kill_reason, FailedSibling=self.kill_reason
                    )
                )
            self.emit(
                task_event(
                    "Killing",
                    f"Sent interrupt. Waiting {format_go_duration(self.task['KillTimeout'])} "
                    "before force killing",
                    **event_extra,
                )
            )
            await handle.kill(self.task["KillSignal"], kill_timeout)
            self.emit(task_event("Killed", "Task successfully killed"))
            self._dead(False)
            return None
        assert isinstance(result, ExitResult)
        await self.ar.deregister_task_services(self.task)
        self.emit(
            task_event(
                "Terminated",
                f"Exit Code: {result.exit_code}"
                + (f", Signal: {result.signal}" if result.signal else ""),
                ExitCode=result.exit_code,
                Signal=result.signal,
                Details={"exit_code": str(result.exit_code), "signal": str(result.signal)},
            ),
            State="pending",
        )
        return result


class AllocRunner:
    def __init__(self, client: NodeClient, alloc: dict[str, Any]) -> None:
        self.client = client
        self.cluster = client.cluster
        self.alloc = alloc
        self.node = self.cluster.node(client.node_id)
        group = jobspec.group_spec(alloc["Job"], alloc["TaskGroup"])
        assert group is not None
        self.group = group
        self.alloc_dir = os.path.join(self.cluster.data_dir, "alloc", alloc["ID"])
        self.tasks = [TaskRunner(self, t) for t in group["Tasks"] or []]
        self.report = True
        self._push_scheduled = False
        self._main: asyncio.Task[None] | None = None
        self._owners: list[str] = []
        # Set on every task state change; the health tracker sleeps on it.
        self._state_event = asyncio.Event()

    def served_ports(self, task: dict[str, Any]) -> list[tuple[str, int]]:
        """Host ports a simulated container answers on (see :mod:`.drivers`)."""
        if task["Driver"] != "docker":
            return []
        res = self.alloc["AllocatedResources"]
        out = [
            (net.get("IP", ""), p["Value"])
            for net in (res["Tasks"].get(task["Name"]) or {}).get("Networks") or []
            for p in (net.get("ReservedPorts") or []) + (net.get("DynamicPorts") or [])
        ]
        named = (task["Config"] or {}).get("ports")
        claimed = {
            label
            for t in self.group["Tasks"] or []
            for label in ((t["Config"] or {}).get("ports") or [])
            if isinstance(label, str)
        }
        first_unnamed = next(
            (
                t["Name"]
                for t in self.group["Tasks"] or []
                if t["Driver"] == "docker" and "ports" not in (t["Config"] or {})
            ),
            None,
        )
        for p in res["Shared"]["Ports"] or []:
            mine = (
                p["Label"] in named
                if isinstance(named, list)
                else task["Name"] == first_unnamed and p["Label"] not in claimed
            )
            if mine:
                out.append((p["HostIP"], p["Value"]))
        return out

    def task_dir(self, task: str) -> str:
        return os.path.join(self.alloc_dir, task)

    def env_for(self, task: dict[str, Any]) -> dict[str, str]:
        return task_env(
            self.alloc,
            task,
            self.node,
            self.cluster.config.region,
            self.alloc_dir,
            self.task_dir(task["Name"]),
            inherit=task["Driver"] == "raw_exec",
        )

    def start(self) -> None:
        self._main = asyncio.get_running_loop().create_task(self._run())

    def update(self, alloc: dict[str, Any]) -> None:
        """Adopt an in-place updated allocation: its job's new services are re-registered.

        Only what Nomad updates in place can differ (see
        :func:`devstack.nomad.jobspec.group_destructively_changed`): services, policies,
        counts. Registrations change only where the service definitions did.
        """
        group = jobspec.group_spec(alloc["Job"], alloc["TaskGroup"])
        if group is None:
            return
        old_group, self.alloc, self.group = self.group, alloc, group
        new_tasks = {t["Name"]: t for t in group["Tasks"] or []}
        if self._main is None or self._main.done():
            for t in self.tasks:
                t.task = new_tasks.get(t.name, t.task)
            return
        owner = f"group-{group['Name']}"
        if old_group["Services"] != group["Services"] and (
            old_group["Services"] or group["Services"]
        ):
            self._replace_services(owner, group["Services"], group["Tasks"][0], None)
        for t in self.tasks:
            new_task = new_tasks.get(t.name)
            if new_task is None:
                continue
            old_services, t.task = t.task["Services"], new_task
            if old_services != new_task["Services"] and t.state["State"] == "running":
                self._replace_services(t.name, new_task["Services"], new_task, new_task)

    def _replace_services(
        self,
        owner: str,
        services: list[dict[str, Any]] | None,
        env_task: dict[str, Any],
        task: dict[str, Any] | None,
    ) -> None:
        key = f"{self.alloc['ID']}/{owner}"
        env = (
            self.env_for(env_task)
            if task is not None
            else task_env(
                self.alloc,
                env_task,
                self.node,
                self.cluster.config.region,
                self.alloc_dir,
                self.alloc_dir,
                False,
            )
        )
        self.cluster.deregister_native(key)
        if self.cluster.consul is not None:
            self.cluster.consul.clear(key)
        if key in self._owners:
            self._owners.remove(key)
        try:
            self._services(services, owner, env, task)
        except AddressError as exc:
            log.error("update of alloc %s services failed: %s", self.alloc["ID"], exc)

    def stop(self) -> None:
        for t in self.tasks:
            t.kill()

    def abandon(self) -> None:
        """The node is gone: kill everything, report nothing (the server marked it lost)."""
        self.report = False
        self.stop()

    async def wait(self) -> None:
        if self._main is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._main

    def changed(self) -> None:
        self._state_event.set()
        if self._push_scheduled or not self.report:
            return
        self._push_scheduled = True
        asyncio.get_running_loop().call_soon(self._push)

    def _push(self) -> None:
        self._push_scheduled = False
        if not self.report:
            return
        states = {t.name: {**t.state, "Events": list(t.state["Events"])} for t in self.tasks}
        status, desc = client_status(states)
        self.cluster.update_alloc_client(self.alloc["ID"], status, desc, states)

    def task_failed(self, failed: TaskRunner) -> None:
        for t in self.tasks:
            if t is not failed and t.state["State"] != "dead":
                t.kill(f'Task\'s sibling "{failed.name}" failed')

    def _setup_dirs(self) -> None:
        # Only processes read the directories; simulated containers skip the disk work.
        if all(t.task["Driver"] != "raw_exec" for t in self.tasks):
            return
        for sub in ("alloc/data", "alloc/logs", "alloc/tmp"):
            os.makedirs(os.path.join(self.alloc_dir, sub), exist_ok=True)
        for t in self.tasks:
            for sub in ("local", "secrets", "tmp"):
                os.makedirs(os.path.join(self.task_dir(t.name), sub), exist_ok=True)

    def _services(
        self,
        services: list[dict[str, Any]] | None,
        owner: str,
        env: dict[str, str],
        task: dict[str, Any] | None = None,
    ) -> None:
        """Register ``services``; :class:`AddressError` if a port label resolves to nothing."""
        if not services:
            return
        consul = [s for s in services if s["Provider"] == "consul"]
        native = [s for s in services if s["Provider"] == "nomad"]
        # Build every registration first: like RegisterWorkload, one bad port registers none.
        consul_regs = service_registrations(self.alloc, consul, owner, env, self.node, task)
        native_regs = service_registrations(self.alloc, native, owner, env, self.node, task)
        key = f"{self.alloc['ID']}/{owner}"
        self._owners.append(key)
        if consul and self.cluster.consul is not None:
            self.cluster.consul.set(key, consul_regs)
        if native:
            self.cluster.register_native(key, self.alloc, native_regs)

    async def _drop_services(self, owner: str) -> None:
        key = f"{self.alloc['ID']}/{owner}"
        self.cluster.deregister_native(key)
        if self.cluster.consul is not None:
            self.cluster.consul.clear(key)
            await self.cluster.consul.flush(2.0)

    def register_task_services(self, task: dict[str, Any], env: dict[str, str]) -> None:
        # Nomad's service hook failing in poststart is logged; the task keeps running.
        try:
            self._services(task["Services"], task["Name"], env, task)
        except AddressError as exc:
            log.error("poststart failed: alloc %s task %s: %s", self.alloc["ID"], task["Name"], exc)

    async def deregister_task_services(self, task: dict[str, Any]) -> None:
        if task["Services"]:
            await self._drop_services(task["Name"])

    async def _run(self) -> None:
        self._setup_dirs()
        self.changed()
        leader = next((t for t in self.tasks if t.task["Leader"]), None)
        if self.group["Services"]:
            env = task_env(
                self.alloc,
                self.group["Tasks"][0],
                self.node,
                self.cluster.config.region,
                self.alloc_dir,
                self.alloc_dir,
                False,
            )
            try:
                self._services(self.group["Services"], f"group-{self.group['Name']}", env)
            except AddressError as exc:
                # A failed prerun hook fails every task of the allocation before it starts.
                reason = f'failed to setup alloc: pre-run hook "group_services" failed: {exc}'
                for t in self.tasks:
                    t.emit(task_event("Setup Failure", reason, FailsTask=True, SetupError=reason))
                    t.state.update({"State": "dead", "Failed": True})
                    t.state["FinishedAt"] = _rfc3339(now_ns())
                self.changed()
                return
        runs = {asyncio.ensure_future(t.run()): t for t in self.tasks}
        health = None
        if self.alloc.get("DeploymentID") or self.alloc["Job"]["Type"] == "service":
            health = asyncio.ensure_future(self._watch_health())
        pending = set(runs)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                t = runs[fut]
                if t is leader:
                    for other in self.tasks:
                        if other is not t:
                            other.kill()
        if health is not None:
            health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health
        if self.group["Services"]:
            await self._drop_services(f"group-{self.group['Name']}")
        self.changed()

    async def _watch_health(self) -> None:
        """The client's allocation health tracker, as Nomad's ``health_hook``.

        Healthy once every task runs (and, for ``health_check = "checks"``, every Consul check
        of the allocation passes) without interruption for ``min_healthy_time``; unhealthy on
        a failed task or when ``healthy_deadline`` passes first. ``manual`` reports nothing.
        A deployment's allocation uses its ``update`` block; any other service allocation
        the group's ``migrate`` block (what paces a drain), looking at Consul less often.
        """
        job = self.alloc["Job"]
        if self.alloc.get("DeploymentID"):
            strategy = self.group.get("Update") or job.get("Update") or {}
            check_every = 0.25
        else:
            strategy = self.group.get("Migrate") or {
                "HealthCheck": "checks",
                "MinHealthyTime": 10 * 10**9,
                "HealthyDeadline": 300 * 10**9,
            }
            check_every = 1.0
        mode = strategy.get("HealthCheck") or "checks"
        if mode == "manual":
            return
        loop = asyncio.get_running_loop()
        min_healthy = int(strategy.get("MinHealthyTime") or 0) / 1e9
        deadline = loop.time() + int(strategy.get("HealthyDeadline") or 300 * 10**9) / 1e9
        poll_checks = mode == "checks" and self.cluster.consul is not None
        since: float | None = None
        while True:
            states = [t.state for t in self.tasks]
            if any(st["State"] == "dead" and st["Failed"] for st in states):
                self.cluster.update_alloc_health(self.alloc["ID"], False)
                return
            if all(st["State"] == "dead" for st in states):
                return  # stopped before it was healthy: nothing more to track
            ok = all(st["State"] == "running" for st in states)
            if ok and poll_checks:
                ok = await self._checks_passing()
            now = loop.time()
            if ok:
                since = now if since is None else since
                if now - since >= min_healthy:
                    self.cluster.update_alloc_health(self.alloc["ID"], True)
                    return
            else:
                since = None
            if now >= deadline:
                self.cluster.update_alloc_health(self.alloc["ID"], False)
                return
            # Sleep until something can have changed: a task state, the healthy time, the
            # deadline, or (checks) the next look at Consul; a thousand idle trackers cost
            # nothing between their events.
            wake = deadline - now
            if since is not None:
                wake = min(wake, since + min_healthy - now)
            if poll_checks:
                wake = min(wake, check_every)
            self._state_event.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the event is set (the tasks dying set it just before the runner
            # cancels this tracker), and the tracker then ran on to its deadline, holding the
            # allocation's group services in Consul for minutes after it stopped.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wake, 0.01)):
                    await self._state_event.wait()

    async def _checks_passing(self) -> bool:
        consul = self.cluster.consul
        if consul is None:
            return True
        wanted = [cid for owner in self._owners for cid in consul.check_ids(owner)]
        if not wanted:
            return True
        try:
            statuses = await consul.check_statuses()
        except (TimeoutError, RuntimeError, OSError) as exc:
            log.warning("health: consul checks unavailable: %s", exc)
            return False
        except Exception as exc:  # aiohttp's client errors
            log.warning("health: consul checks unavailable: %s", exc)
            return False
        return all(statuses.get(cid) == "passing" for cid in wanted)


class NodeClient:
    """One simulated Nomad client: the allocation runners of one node."""

    def __init__(self, cluster: ServerLink, node_id: str) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.runners: dict[str, AllocRunner] = {}

    def run_alloc(self, alloc: dict[str, Any]) -> None:
        if alloc["ID"] in self.runners:
            return
        runner = AllocRunner(self, alloc)
        self.runners[alloc["ID"]] = runner
        runner.start()

    def update_alloc(self, alloc: dict[str, Any]) -> None:
        """An in-place update: the allocation keeps running under the new job version."""
        runner = self.runners.get(alloc["ID"])
        if runner is not None:
            runner.update(alloc)

    def stop_alloc(self, alloc_id: str) -> None:
        runner = self.runners.get(alloc_id)
        if runner is not None:
            runner.stop()

    def lose_all(self) -> None:
        for runner in self.runners.values():
            runner.abandon()

    def gc(self, alloc_id: str) -> None:
        runner = self.runners.pop(alloc_id, None)
        if runner is not None:
            shutil.rmtree(runner.alloc_dir, ignore_errors=True)

    async def shutdown(self) -> None:
        for runner in self.runners.values():
            runner.report = False
            runner.stop()
        await asyncio.gather(*(r.wait() for r in self.runners.values()))
