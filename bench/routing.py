"""Routing controllers at scale: allocations, haproxy-kv and elb with many users.

The embedded Consul runs in its own process (``python -m devstack.consul``); the controllers run
in this process on a Manager, the devstack ELB endpoint (moto behind AWS's listener rules) on a
thread of it. Everything talks over loopback HTTP.

- allocations: USERS users' three services each (TTL checks, passing) registered at once;
  time until every record exists; the latency of one check turning critical -> record removed;
  the Consul connections the process holds while watching all of them.
- haproxy-kv: USERS users' allocation records written in transactions of 64; time until every
  user is routed, ports unique, and the conflicts the claim keys turned away.
- elb: ELB_USERS users over two load balancers of quota 100; the API calls made to converge,
  then for 40 departures and 40 arrivals at once.
- The size of the largest value each controller writes (Consul's limit is 512 KiB).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
from prometheus_client import REGISTRY

from bench.framework import consul_process, percentile
from controllers import allocations, elb, haproxy_kv
from controllers.api.ids import ALLOCATIONS_PREFIX, ELB_PREFIX, HAPROXY_DATA_PREFIX, REQUESTS_PREFIX
from controllers.settings import ELBSettings, HAProxySettings
from devstack.elb import ELBEndpoint
from devstack.elb import Listener as DevListener
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient, KVOp
from reconciler.controller import Controller, RunnerOptions
from reconciler.manager import Manager, ManagerOptions

USERS = int(os.environ.get("BENCH_ROUTING_USERS", "1000"))
ELB_USERS = int(os.environ.get("BENCH_ELB_USERS", "190"))
STATUS_CHANGES = 40
ALLOC = "3a1f9d3e-1111-4222-8333-{:012d}"


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def consul_connections(port: int) -> int:
    """Established TCP connections from this process to ``port`` (from /proc)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                count += 1
    return count


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 600.0) -> float:
    started = time.perf_counter()
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)
    return time.perf_counter() - started


def manager_for(controllers: list[Controller], environ: dict[str, str]) -> Manager:
    return Manager(
        controllers,
        options=ManagerOptions(metrics_port=0, runner=RunnerOptions(identity="bench")),
        config=ClientsConfig.from_env(environ),
    )


async def count(consul: ConsulClient, prefix: str) -> int:
    return len(await consul.kv_keys(prefix))


async def largest(consul: ConsulClient, prefix: str) -> int:
    _, entries = await consul.kv_list(prefix)
    return max((len(e.value or b"") for e in entries), default=0)


# --------------------------------------------------------------------------- allocations


async def bench_allocations(address: str) -> dict[str, Any]:
    environ = {"CONSUL_HTTP_ADDR": address}
    port = int(address.rsplit(":", 1)[1])
    manager = manager_for([allocations.controller], environ)
    out: dict[str, Any] = {}
    async with (
        ConsulClient(ClientsConfig.from_env(environ).consul) as consul,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=30, trust_env=False) as http,
        anyio.create_task_group() as tg,
    ):
        ops = [KVOp.set(f"{REQUESTS_PREFIX}u{i}", b"{}") for i in range(USERS)]
        for start in range(0, len(ops), 64):
            await consul.txn(ops[start : start + 64])
        (await http.get("/v1/status/leader")).raise_for_status()
        # The bench's own clients' connections, so the controller's can be told apart.
        baseline = consul_connections(port)
        await tg.start(manager.run)
        await eventually(lambda: _true(manager.ready))
        limiter = anyio.CapacityLimiter(16)

        async def register(i: int, load: httpx.AsyncClient) -> None:
            async with limiter:
                for role, route, offset in (
                    ("hmi", "http", 0),
                    ("broker", "http", 1),
                    ("core", "tcp", 2),
                ):
                    sid = f"_nomad-task-{ALLOC.format(i)}-core-core-hmi-u{i}-{role}-{role}"
                    body = {
                        "ID": sid,
                        "Name": f"core-hmi-u{i}-{role}",
                        "Address": "10.0.0.5",
                        "Port": 21000 + 3 * (i % 10000) + offset,
                        "Meta": {
                            "manticore_user": f"u{i}",
                            "manticore_role": role,
                            "manticore_route": route,
                        },
                        "Check": {"CheckID": f"c:{sid}", "TTL": "3600s", "Status": "passing"},
                    }
                    (await load.put("/v1/agent/service/register", json=body)).raise_for_status()

        started = time.perf_counter()
        async with (
            httpx.AsyncClient(base_url=f"http://{address}", timeout=30, trust_env=False) as load,
            anyio.create_task_group() as reg,
        ):
            for i in range(USERS):
                reg.start_soon(register, i, load)
        registered = time.perf_counter()

        async def all_published() -> bool:
            return await count(consul, ALLOCATIONS_PREFIX) >= USERS

        await eventually(all_published)
        out["register_s"] = registered - started
        out["converge_after_last_s"] = time.perf_counter() - registered
        out["connections"] = consul_connections(port) - baseline

        latencies: list[float] = []
        for n in range(STATUS_CHANGES):
            user = f"u{n * 7 % USERS}"
            sid = f"_nomad-task-{ALLOC.format(n * 7 % USERS)}-core-core-hmi-{user}-core-core"
            t0 = time.perf_counter()
            (await http.put(f"/v1/agent/check/fail/c:{sid}")).raise_for_status()

            async def gone(u: str = user) -> bool:
                return (await consul.kv_get(f"{ALLOCATIONS_PREFIX}{u}"))[1] is None

            await eventually(gone, timeout=60)
            latencies.append(time.perf_counter() - t0)
            (await http.put(f"/v1/agent/check/pass/c:{sid}")).raise_for_status()
            await anyio.sleep(0.05)
        out["withdraw_p50_ms"] = statistics.median(latencies) * 1000
        out["withdraw_p99_ms"] = percentile(latencies, 0.99) * 1000
        out["connections_after"] = consul_connections(port) - baseline
        out["largest_value"] = await largest(consul, ALLOCATIONS_PREFIX)
        manager.stop()
    return out


