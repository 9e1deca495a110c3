"""Manticore end to end: request -> haproxy/data, with the controllers as real processes.

The embedded Consul and Nomad run as their own processes (Nomad: three big nodes, simulated
docker tasks that start at once, checks registered passing); ``waitlist``, ``jobs``,
``allocations`` and ``haproxy-kv`` run as ``reconciler run <name>``, one process each. The job
template is the production one with ``initial_status = passing`` and a long check interval
(the containers "start and pass at once"), and without the non-routed ``file`` port.

- Steady state: BASE users routed, then ARRIVALS arrivals at RATE/s (and as many departures of
  the oldest users, so BASE stay active); each arrival's time from its request PUT to its
  ``haproxy/data/<id>`` (seen by one blocking ``?keys`` watch of ``haproxy/data/``), p50
  and p99.
- Burst: a fresh cluster, the controllers started and idle, then BURST requests written at once
  (transactions of 64); the time until every one has ``haproxy/data/<id>``.
- Floor: the controllers stopped, BASE users still in place, the same ARRIVALS at RATE/s made by
  this script alone with the same chain of calls (request PUT; waiting list read and CAS write,
  one for every arrival waiting then, as the waitlist's pass claims them;
  Nomad registration with EnforceIndex; blocking health queries until the user's three services
  pass; allocation record; route reservation and claim keys in one transaction;
  ``haproxy/data/<id>``), no controller between them. Reported as controllers / floor.
- Scale: a fresh Consul and Nomad with SCALE users (requests; the waiting list the waitlist
  builds; each user's three services registered passing, from which allocations writes the
  records haproxy-kv and elb route), each controller process's resident memory and the Consul
  connections it holds once it has converged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.framework import percentile
from controllers.api.ids import REQUESTS_PREFIX, WAITING_KEY, job_id
from controllers.templates import JobTemplate, TemplateValues

BASE = int(os.environ.get("BENCH_MANTICORE_ACTIVE", "1000"))
RATE = float(os.environ.get("BENCH_MANTICORE_RATE", "20"))
ARRIVALS = int(os.environ.get("BENCH_MANTICORE_ARRIVALS", "300"))
BURST = int(os.environ.get("BENCH_MANTICORE_BURST", "2000"))
SCALE = int(os.environ.get("BENCH_MANTICORE_SCALE", "10000"))
BURST_TIMEOUT = 600.0
SCALE_TIMEOUT = 900.0
PIPELINE = ("waitlist", "jobs", "allocations", "haproxy-kv")
SECOND = 1_000_000_000


def bench_template(directory: Path) -> Path:
    """The production template, containers that pass at once, three routed ports."""
    doc = json.loads(
        (Path(__file__).parents[1] / "controllers/templates/core-hmi.docker.json").read_text()
    )
    group = doc["Job"]["TaskGroups"][0]
    group["Services"] = [s for s in group["Services"] if s["Meta"]["manticore_role"] != "file"]
    group["Networks"][0]["DynamicPorts"] = [
        p for p in group["Networks"][0]["DynamicPorts"] if p["Label"] != "file"
    ]
    group["Tasks"][0]["Config"]["ports"] = ["broker", "core"]
    for service in group["Services"]:
        for check in service["Checks"]:
            check["InitialStatus"] = "passing"
            check["Interval"] = 60 * SECOND
    path = directory / "core-hmi.bench.json"
    path.write_text(json.dumps(doc))
    return path


# --------------------------------------------------------------------------- processes


def _started(argv: list[str], what: str, pattern: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(pattern, line)
    if not match:
        proc.kill()
        raise RuntimeError(f"{what} did not start: {line!r}")
    return proc, match.group(1)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def cluster(node_cpu: int = 1_000_000) -> Iterator[dict[str, str]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        consul, address = _started(
            [sys.executable, "-m", "devstack.consul", "--port", "0"],
            "consul",
            r"http://([\d.]+:\d+)",
        )
        procs.append(consul)
        env = {"CONSUL_HTTP_ADDR": address}
        # Always a Nomad of this run's own: without NOMAD_ADDR a controller would talk to
        # 127.0.0.1:4646, whatever else runs there on a shared machine.
        port = psutil_free_port()
        server, _ = _started(
            [
                sys.executable, "-m", "devstack.nomad", "--port", str(port), "--nodes", "3",
                "--node-cpu", str(node_cpu), "--node-memory", "4000000",
                "--node-disk", "40000000", "--docker-start-delay", "0",
                "--consul-addr", f"http://{address}",
            ],
            "nomad",
            r"(ready)",
        )  # fmt: skip
        procs.append(server)
        env["NOMAD_ADDR"] = f"http://127.0.0.1:{port}"
        yield env
    finally:
        for proc in reversed(procs):
            _stop(proc)


def psutil_free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Controllers:
    """One ``reconciler run <name>`` process per controller."""

    def __init__(self, env: dict[str, str], names: tuple[str, ...], logs: Path) -> None:
        self.env = {**os.environ, **env, "RECONCILER_LOG_LEVEL": "WARNING"}
        self.names = names
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # name -> the port of its /metrics (chosen free at start)
        self.metrics: dict[str, int] = {}

    def start(self) -> None:
        for name in self.names:
            self.metrics[name] = psutil_free_port()
            with (self.logs / f"{name}.log").open("ab") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "reconciler.cli", "run", name,
                     "--metrics-addr", f"127.0.0.1:{self.metrics[name]}",
                     "--identity", f"bench-{name}"],
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )  # fmt: skip

    def stop(self) -> None:
        for proc in self.procs.values():
            _stop(proc)

    def stats(self, consul_port: int) -> dict[str, tuple[float, int]]:
        """Resident MiB and established Consul connections of each process."""
        out = {}
        for name, proc in self.procs.items():
            p = psutil.Process(proc.pid)
            conns = sum(
                1
                for c in p.net_connections(kind="tcp")
                if c.raddr and c.raddr.port == consul_port and c.status == "ESTABLISHED"
            )
            out[name] = (p.memory_info().rss / 2**20, conns)
        return out


# --------------------------------------------------------------------------- Consul helpers


class KV:
    def __init__(self, address: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=f"http://{address}",
            timeout=httpx.Timeout(10, read=70),
            limits=httpx.Limits(max_connections=400, max_keepalive_connections=400),
            trust_env=False,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, retried while Consul does not accept the connection in time or drops
        it (a saturated embedded Consul on a busy machine); the retries count in the latency."""
        for attempt in range(30):
            try:
                return await self.http.request(method, url, **kwargs)
            except (
                httpx.ConnectError,
                httpx.ConnectTimeout,
                httpx.RemoteProtocolError,
                httpx.ReadError,
                httpx.WriteError,
            ):
                if attempt == 29:
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("unreachable")

    async def put(self, key: str, value: bytes = b"{}") -> None:
        (await self._send("PUT", f"/v1/kv/{key}", content=value)).raise_for_status()

    async def txn(self, ops: list[dict[str, Any]]) -> bool:
        resp = await self._send("PUT", "/v1/txn", json=ops)
        if resp.status_code == 409:
            return False
        resp.raise_for_status()
        return True

    async def put_many(self, items: list[tuple[str, bytes]]) -> None:
        for i in range(0, len(items), 64):
            await self.txn(
                [
                    {"KV": {"Verb": "set", "Key": k, "Value": base64.b64encode(v).decode()}}
                    for k, v in items[i : i + 64]
                ]
            )

    async def delete_many(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 64):
            await self.txn([{"KV": {"Verb": "delete", "Key": k}} for k in keys[i : i + 64]])

    async def keys(self, prefix: str, index: int) -> tuple[int, list[str]]:
        """The keys under ``prefix``, blocking from ``index`` (0: at once)."""
        params = {"keys": "", **({"index": str(index), "wait": "60s"} if index else {})}
        resp = await self._send("GET", f"/v1/kv/{prefix}", params=params)
        new = max(1, int(resp.headers.get("X-Consul-Index", "1")))
        return new, ([] if resp.status_code == 404 else resp.json())

    async def count(self, prefix: str) -> int:
        resp = await self.http.get(f"/v1/kv/{prefix}", params={"keys": ""})
        return 0 if resp.status_code == 404 else len(resp.json())

    async def until_count(self, prefix: str, n: int, timeout: float) -> float:
        started = time.perf_counter()
        while await self.count(prefix) != n:
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"{prefix}: not {n} keys after {timeout}s")
            await asyncio.sleep(0.1)
        return time.perf_counter() - started

    async def reach(self, prefix: str, n: int, timeout: float) -> tuple[float, int]:
        """Seconds until ``prefix`` holds ``n`` keys, or the timeout and how many it held."""
        started = time.perf_counter()
        while (got := await self.count(prefix)) < n:
            if time.perf_counter() - started > timeout:
                return time.perf_counter() - started, got
            await asyncio.sleep(0.1)
        return time.perf_counter() - started, got


