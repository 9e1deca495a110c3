"""The haproxy controller with the real HAProxy: route latency, reloads, drops, and scale.

Two paths side by side: ``runtime`` (the controller's default: map files and pre-provisioned
slots over the runtime API, a reload only when the shape changes) and ``reload`` (the same
controller with ``MANTICORE_HAPROXY_UPDATE_MODE=reload``: every change re-rendered, validated and
reloaded, as consul-template did).

- Arrivals: 1,000 users' ``haproxy/data/<id>`` written over 60 s into the embedded Consul (its
  own process) by a load generator (its own process), which polls each new user's subdomain and
  TCP port through HAProxy until they answer with that user's name. Latency is from the write
  returning to the first correct answer, debounce included. Meanwhile four clients repeat HTTP
  requests on keep-alive connections and two TCP sessions echo a line every 100 ms, through
  HAProxy, counting every request or session dropped. The users' HMI and core servers run in a
  third process. The controller and HAProxy run with their default settings apart from ports and
  directories (debounce 0.1 s / 0.3 s, 4,096 HTTP slots, TCP slots for the whole range).
- Scale: a routing table of 5,000 users (3 HTTP routes and 1 TCP port each) planned, rendered
  and checked with ``haproxy -c``; HAProxy started with it; then one arrival over the runtime
  API and one full reload, as each path pays per change at that size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from bench.framework import consul_process, percentile
from controllers.haproxy import metrics, render
from controllers.haproxy.applier import Applier
from controllers.haproxy.controller import WATCH, HAProxyRouter
from controllers.haproxy.plan import SlotPolicy, plan
from controllers.haproxy.process import HAProxyProcess
from controllers.haproxy.routes import Routing, Target
from controllers.settings import HAProxySettings, Settings
from devstack.process import free_ports
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient
from reconciler.controller import Context, Controller, RunnerOptions
from reconciler.manager import Manager, ManagerOptions
from reconciler.result import Result

USERS = int(os.environ.get("BENCH_HAPROXY_USERS", "1000"))
ARRIVAL_SECONDS = float(os.environ.get("BENCH_HAPROXY_SECONDS", "60"))
SCALE_USERS = int(os.environ.get("BENCH_HAPROXY_SCALE_USERS", "5000"))
DOMAIN = "bench.manticore.test"
LATENCY_TARGET = 1.0
RELOAD_TARGET = 5


def ephemeral_ports() -> range:
    """The kernel's range for port-0 binds: a chosen range stays out of it, so no server that
    lets the kernel pick its port (the backends) can land inside HAProxy's TCP range."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_range(count: int) -> range:
    for _ in range(200):
        start = random.randint(10000, ephemeral_ports().start - count)
        held: list[socket.socket] = []
        try:
            for port in range(start, start + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return range(start, start + count)
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def bench_settings(config_dir: Path, tcp: range, **env: str) -> HAProxySettings:
    main_port, stats_port = free_ports(2)
    return Settings.from_env(
        {
            "DOMAIN_NAME": DOMAIN,
            "HAPROXY_HTTP_LISTEN": str(main_port),
            "TCP_PORT_RANGE_START": str(tcp.start),
            "TCP_PORT_RANGE_END": str(tcp.stop - 1),
            "MANTICORE_HAPROXY_CONFIG_DIR": str(config_dir),
            "MANTICORE_HAPROXY_STATS_PORT": str(stats_port),
            "MANTICORE_HAPROXY_BIND_ADDRESS": "127.0.0.1",
            "MANTICORE_HAPROXY_HARD_STOP_AFTER": "120",
            **env,
        }
    ).haproxy


def subdomains(user: str) -> list[str]:
    return [f"{role}{user}".ljust(16, "x") for role in ("hmi", "brk", "cws")]


def user_value(user: str, hmi: int, core: int, port: int) -> str:
    address = f"127.0.0.1:{hmi}"
    http = [
        {"subdomain": s, "address": address, "role": role}
        for s, role in zip(subdomains(user), ("hmi", "broker", "core-ws"), strict=True)
    ]
    tcp = [{"port": port, "address": f"127.0.0.1:{core}", "role": "core"}]
    return json.dumps({"http": http, "tcp": tcp})


@contextlib.contextmanager
def backends_process(users: list[str]) -> Iterator[dict[str, list[int]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._haproxy_world", "backends", *users],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(10)


def reload_counts() -> dict[str, float]:
    return {
        reason: metrics.RELOADS.labels(reason=reason)._value.get()
        for reason in metrics.RELOAD_REASONS
    }


def runtime_updates() -> float:
    return sum(metrics.RUNTIME_UPDATES.labels(op=op)._value.get() for op in metrics.RUNTIME_OPS)


async def arrivals(mode: str) -> dict[str, Any]:
    """The 1,000-users scenario on one update path; the load generator's results plus counts."""
    tcp = free_range(USERS + 8)
    users = [f"u{i:04d}" for i in range(USERS + 1)]  # u0000 is there from the start
    with (
        tempfile.TemporaryDirectory(prefix="bench-haproxy-") as tmp,
        consul_process() as consul_address,
        backends_process(users) as ports,
    ):
        settings = bench_settings(Path(tmp) / "haproxy", tcp, MANTICORE_HAPROXY_UPDATE_MODE=mode)
        process = HAProxyProcess(settings.config_dir)
        router = HAProxyRouter(config=settings)
        trace: dict[str, dict[str, float]] = {"seen": {}, "applied": {}}
        config = ClientsConfig.from_env({"CONSUL_HTTP_ADDR": consul_address})
        manager = Manager(
            [traced(router, trace)],
            options=ManagerOptions(metrics_port=0, runner=RunnerOptions(identity="bench")),
            config=config,
        )
        plan_users = []
        for i, user in enumerate(users):
            hmi, core = ports[user]
            plan_users.append(
                {
                    "id": user,
                    "host": f"{subdomains(user)[0]}.{DOMAIN}",
                    "port": tcp[i],
                    "value": user_value(user, hmi, core, tcp[i]),
                }
            )
        try:
            async with ConsulClient(config.consul) as consul, anyio.create_task_group() as tg:
                await consul.kv_put("haproxy/domainName", DOMAIN.encode())
                await consul.kv_put("haproxy/mainPort", str(settings.main_port).encode())
                steady = plan_users[0]
                await consul.kv_put(f"haproxy/data/{steady['id']}", steady["value"].encode())
                await tg.start(manager.run)
                with anyio.fail_after(60):
                    while (
                        router.applied is None or steady["id"] not in router.applied.routing.users()
                    ):
                        await anyio.sleep(0.05)
                await anyio.sleep(1.0)
                before = reload_counts()
                updates_before = runtime_updates()
                cpu_before = _cpu_seconds()
                plan_file = Path(tmp) / "plan.json"
                plan_file.write_text(
                    json.dumps(
                        {
                            "consul": consul_address,
                            "main_port": settings.main_port,
                            "duration": ARRIVAL_SECONDS,
                            "steady": steady,
                            "users": plan_users[1:],
                        }
                    )
                )
                result = await anyio.run_process(
                    [sys.executable, "-m", "bench._haproxy_world", "load", str(plan_file)],
                    check=True,
                )
                after = reload_counts()
                out: dict[str, Any] = json.loads(result.stdout)
                out["controller_cpu"] = _cpu_seconds() - cpu_before
                out["reloads"] = {r: after[r] - before[r] for r in after if after[r] > before[r]}
                out["runtime_updates"] = runtime_updates() - updates_before
                assert router.applied is not None
                out["slots"] = router.applied.shape.http_slots
                out["stages"] = stages(out, trace)
                manager.stop()
        finally:
            process.stop()
    return out


def _cpu_seconds() -> float:
    """CPU time of this process (the controller, its sources and its applier threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def traced(router: HAProxyRouter, trace: dict[str, dict[str, float]]) -> Controller:
    """The router's controller, recording when each user's key first reached its cache and when
    its routes were first applied (CLOCK_MONOTONIC is one clock for every process on a host,
    so these compare with the load generator's write times)."""
    declared = router.declaration()
    reconcile = router.reconcile

    last: list[object] = [None]

    async def recording(ctx: Context, key: str) -> Result | None:
        # Only new keys and a new applied state are looked at, so the tracing itself costs the
        # controller (same process) next to nothing per reconcile.
        now = time.monotonic()
        seen = trace["seen"]
        for item in ctx.cache(WATCH).keys() - seen.keys():
            seen[item] = now
        result = await reconcile(ctx, key)
        current = router.applied
        if current is not None and current is not last[0]:
            last[0] = current
            done = time.monotonic()
            applied = trace["applied"]
            for user in current.routing.users() - applied.keys():
                applied[user] = done
        return result

    return dataclasses.replace(declared, reconcile=recording)


def stages(result: dict[str, Any], trace: dict[str, dict[str, float]]) -> dict[str, list[float]]:
    """Each arrival's latency split: write -> in the controller's cache -> applied -> answering."""
    out: dict[str, list[float]] = {"cache": [], "apply": [], "answer": []}
    for user, written in result["written"].items():
        seen = trace["seen"].get(f"haproxy/data/{user}")
        applied = trace["applied"].get(user)
        answered = result["http_latency"].get(user)
        if seen is None or applied is None or answered is None:
            continue
        out["cache"].append(seen - written)
        out["apply"].append(applied - seen)
        out["answer"].append(written + answered - applied)
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def scale() -> dict[str, float]:
    """5,000 users: plan, render, haproxy -c, start, one runtime arrival, one full reload."""
    tcp = free_range(SCALE_USERS)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-haproxy-scale-") as tmp:
        settings = bench_settings(Path(tmp) / "haproxy", tcp)
        http: dict[str, Target] = {}
        tcp_routes: dict[int, Target] = {}
        for i in range(SCALE_USERS):
            user = f"u{i:04d}"
            address = f"10.{i // 250}.{i % 250}.1:{20000 + i % 10000}"
            for sub, role in zip(subdomains(user), ("hmi", "broker", "core-ws"), strict=True):
                http[sub] = Target(user, role, address)
            tcp_routes[tcp[i]] = Target(user, "core", address)
        table = Routing(DOMAIN, settings.main_port, ("10.9.9.9:4000",), http, tcp_routes)
        policy = SlotPolicy(
            http=settings.http_slots,
            tcp=settings.tcp_slots,
            web=settings.web_app_slots,
            tcp_max=len(settings.tcp_port_range),
        )
        started = time.perf_counter()
        step = plan(None, table, policy)
        out["plan"] = time.perf_counter() - started
        applier = Applier(settings)
        started = time.perf_counter()
        rendered = applier.render(step.target)
        out["render"] = time.perf_counter() - started
        config_text = rendered[applier.process.config_path]
        out["config_bytes"] = len(config_text)
        out["backends"] = config_text.count("\nbackend ")
        for path, text in rendered.items():
            if path != applier.process.config_path:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        applier.page_path.write_bytes(render.builtin_not_found_page())
        started = time.perf_counter()
        checked = applier.process.validate(config_text)
        out["validate"] = time.perf_counter() - started
        assert checked.ok, checked.message
        try:
            started = time.perf_counter()
            applier.apply(None, step)
            out["start"] = time.perf_counter() - started
            current = step.target
            state = applier.process.status()
            out["worker_rss_mib"] = rss_kib(state.workers[0]) / 1024
            # One user arriving on each path.
            newcomer = dict(table.http)
            newcomer["hmizzzznewcomer1"] = Target("zz", "hmi", "10.99.0.1:80")
            arrived = Routing(DOMAIN, settings.main_port, table.web_app, newcomer, table.tcp)
            step = plan(current, arrived, policy)
            assert step.reload is None
            started = time.perf_counter()
            timings = applier.apply(current, step)
            out["runtime_arrival"] = time.perf_counter() - started
            out["runtime_commands"] = timings.runtime
            current = step.target
            step = plan(current, table, policy, force="change")
            started = time.perf_counter()
            timings = applier.apply(current, step)
            out["reload_arrival"] = time.perf_counter() - started
            out["reload_render"] = timings.render
            out["reload_validate_switch"] = timings.validate_and_switch
        finally:
            applier.process.stop()
    return out


NOTES = """
On the runtime path an arrival waits for the watch (its poll, at most 10 a second, and the
prefix's answer decoded: only entries whose ModifyIndex moved), then for the debounce: arrivals
about 60 ms apart never leave the table quiet for the 0.1 s minimum, so every batch waits the
0.3 s maximum, which is most of the "applied" stage; the batch itself (read, plan, runtime
commands on one connection, files) costs what it touches (touched slots and map keys found by set
difference, map files and state.json kept per entry), not a walk over every route. The reload
path is the comparison baseline (consul-template's behaviour) and is expected to miss: every
batch is a full render, ``haproxy -c`` and a reload of a configuration with a backend per slot,
so arrivals queue behind the reload in progress and go into the next one, and the reloads
number one per batch, not a handful. A reload makes the old workers close their idle
keep-alive connections (the reopened connections), and a request written on one as it closes is
lost; the long TCP sessions stay on an old worker, which the master stops once it has outlived
``mworker-max-reloads`` (50) further reloads, so past 50 reloads those sessions are cut. Which
of the two kinds of drop a run shows depends on its reload count; the runtime path has neither.
"""


def _row(measure: str, result: str, target: str = "") -> str:
    return f"| {measure} | {result} | {target} |"


def _p50_p99(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{percentile(values, 0.5) * 1000:.0f}, {percentile(values, 0.99) * 1000:.0f} ms"


def _latency_rows(name: str, result: dict[str, Any]) -> list[str]:
    http = list(result["http_latency"].values())
    tcp = list(result["tcp_latency"].values())
    misses = sum(1 for v in http if v > LATENCY_TARGET)
    p99 = percentile(http, 0.99) if http else float("nan")
    verdict = "" if p99 <= LATENCY_TARGET else " (MISSED)"
    reloads = sum(result["reloads"].values())
    reasons = ", ".join(f"{r} {int(n)}" for r, n in sorted(result["reloads"].items())) or "none"
    drops = len(result["hammer_drops"]) + len(result["session_drops"])
    requests = result["hammer_ok"] + len(result["hammer_drops"])
    flag = "" if drops == 0 else " (MISSED)"
    split = result["stages"]
    rows = [
        _row(
            f"{name}: KV write -> route answers (HTTP), p50",
            f"{percentile(http, 0.5) * 1000:.0f} ms",
        ),
        _row(
            f"{name}: KV write -> route answers (HTTP), p99",
            f"{p99 * 1000:.0f} ms{verdict}",
            f"<= {LATENCY_TARGET * 1000:.0f} ms",
        ),
        _row(
            f"{name}: same, max; answers over 1 s",
            f"{max(http) * 1000:.0f} ms; {misses} of {len(http)}",
        ),
        _row(
            f"{name}: KV write -> TCP port answers, p99", f"{percentile(tcp, 0.99) * 1000:.0f} ms"
        ),
        _row(
            f"{name}: where the p50 / p99 goes: write -> controller's cache, -> applied, -> answer",
            " / ".join(_p50_p99(split[k]) for k in ("cache", "apply", "answer")),
        ),
        _row(f"{name}: users never routed (30 s)", str(len(result["never"])), "0"),
        _row(f"{name}: answers from the wrong user", str(result["misroute_count"]), "0"),
        _row(
            f"{name}: reloads for {USERS} arrivals over {ARRIVAL_SECONDS:.0f} s",
            f"{reloads} ({reasons}){'' if reloads <= RELOAD_TARGET else ' (MISSED)'}",
            f"<= {RELOAD_TARGET}",
        ),
        _row(f"{name}: runtime API commands", f"{result['runtime_updates']:.0f}"),
        _row(
            f"{name}: controller CPU during the arrivals (all of its process)",
            f"{result['controller_cpu']:.1f} s ({result['controller_cpu'] / USERS * 1000:.0f} ms "
            "per arrival)",
        ),
        _row(
            f"{name}: requests/sessions dropped",
            f"{drops} ({len(result['hammer_drops'])} of {requests} requests, "
            f"{len(result['session_drops'])} of 2 TCP sessions){flag}",
            "0",
        ),
        _row(
            f"{name}: keep-alive connections closed by HAProxy and reopened",
            str(result["hammer_reconnects"]),
        ),
    ]
    return rows


def run() -> str:
    results = {mode: anyio.run(arrivals, mode) for mode in ("runtime", "reload")}
    big = scale()
    lines = ["## HAProxy: routing users through the real binary", ""]
    lines += ["| measure | result | target |", "|---|---|---|"]
    for mode, result in results.items():
        lines += _latency_rows(mode, result)
    lines += [
        _row(
            f"{SCALE_USERS} users: plan + render (config {big['config_bytes'] / 1e6:.1f} MB, "
            f"{big['backends']:.0f} backends)",
            f"{(big['plan'] + big['render']) * 1000:.0f} ms",
        ),
        _row(f"{SCALE_USERS} users: haproxy -c", f"{big['validate'] * 1000:.0f} ms"),
        _row(f"{SCALE_USERS} users: first start (render, check, start)", f"{big['start']:.2f} s"),
        _row(f"{SCALE_USERS} users: one worker's memory (RSS)", f"{big['worker_rss_mib']:.0f} MiB"),
        _row(
            f"{SCALE_USERS} users, runtime path: one arrival (commands + files)",
            f"{big['runtime_arrival'] * 1000:.0f} ms ({big['runtime_commands'] * 1000:.1f} ms of "
            "runtime commands)",
        ),
        _row(
            f"{SCALE_USERS} users, reload path: one arrival (render, check, reload)",
            f"{big['reload_arrival'] * 1000:.0f} ms (render {big['reload_render'] * 1000:.0f} ms)",
        ),
    ]
    for mode, result in results.items():
        drops = result["hammer_drops"][:3] + result["session_drops"][:3]
        if drops:
            lines += ["", f"First drops on the {mode} path: " + "; ".join(drops)]
        if result["misroutes"]:
            lines += [
                "",
                f"Wrong answers on the {mode} path: " + "; ".join(result["misroutes"][:3]),
            ]
    lines += [
        "",
        "Method: " + " ".join((__doc__ or "").split("\n\n", 1)[1].split()),
        "",
        "Reading it: " + " ".join(NOTES.split()),
    ]
    return "\n".join(lines)