# --------------------------------------------------------------------------- haproxy-kv


def allocation_record(i: int) -> bytes:
    address = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    return json.dumps(
        {
            "services": {
                "hmi": {"address": address, "port": 21000, "route": "http"},
                "broker": {"address": address, "port": 21001, "route": "http"},
                "core": {"address": address, "port": 21002, "route": "tcp"},
            },
            "job": f"core-hmi-h{i}",
            "allocation": ALLOC.format(i),
            "node": "node-1",
        }
    ).encode()


async def bench_haproxy_kv(address: str) -> dict[str, Any]:
    environ = {"CONSUL_HTTP_ADDR": address}
    cfg = HAProxySettings.model_validate(
        {"TCP_PORT_RANGE_START": 20000, "TCP_PORT_RANGE_END": 20000 + USERS - 1}
    )
    manager = manager_for([haproxy_kv.build(cfg)], environ)
    conflicts = metric("manticore_route_reservation_conflicts_total")
    out: dict[str, Any] = {}
    async with (
        ConsulClient(ClientsConfig.from_env(environ).consul) as consul,
        anyio.create_task_group() as tg,
    ):
        await tg.start(manager.run)
        await eventually(lambda: _true(manager.ready))
        started = time.perf_counter()
        ops: list[KVOp] = []
        for i in range(USERS):
            ops.append(KVOp.set(f"{REQUESTS_PREFIX}h{i}", b"{}"))
            ops.append(KVOp.set(f"{ALLOCATIONS_PREFIX}h{i}", allocation_record(i)))
        for start in range(0, len(ops), 64):
            await consul.txn(ops[start : start + 64])
        written = time.perf_counter()

        async def all_routed() -> bool:
            return await count(consul, HAPROXY_DATA_PREFIX) >= USERS

        await eventually(all_routed)
        out["converge_s"] = time.perf_counter() - started
        out["after_last_write_s"] = time.perf_counter() - written
        _, entries = await consul.kv_list(HAPROXY_DATA_PREFIX)
        ports = [json.loads(e.value or b"{}")["tcp"][0]["port"] for e in entries]
        out["unique_ports"] = len(set(ports)) == len(ports) == USERS
        out["conflicts"] = metric("manticore_route_reservation_conflicts_total") - conflicts
        out["largest_routes"] = await largest(consul, HAPROXY_DATA_PREFIX)
        out["largest_reservation"] = await largest(consul, "manticore/routes/data/")
        manager.stop()
    return out


# --------------------------------------------------------------------------- elb


def user_routes(port: int) -> bytes:
    return json.dumps(
        {"tcp": [{"port": port, "address": "10.0.0.5:21002", "role": "core"}]}
    ).encode()