class Arrivals:
    """When each key first appeared under a prefix, as one blocking ``?keys`` watch sees it.

    One long poll observes every arrival: a blocking GET per user would make this script the
    busiest client of the embedded Consul (every write wakes every missing key's poll) and take
    the CPU the controllers under test need."""

    def __init__(self, kv: KV, prefix: str) -> None:
        self.kv, self.prefix = kv, prefix
        self.seen: dict[str, float] = {}
        self._waiting: dict[str, asyncio.Event] = {}

    async def run(self) -> None:
        index = 0
        while True:
            index, names = await self.kv.keys(self.prefix, index)
            now = time.perf_counter()
            for name in names:
                if name not in self.seen:
                    self.seen[name] = now
                    event = self._waiting.pop(name, None)
                    if event is not None:
                        event.set()

    async def wait(self, key: str) -> float:
        """The time ``key`` was first seen (waits for it)."""
        if key not in self.seen:
            event = self._waiting.setdefault(key, asyncio.Event())
            await event.wait()
        return self.seen[key]


# --------------------------------------------------------------------------- phases


async def steady(kv: KV, users: list[str]) -> list[float]:
    """BASE users routed; then arrivals at RATE/s, each measured, with as many departures."""
    active = users[:BASE]
    await kv.put_many([(REQUESTS_PREFIX + u, b"{}") for u in active])
    await kv.until_count("haproxy/data/", BASE, 600)
    latencies: list[float] = []
    # With more arrivals than BASE the oldest users to leave are this phase's own arrivals:
    # each leaves only once it has been measured.
    routed = {user: asyncio.Event() for user in users[BASE : BASE + ARRIVALS]}
    for user in active:
        routed[user] = asyncio.Event()
        routed[user].set()

    async def arrive(user: str) -> None:
        started = time.perf_counter()
        await kv.put(REQUESTS_PREFIX + user)
        latencies.append(await arrivals.wait(f"haproxy/data/{user}") - started)
        routed[user].set()

    async def depart(user: str) -> None:
        await routed[user].wait()
        await kv.delete_many([REQUESTS_PREFIX + user])

    arrivals = Arrivals(kv, "haproxy/data/")
    watcher = asyncio.create_task(arrivals.run())
    try:
        async with asyncio.TaskGroup() as tg:
            for i, user in enumerate(users[BASE : BASE + ARRIVALS]):
                tg.create_task(arrive(user))
                tg.create_task(depart(users[i]))
                await asyncio.sleep(1 / RATE)
    finally:
        watcher.cancel()
    return latencies


async def burst(kv: KV, users: list[str]) -> tuple[float, int]:
    """BURST requests written at once on an empty cluster; seconds until every one has its
    ``haproxy/data`` entry (or BURST_TIMEOUT and how many had)."""
    started = time.perf_counter()
    await kv.put_many([(REQUESTS_PREFIX + u, b"{}") for u in users[:BURST]])
    _, got = await kv.reach("haproxy/data/", BURST, BURST_TIMEOUT)
    return time.perf_counter() - started, got


def route_of(service: dict[str, Any]) -> str:
    return str(service["Meta"]["manticore_route"])


def address_of(service: dict[str, Any]) -> str:
    return f"{service['Address']}:{service['Port']}"


class Floor:
    """The chain of calls the controllers make, made directly, one arrival at a time each."""

    def __init__(self, kv: KV, nomad: httpx.AsyncClient, template: JobTemplate) -> None:
        self.kv = kv
        self.nomad = nomad
        self.template = template
        self.port = 52000
        # Arrivals waiting for their claim, and the one task writing the list (one writer of
        # the waiting list, as the waitlist is; it claims everyone waiting in one write, as the
        # waitlist's pass does, instead of one read and CAS per user behind a lock).
        self.pending: list[tuple[str, asyncio.Future[None]]] = []
        self.claiming: asyncio.Task[None] | None = None

    async def claim(self, user: str) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((user, done))
        if self.claiming is None or self.claiming.done():
            self.claiming = asyncio.create_task(self._claim_pending())
        await done

    async def _claim_pending(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            try:
                await self._claim_batch([user for user, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    done.set_exception(exc)
            else:
                for _, done in batch:
                    done.set_result(None)

    async def _claim_batch(self, users: list[str]) -> None:
        # The waiting list: read the pages, add the users claimed, CAS-write the last page.
        while True:
            resp = await self.kv.http.get(f"/v1/kv/{WAITING_KEY}", params={"recurse": ""})
            pages = resp.json() if resp.status_code == 200 else []
            last = max(pages, key=lambda p: (len(p["Key"]), p["Key"]))
            decoded = {
                p["Key"]: json.loads(base64.b64decode(p["Value"] or "") or b"{}") for p in pages
            }
            entries = decoded[last["Key"]]
            top = max((e["queue"] for page in decoded.values() for e in page.values()), default=0)
            for n, user in enumerate(users, start=1):
                entries[user] = {"claimed": True, "queue": top + n, "since": int(time.time())}
            value = base64.b64encode(json.dumps(entries).encode()).decode()
            op = {"Verb": "cas", "Key": last["Key"], "Index": last["ModifyIndex"], "Value": value}
            if await self.kv.txn([{"KV": op}]):
                return

    async def passing(self, name: str) -> dict[str, Any]:
        index = 0
        while True:
            params = {"passing": "1", **({"index": str(index), "wait": "60s"} if index else {})}
            resp = await self.kv.http.get(f"/v1/health/service/{name}", params=params)
            if resp.json():
                return dict(resp.json()[0]["Service"])
            index = max(1, int(resp.headers.get("X-Consul-Index", "1")))

    async def arrive(self, user: str) -> float:
        started = time.perf_counter()
        await self.kv.put(REQUESTS_PREFIX + user)
        await self.claim(user)
        job = self.template.render(
            TemplateValues(
                user=user, core_version="8.2.0", core_build="default", hmi_type="generic",
                hmi_version="master", domain="manticore.example.com", datacenters=("dc1",),
            )
        )  # fmt: skip
        body = {"Job": job, "EnforceIndex": True, "JobModifyIndex": 0}
        (await self.nomad.post("/v1/jobs", json=body)).raise_for_status()
        services = {
            role: await self.passing(f"{job_id(user)}-{role}") for role in ("hmi", "broker", "core")
        }
        record = {
            "services": {
                role: {"address": s["Address"], "port": s["Port"], "route": route_of(s)}
                for role, s in services.items()
            },
            "job": job_id(user),
            "allocation": services["hmi"]["ID"][12:48],
            "node": "bench",
        }  # fmt: skip
        await self.kv.put(f"manticore/allocations/data/{user}", json.dumps(record).encode())
        self.port += 1
        sub = {r: f"{random.getrandbits(80):020x}"[:16] for r in ("hmi", "broker")}
        reservation = {"subdomains": sub, "tcp_ports": {"core": self.port}}
        ops = [
            {"KV": {"Verb": "cas", "Key": f"manticore/routes/data/{user}", "Index": 0,
                    "Value": base64.b64encode(json.dumps(reservation).encode()).decode()}},
            {"KV": {"Verb": "cas", "Key": f"manticore/routes/tcp/{self.port}", "Index": 0,
                    "Value": base64.b64encode(user.encode()).decode()}},
        ]  # fmt: skip
        await self.kv.txn(ops)
        routes = {
            "http": [
                {"subdomain": sub[r], "address": address_of(s), "role": r}
                for r, s in services.items() if r != "core"
            ],
            "tcp": [{"port": self.port, "address": address_of(services["core"]), "role": "core"}],
        }  # fmt: skip
        await self.kv.put(f"haproxy/data/{user}", json.dumps(routes).encode())
        return time.perf_counter() - started


async def floor(kv: KV, nomad_url: str, template: JobTemplate, users: list[str]) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=nomad_url, timeout=30, trust_env=False) as nomad:
        chain = Floor(kv, nomad, template)

        async def one(user: str) -> None:
            latencies.append(await chain.arrive(user))

        async with asyncio.TaskGroup() as tg:
            for user in users:
                tg.create_task(one(user))
                await asyncio.sleep(1 / RATE)
    return latencies


def pipeline_env(env: dict[str, str], template_path: Path) -> dict[str, str]:
    return {
        **env,
        "MANTICORE_JOB_TEMPLATE": str(template_path),
        "TCP_PORT_RANGE_START": "40000",
        "TCP_PORT_RANGE_END": "51999",
    }


async def pipeline(env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Steady state with the controllers, then the floor on the same cluster without them."""
    template_path = bench_template(workdir)
    template = JobTemplate.load(template_path)
    users = [f"user-{i:05d}" for i in range(BASE + 2 * ARRIVALS)]
    kv = KV(env["CONSUL_HTTP_ADDR"])
    controllers = Controllers(pipeline_env(env, template_path), PIPELINE, workdir)
    controllers.start()
    try:
        await asyncio.sleep(3)
        steady_lat = await steady(kv, users)
    finally:
        controllers.stop()
    floor_lat = await floor(kv, env["NOMAD_ADDR"], template, users[BASE + ARRIVALS :])
    await kv.close()
    return {"steady": steady_lat, "floor": floor_lat}


async def burst_run(env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """A fresh cluster, the controllers idle, then BURST simultaneous requests."""
    template_path = bench_template(workdir)
    kv = KV(env["CONSUL_HTTP_ADDR"])
    controllers = Controllers(pipeline_env(env, template_path), PIPELINE, workdir)
    controllers.start()
    consul_port = int(env["CONSUL_HTTP_ADDR"].rsplit(":", 1)[1])
    try:
        await asyncio.sleep(3)
        seconds, routed = await burst(kv, [f"burst-{i:05d}" for i in range(BURST)])
        busy = controllers.stats(consul_port)
    finally:
        controllers.stop()
    await kv.close()
    return {"burst_s": seconds, "burst_routed": routed, "busy": busy}


async def register_services(kv: KV, users: list[str]) -> None:
    """hmi, broker and core of each user, as Nomad registers them, with passing TTL checks."""
    limiter = asyncio.Semaphore(32)

    async def one(i: int, user: str) -> None:
        ip = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"
        alloc = f"{i:08x}-0000-4000-8000-{i:012x}"
        for n, (role, route) in enumerate((("hmi", "http"), ("broker", "http"), ("core", "tcp"))):
            sid = f"_nomad-task-{alloc}-core-{job_id(user)}-{role}-{role}"
            body = {
                "ID": sid,
                "Name": f"{job_id(user)}-{role}",
                "Address": ip,
                "Port": 20000 + n,
                "Tags": ["manticore", f"route-{route}"],
                "Meta": {"manticore_user": user, "manticore_role": role, "manticore_route": route},
                "Check": {"CheckID": f"check:{sid}", "TTL": "3600s", "Status": "passing"},
            }
            async with limiter:
                resp = await kv.http.put("/v1/agent/service/register", json=body)
                resp.raise_for_status()

    async with asyncio.TaskGroup() as tg:
        for i, user in enumerate(users):
            tg.create_task(one(i, user))


async def scale(env: dict[str, str], workdir: Path) -> dict[str, tuple[float, int]]:
    """Every controller's memory and Consul connections with SCALE users in KV."""
    kv = KV(env["CONSUL_HTTP_ADDR"])
    consul_port = int(env["CONSUL_HTTP_ADDR"].rsplit(":", 1)[1])
    users = [f"user-{i:05d}" for i in range(SCALE)]
    template_path = bench_template(workdir)
    run_env = {
        **env,
        "MANTICORE_JOB_TEMPLATE": str(template_path),
        "TCP_PORT_RANGE_START": "40000",
        "TCP_PORT_RANGE_END": "51999",
        "ELB_MANTICORE_NAME": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
    }
    out: dict[str, tuple[float, int]] = {}
    await kv.put_many([(REQUESTS_PREFIX + u, b"{}") for u in users])
    # Every user's three services registered in Consul as Nomad registers them (passing
    # checks), so allocations watches 30,000 instances and writes 10,000 records. Nomad's nodes
    # have no room here (capacity 0: every user waits), so jobs watches 10,000 list entries and
    # has no job to register.
    await register_services(kv, users)
    first = Controllers(run_env, ("waitlist", "jobs", "allocations"), workdir)
    first.start()
    try:
        deadline = time.perf_counter() + SCALE_TIMEOUT
        while time.perf_counter() < deadline:
            resp = await kv.http.get(f"/v1/kv/{WAITING_KEY}", params={"recurse": ""})
            listed = sum(
                len(json.loads(base64.b64decode(p["Value"] or "") or b"{}"))
                for p in (resp.json() if resp.status_code == 200 else [])
            )
            if listed == SCALE and await kv.count("manticore/allocations/data/") == SCALE:
                break
            await asyncio.sleep(1)
        await asyncio.sleep(5)
        out.update(first.stats(consul_port))
    finally:
        first.stop()
    # haproxy-kv and elb: the SCALE allocation records allocations wrote; measured once every
    # user is routed.
    second = Controllers(run_env, ("haproxy-kv", "elb"), workdir)
    second.start()
    try:
        _, routed = await kv.reach("haproxy/data/", SCALE, SCALE_TIMEOUT)
        await asyncio.sleep(5)
        out.update(second.stats(consul_port))
        out["haproxy-kv routed"] = (0.0, routed)
    finally:
        second.stop()
    await kv.close()
    return out


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-manticore-") as tmp:
        work = Path(tmp)
        with cluster() as env:
            figures = asyncio.run(pipeline(env, work))
        with cluster() as env:
            figures.update(asyncio.run(burst_run(env, work)))
        with cluster(node_cpu=1) as env:
            at_scale = asyncio.run(scale(env, work))
    steady_lat = [x * 1000 for x in figures["steady"]]
    floor_lat = [x * 1000 for x in figures["floor"]]
    p50, p99 = statistics.median(steady_lat), percentile(steady_lat, 0.99)
    f50, f99 = statistics.median(floor_lat), percentile(floor_lat, 0.99)
    what = f"{BASE} active, {RATE:g} arrivals/s, {len(steady_lat)} arrivals"
    burst_figure = f"{figures['burst_s']:.1f} s"
    if figures["burst_routed"] < BURST:
        burst_figure = (
            f"not converged: {figures['burst_routed']} of {BURST} after {figures['burst_s']:.0f} s"
        )
    routed_at_scale = at_scale.pop("haproxy-kv routed", (0.0, SCALE))[1]
    rows = [
        (f"request -> haproxy/data, p50 ({what})", f"{p50:.0f} ms", ""),
        ("request -> haproxy/data, p99", f"{p99:.0f} ms", "<= 250 ms"),
        ("floor (same calls, one script, no controllers), p50", f"{f50:.0f} ms", ""),
        ("floor, p99", f"{f99:.0f} ms", ""),
        ("controllers / floor, p50", f"{p50 / f50:.1f}x", "<= 3x"),
        ("controllers / floor, p99", f"{p99 / f99:.1f}x", "<= 3x"),
        (f"burst of {BURST} -> every haproxy/data", burst_figure, "<= 20 s"),
    ]  # fmt: skip
    for name, (rss, conns) in figures["busy"].items():
        rows.append(
            (
                f"{name}: RSS / Consul connections at the end of the burst",
                f"{rss:.0f} MB / {conns}",
                "",
            )
        )
    if routed_at_scale < SCALE:
        rows.append(
            (
                "haproxy-kv and elb measured before every user was routed",
                f"{routed_at_scale} of {SCALE} routed after {SCALE_TIMEOUT:.0f} s",
                "",
            )
        )
    for name, (rss, conns) in at_scale.items():
        rows.append((f"{name}: RSS at {SCALE} users in KV", f"{rss:.0f} MB", "<= 100 MB"))
        rows.append((f"{name}: Consul connections at {SCALE} users", str(conns), "<= 10"))
    lines = [
        "## Manticore end to end (waitlist, jobs, allocations, haproxy-kv; elb at scale)",
        "",
        "| measure | figure | target |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
        "Method: embedded Consul and Nomad as their own processes (three nodes, simulated docker "
        "tasks starting at once, checks registered `passing`); each controller one "
        "`reconciler run <name>` process; latency from the request PUT to one blocking "
        "`?keys` watch of `haproxy/data/` showing `haproxy/data/<id>`; departures of the "
        "oldest users keep the active count; "
        "the floor is this module's `Floor.arrive` on the same cluster after the controllers "
        "stopped, with the same number of users in place; the burst on a fresh cluster (the "
        "controllers started and idle, then every request written in transactions of 64); "
        "RSS and connections from psutil "
        f"(established TCP connections to Consul's port). At scale ({SCALE} users), on a fresh "
        "Consul and a Nomad with no room (everyone waits, so jobs has every user's list entry "
        "and no job to register): waitlist, jobs and allocations ran on the requests and each "
        "user's three services registered passing (as Nomad registers them) until the list "
        "and every allocation record were written; then haproxy-kv and elb on those records "
        "until every user was routed (the elb endpoint is unreachable there: its figure is its "
        "watch and plan memory, not AWS calls).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