async def bench_elb(address: str) -> dict[str, Any]:
    names = ("bench-a", "bench-b")
    out: dict[str, Any] = {}
    with ELBEndpoint(
        load_balancer=",".join(names), listeners=[DevListener("HTTP", 80, 8080)]
    ) as aws:
        saved = {k: os.environ.get(k) for k in aws.env}
        os.environ.update(aws.env)
        try:
            environ = {"CONSUL_HTTP_ADDR": address, **aws.env}
            controller = elb.build(
                ELBSettings.model_validate({"ELB_MANTICORE_NAME": names, "ELB_WS_PORT": 2020}),
                HAProxySettings.model_validate({}),
            )
            manager = manager_for([controller], environ)
            async with (
                ConsulClient(ClientsConfig.from_env(environ).consul) as consul,
                anyio.create_task_group() as tg,
            ):
                await tg.start(manager.run)
                await eventually(lambda: _true(manager.ready))
                before = aws.calls()
                started = time.perf_counter()
                ops = [
                    KVOp.set(f"{HAPROXY_DATA_PREFIX}e{i}", user_routes(20000 + i))
                    for i in range(ELB_USERS)
                ]
                for start in range(0, len(ops), 64):
                    await consul.txn(ops[start : start + 64])

                async def recorded(n: int) -> bool:
                    return await count(consul, ELB_PREFIX) >= n

                await eventually(lambda: recorded(ELB_USERS))
                out["converge_s"] = time.perf_counter() - started
                out["calls"] = _diff(aws.calls(), before)

                before = aws.calls()
                started = time.perf_counter()
                ops = [KVOp.delete(f"{HAPROXY_DATA_PREFIX}e{i}") for i in range(40)]
                ops += [
                    KVOp.set(f"{HAPROXY_DATA_PREFIX}n{i}", user_routes(20500 + i))
                    for i in range(40)
                ]
                await consul.txn(ops[:64])
                await consul.txn(ops[64:])

                async def churned() -> bool:
                    keys = await consul.kv_keys(ELB_PREFIX)
                    return len(keys) == ELB_USERS and not any(k.endswith("/e0") for k in keys)

                await eventually(churned)
                out["churn_s"] = time.perf_counter() - started
                out["churn_calls"] = _diff(aws.calls(), before)
                out["quota_errors"] = metric(
                    "manticore_elb_api_calls_total",
                    {"call": "CreateLoadBalancerListeners", "outcome": "quota"},
                )
                out["largest_record"] = await largest(consul, ELB_PREFIX)
                manager.stop()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return out


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


async def _true(value: bool) -> bool:
    return value


def _calls(calls: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))


def run() -> str:
    load = os.getloadavg()[0]
    with consul_process() as address:
        alloc = anyio.run(bench_allocations, address)
    with consul_process() as address:
        routes = anyio.run(bench_haproxy_kv, address)
    with consul_process() as address:
        lbs = anyio.run(bench_elb, address)
    rows = [
        (
            "allocations: 3 services x users registered (16 concurrent PUTs)",
            f"{alloc['register_s']:.1f} s",
            "",
        ),
        (
            "allocations: last registration -> every record published",
            f"{alloc['converge_after_last_s']:.1f} s",
            "",
        ),
        (
            "allocations: one check critical -> record removed, p50",
            f"{alloc['withdraw_p50_ms']:.0f} ms",
            "",
        ),
        (
            f"allocations: same, p99 ({STATUS_CHANGES} changes)",
            f"{alloc['withdraw_p99_ms']:.0f} ms",
            "",
        ),
        (
            "allocations: Consul connections held, all users watched",
            f"{alloc['connections']} (after changes: {alloc['connections_after']})",
            "bounded, independent of users",
        ),
        (
            "haproxy-kv: records written -> every user routed (4 workers)",
            f"{routes['converge_s']:.1f} s",
            "",
        ),
        (
            "haproxy-kv: ports unique over a range of exactly the users",
            "yes" if routes["unique_ports"] else "NO",
            "yes",
        ),
        (
            "haproxy-kv: reservations refused by a claim and retried",
            f"{routes['conflicts']:.0f}",
            "",
        ),
        (
            f"elb: {ELB_USERS} users over 2 load balancers -> every record",
            f"{lbs['converge_s']:.1f} s",
            "",
        ),
        ("elb: calls to converge", _calls(lbs["calls"]), "one create per load balancer and pass"),
        ("elb: 40 leave + 40 arrive at once -> converged", f"{lbs['churn_s']:.1f} s", ""),
        ("elb: calls for that churn", _calls(lbs["churn_calls"]), "batched"),
        ("elb: TooManyListeners answers", f"{lbs['quota_errors']:.0f}", "0"),
        (
            "largest value: allocation record / routes / reservation / ELB record",
            " / ".join(
                str(v)
                for v in (
                    alloc["largest_value"],
                    routes["largest_routes"],
                    routes["largest_reservation"],
                    lbs["largest_record"],
                )
            )
            + " bytes",
            "<< 512 KiB",
        ),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    return (
        f"## Routing controllers ({USERS} users)\n\n"
        "| measure | result | target |\n|---|---|---|\n"
        f"{table}\n\n"
        "Method: the embedded Consul in its own process, one Manager per controller in this "
        "process, the devstack ELB endpoint (moto behind AWS's listener rules, quota 100) on a "
        "thread of it. Records are counted with `?keys` reads every 50 ms; connections are "
        "the established sockets of this process to Consul's port (from /proc). allocations: "
        f"{USERS} requests first, then 3 services per user with passing TTL checks; withdrawal "
        "latency runs from the check-fail PUT to the record being gone. haproxy-kv: requests and "
        "allocation records in transactions of 64, port range of exactly the number of users. "
        f"elb: two load balancers with two fixed listeners each (196 user slots), {ELB_USERS} "
        f"users' routes in transactions of 64. 1-minute load average at start: {load:.2f}."
    )
