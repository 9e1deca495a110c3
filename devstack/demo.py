"""``make run``: Manticore on one machine, shown working, arrival to departure.

Starts the devstack (Consul, Nomad with three nodes, the ELB endpoint), two replicas of every
leader-elected Manticore controller (``reconciler run waitlist jobs allocations haproxy-kv elb
expiry``: one leads each, one stands by) and the haproxy controller, which runs the real
HAProxy. Users' jobs use the devstack template: each user's fake core and HMI
(``devstack/fakes/``) are real processes that Nomad starts and Consul health-checks.

Two intake API instances (``manticore-api``) register as the web app behind HAProxy.
Then it walks through what Manticore does, printing what appears in Consul KV at each stage:
four users ask for a pair while ``MAX_USERS=2``, so two wait; claimed users get a Nomad job,
passing services, an allocation record, routes and an ELB listener, and HAProxy really routes
to their HMI and core; bad input is reported without disturbing anyone; a user leaves and the
next one is claimed; the leader is stopped and the standby takes over; everyone leaves and
nothing remains. Then three users press the button through HAProxy and the API (two fit, one
waits), get their HMI and core addresses, and ``reconciler status --watch`` shows the live table
until Ctrl-C (with ``--once``, they leave and the demo exits).
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from controllers.haproxy.process import HAProxyProcess
from devstack.fakes import job_settings_env
from devstack.intake import APIInstance, FrontDoor, front_door_env, running_apis, status_command
from devstack.process import free_port_range, free_ports
from devstack.up import DevStack

DOMAIN = "manticore.localhost"
LEADER_ELECTED = ("waitlist", "jobs", "allocations", "haproxy-kv", "elb", "expiry")
FIRST = ("ada", "bob", "cy", "dee")


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show(text: str) -> None:
    print(f"    {text}", flush=True)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (httpx.HTTPError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Process:
    """One ``reconciler run ...`` process; its log goes to a file in the devstack home."""

    def __init__(self, name: str, controllers: list[str], env: dict[str, str], logs: Path):
        self.name = name
        self.port = free_ports(1)[0]
        self.log_path = logs / f"reconciler-{name}.log"
        self._log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "reconciler.cli", "run", *controllers]
        argv += ["--metrics-addr", f"127.0.0.1:{self.port}", "--identity", name]
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited; see {self.log_path}")
        return httpx.get(f"{self.url}/readyz", timeout=2, trust_env=False).status_code == 200

    def metric(self, name: str, **labels: str) -> float | None:
        want = [f'{k}="{v}"' for k, v in labels.items()]
        for line in httpx.get(f"{self.url}/metrics", timeout=5, trust_env=False).text.splitlines():
            if line.startswith(name) and all(w in line for w in want):
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class World:
    """Just enough of Consul, Nomad and the ELB endpoint to look at what Manticore did."""

    def __init__(self, env: dict[str, str]) -> None:
        self.consul = httpx.Client(
            base_url=f"http://{env['CONSUL_HTTP_ADDR']}", timeout=10, trust_env=False
        )
        self.nomad = httpx.Client(base_url=env["NOMAD_ADDR"], timeout=10, trust_env=False)
        self.env = env

    def put(self, key: str, value: bytes) -> None:
        self.consul.put(f"/v1/kv/{key}", content=value).raise_for_status()

    def delete(self, key: str) -> None:
        self.consul.delete(f"/v1/kv/{key}").raise_for_status()

    def get(self, key: str) -> bytes | None:
        response = self.consul.get(f"/v1/kv/{key}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        raw = response.json()[0]["Value"]
        return base64.b64decode(raw) if raw else b""

    def json(self, key: str) -> Any:
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    def keys(self, prefix: str) -> list[str]:
        response = self.consul.get(f"/v1/kv/{prefix}", params={"keys": ""})
        return [] if response.status_code == 404 else list(response.json())

    def waiting(self) -> dict[str, Any]:
        """The whole waiting list (every page)."""
        listed: dict[str, Any] = {}
        response = self.consul.get("/v1/kv/manticore/waiting/data", params={"recurse": ""})
        for entry in response.json() if response.status_code == 200 else []:
            listed.update(json.loads(base64.b64decode(entry["Value"] or "") or b"{}"))
        return dict(sorted(listed.items(), key=lambda item: item[1]["queue"]))

    def claimed(self) -> list[str]:
        return [user for user, entry in self.waiting().items() if entry["claimed"]]

    def job(self, user: str) -> dict[str, Any] | None:
        response = self.nomad.get(f"/v1/job/core-hmi-{user}")
        return None if response.status_code == 404 else dict(response.json())

    def passing(self, user: str, role: str) -> str | None:
        response = self.consul.get(
            f"/v1/health/service/core-hmi-{user}-{role}", params={"passing": "1"}
        )
        entries = response.json()
        if not entries:
            return None
        service = entries[0]["Service"]
        return f"{service['Address']}:{service['Port']}"

    def services_of(self, user: str) -> list[str]:
        names = self.consul.get("/v1/catalog/services").json()
        return sorted(name for name in names if name.startswith(f"core-hmi-{user}-"))

    def listeners(self) -> list[int]:
        import boto3

        elb = boto3.client(
            "elb",
            endpoint_url=self.env["AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING"],
            region_name=self.env["AWS_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )
        (lb,) = elb.describe_load_balancers(LoadBalancerNames=[self.env["ELB_MANTICORE_NAME"]])[
            "LoadBalancerDescriptions"
        ]
        return sorted(
            d["Listener"]["LoadBalancerPort"]
            for d in lb["ListenerDescriptions"]
            if d["Listener"]["Protocol"] in ("TCP", "SSL")
        )

    def traces(self, user: str) -> list[str]:
        """Everything of ``user`` still anywhere."""
        found = [
            key
            for prefix in ("manticore/", "haproxy/", "reconciler/status/")
            for key in self.keys(prefix)
            if key.rsplit("/", 1)[-1] == user
        ]
        if user in self.waiting():
            found.append("its waiting-list entry")
        if self.job(user) is not None:
            found.append(f"Nomad job core-hmi-{user}")
        found += [f"Consul service {name}" for name in self.services_of(user)]
        return found

    def leader(self, controller: str) -> str | None:
        raw = self.json(f"reconciler/leader/{controller}")
        return None if not raw else raw.get("holder")


def through_haproxy(port: int, subdomain: str) -> str:
    response = httpx.get(
        f"http://127.0.0.1:{port}/",
        headers={"Host": f"{subdomain}.{DOMAIN}"},
        timeout=3,
        trust_env=False,
    )
    return response.text if response.status_code == 200 else ""


def tcp_greeting(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.settimeout(3)
        return sock.recv(100).decode(errors="replace").strip()


def gone(world: World, user: str, timeout: float = 90.0) -> None:
    """Wait until nothing of ``user`` remains; say what does when it does not go."""
    try:
        wait_for(f"{user} to leave no trace", lambda: not world.traces(user), timeout=timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: still there: {world.traces(user)}") from None


def routed(world: World, user: str) -> dict[str, Any] | None:
    routes = world.json(f"haproxy/data/{user}")
    record = world.json(f"manticore/elb/data/{user}")
    return routes if routes and record else None


def show_user(world: World, user: str, main_port: int) -> None:
    job = world.job(user)
    assert job is not None
    show(f"Nomad job core-hmi-{user}: {job['Status']}, meta {job['Meta']['manticore_owner']}")
    for role in ("hmi", "broker", "core"):
        show(f"Consul service core-hmi-{user}-{role}: passing at {world.passing(user, role)}")
    allocation = world.json(f"manticore/allocations/data/{user}")
    services = {role: f"{s['address']}:{s['port']}" for role, s in allocation["services"].items()}
    show(f"manticore/allocations/data/{user} = {json.dumps(services)}")
    routes = world.json(f"haproxy/data/{user}")
    show(f"haproxy/data/{user} = {json.dumps(routes, sort_keys=True)}")
    show(f"manticore/elb/data/{user} = {json.dumps(world.json(f'manticore/elb/data/{user}'))}")
    hmi = next(r for r in routes["http"] if r["role"] == "hmi")
    page = wait_for(
        f"HAProxy to route {user}'s HMI", lambda: through_haproxy(main_port, hmi["subdomain"])
    )
    show(f"curl -H 'Host: {hmi['subdomain']}.{DOMAIN}' :{main_port}/ -> {page.strip()!r}")
    (tcp,) = routes["tcp"]
    greeting = wait_for(f"HAProxy to route {user}'s core", lambda: tcp_greeting(tcp["port"]))
    show(f"nc 127.0.0.1 {tcp['port']} -> {greeting!r}")


def walkthrough(world: World, replicas: dict[str, Process], main_port: int) -> None:
    say("Four users ask for a core + HMI pair; capacity is MAX_USERS=2, so two of them wait")
    for user in FIRST:
        world.put(f"manticore/requests/data/{user}", b"{}")
        show(f"PUT manticore/requests/data/{user} = {{}}")
        time.sleep(0.2)
    wait_for(
        "two claimed users", lambda: world.claimed() == ["ada", "bob"] and len(world.waiting()) == 4
    )
    show(f"manticore/waiting/data = {json.dumps(world.waiting())}")

    say("The claimed users get a Nomad job, passing services, an allocation, routes, a listener")
    for user in ("ada", "bob"):
        wait_for(f"{user} to be routed", functools.partial(routed, world, user), timeout=90)
    for user in ("ada", "bob"):
        show_user(world, user, main_port)
    show(f"ELB TCP listeners: {world.listeners()}")
    show(f"cy and dee have no job yet: {world.job('cy') is None and world.job('dee') is None}")

    say("Bad input is reported and skipped; nobody else is affected")
    world.put("manticore/requests/data/mallory", b"{not json")
    show("PUT manticore/requests/data/mallory = {not json")
    status = wait_for("the status entry", lambda: world.json("reconciler/status/waitlist/mallory"))
    show(f"reconciler/status/waitlist/mallory = {status['phase']}: {status['message'][:70]}...")
    leader = wait_for("a waitlist leader", lambda: world.leader("waitlist"))
    count = wait_for(
        "the invalid-input metric",
        lambda: replicas[leader].metric(
            "reconciler_invalid_input_total", controller="waitlist", kind="malformed-json"
        ),
    )
    show(f'reconciler_invalid_input_total{{controller="waitlist",kind="malformed-json"}} {count}')
    world.delete("manticore/requests/data/mallory")

    say("ada leaves: every artefact of hers goes, and cy (next in line) is claimed")
    world.delete("manticore/requests/data/ada")
    show("DELETE manticore/requests/data/ada")
    gone(world, "ada")
    show("ada: no waiting entry, job, service, allocation, routes, listener or status left")
    wait_for("cy to be routed", lambda: routed(world, "cy"), timeout=90)
    claimed = world.claimed()
    show(f"claimed now: {claimed}; waiting: {[u for u in world.waiting() if u not in claimed]}")
    show_user(world, "cy", main_port)

    say(f"One replica leads, the other stands by; SIGTERM the leader '{leader}'")
    for name, replica in replicas.items():
        ready = httpx.get(f"{replica.url}/readyz", timeout=5, trust_env=False).json()
        roles = {c: ready["controllers"][c]["leadership"] for c in LEADER_ELECTED}
        show(f"{name}: {roles}")
    started = time.monotonic()
    code = replicas[leader].stop()
    successor = wait_for(
        "a new leader", lambda: (h := world.leader("waitlist")) != leader and h, timeout=30
    )
    took = time.monotonic() - started
    show(f"'{leader}' exited with {code}; '{successor}' leads after {took:.2f} s")
    world.delete("manticore/requests/data/bob")
    show("DELETE manticore/requests/data/bob: the new leaders clean up and claim dee")
    gone(world, "bob")
    wait_for("dee to be routed", lambda: routed(world, "dee"), timeout=90)
    show(f"claimed now: {world.claimed()}")

    say("Everyone leaves: nothing of anyone remains")
    for user in ("cy", "dee"):
        world.delete(f"manticore/requests/data/{user}")
        show(f"DELETE manticore/requests/data/{user}")

    def empty() -> bool:
        return not any(world.traces(u) for u in FIRST) and not world.listeners()

    wait_for("every artefact to go", empty, timeout=90)
    show(f"manticore/waiting/data = {json.dumps(world.waiting())}")
    show(f"keys under haproxy/data/: {world.keys('haproxy/data/')}")
    show(
        f"keys under manticore/ (besides the list): "
        f"{[k for k in world.keys('manticore/') if not k.startswith('manticore/waiting/')]}"
    )
    jobs = world.nomad.get("/v1/jobs", params={"prefix": "core-hmi-"}).json()
    show(f"Nomad jobs core-hmi-*: {[job['ID'] for job in jobs]}")
    show(f"ELB TCP listeners: {world.listeners()}")


FRONT_DOOR_USERS = ("eve", "fay", "gus")


def front_door(world: World, front: FrontDoor, apis: list[APIInstance]) -> None:
    """Users press the button: through HAProxy to the intake API instances."""
    say(f"Two intake API instances behind HAProxy; the page: {front.page}")
    for api in apis:
        show(f"{api.name}: {api.url}  log: {api.log_path}")
    wait_for("HAProxy to route the web app", front.open, timeout=60)
    wait_for(
        "both instances in haproxy/webAppAddresses",
        lambda: len(world.keys("haproxy/webAppAddresses/")) == len(apis),
        timeout=60,
    )
    addresses = [(world.get(key) or b"").decode() for key in world.keys("haproxy/webAppAddresses/")]
    show(f"haproxy/webAppAddresses = {sorted(addresses)}")
    say("Three users press the button (POST /api/v1/requests via HAProxy); two fit, one waits")
    for user in FRONT_DOOR_USERS:
        show(f'POST /api/v1/requests {{"id": "{user}"}} -> {front.ask(user)}')
        time.sleep(0.2)

    def settled() -> bool:
        states = [(front.status(u) or {}).get("state") for u in FRONT_DOOR_USERS]
        return states.count("ready") == 2 and states.count("waiting") == 1

    wait_for("two users ready and one in line", settled, timeout=120)
    for user in FRONT_DOOR_USERS:
        status = front.status(user) or {}
        found: Any = status.get("addresses") or {}
        if status.get("state") == "waiting":
            show(f"GET /api/v1/requests/{user} -> waiting, {status.get('position')} ahead")
            continue
        show(f"GET /api/v1/requests/{user} -> {status.get('state')}: {found.get('hmi_url')}")
        show(f"    core TCP {found.get('core_tcp')}; its time ends at {status.get('expires_at')}")
        host = str(found.get("hmi_url", "")).split("//", 1)[-1].split(":", 1)[0]
        show(f"    curl -H 'Host: {host}' http://127.0.0.1:{front.main_port}/")
        body = wait_for(
            f"{user}'s HMI",
            functools.partial(through_haproxy, front.main_port, host.split(".")[0]),
        )
        show(f"    -> {body.strip()!r}")


def front_door_leave(world: World, front: FrontDoor) -> None:
    say("They leave (DELETE /api/v1/requests/<id>): nothing of theirs remains")
    for user in FRONT_DOOR_USERS:
        show(f"DELETE /api/v1/requests/{user} -> {front.leave(user)}")
    for user in FRONT_DOOR_USERS:
        gone(world, user)
    show(f"keys under haproxy/data/: {world.keys('haproxy/data/')}")


def manticore_env(
    stack: DevStack, home: Path, *, ephemeral: bool = False
) -> tuple[dict[str, str], int]:
    # The ports devstack would give its own HAProxy (8080 and 8404 unless --ephemeral).
    main_port, stats_port = stack.ports.haproxy, stack.ports.haproxy_stats
    # Below Nomad's dynamic ports (20000-32000), which the users' fakes listen on; with
    # --ephemeral, a range free right now (other stacks on this machine may hold 19000-19099).
    tcp = free_port_range(100) if ephemeral else range(19000, 19100)
    env = {
        **stack.env,
        **job_settings_env(),
        "MAX_USERS": "2",
        "DOMAIN_NAME": DOMAIN,
        "HAPROXY_HTTP_LISTEN": str(main_port),
        "TCP_PORT_RANGE_START": str(tcp.start),
        "TCP_PORT_RANGE_END": str(tcp.stop - 1),
        "ELB_MANTICORE_NAME": stack.load_balancer,
        "MANTICORE_ELB_CALLS_PER_SECOND": "20",
        "MANTICORE_HAPROXY_CONFIG_DIR": str(home / "haproxy-router"),
        "MANTICORE_HAPROXY_STATS_PORT": str(stats_port),
        "MANTICORE_HAPROXY_WAIT_MIN": "0.05",
        "MANTICORE_HAPROXY_WAIT_MAX": "0.2",
        "MANTICORE_HAPROXY_HARD_STOP_AFTER": "5",
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
    }
    return env, main_port


@contextmanager
def running(env: dict[str, str], logs: Path) -> Iterator[tuple[dict[str, Process], Process]]:
    """Two replicas of the leader-elected controllers and the haproxy controller; on the way
    out, the HAProxy that controller started too (in production it outlives a controller
    restart on purpose; here nothing may outlive the demo)."""
    replicas = {
        name: Process(name, list(LEADER_ELECTED), env, logs) for name in ("replica-a", "replica-b")
    }
    router = Process("haproxy", ["haproxy"], env, logs)
    try:
        for process in [*replicas.values(), router]:
            wait_for(f"{process.name} to be ready", process.ready, timeout=60)
        yield replicas, router
    finally:
        for process in [*replicas.values(), router]:
            process.stop()
        HAProxyProcess(env["MANTICORE_HAPROXY_CONFIG_DIR"]).stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after the walkthrough")
    parser.add_argument(
        "--ephemeral", action="store_true", help="free ports instead of 8500/4646/..."
    )
    parser.add_argument("--home", help="devstack home (default: a temporary directory)")
    args = parser.parse_args(argv)
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="devstack-demo-"))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    say("Starting the devstack: Consul, Nomad (3 nodes), ELB endpoint (moto)")
    with DevStack(
        ephemeral=args.ephemeral, home=home, services=("consul", "nomad", "elb")
    ) as stack:
        for name, info in stack.services.items():
            show(f"{name:8} {info.url}")
        env, main_port = manticore_env(stack, home, ephemeral=args.ephemeral)
        env = front_door_env(env)
        say(
            "Starting two replicas of every Manticore controller "
            f"({', '.join(LEADER_ELECTED)}) and the haproxy controller (HAProxy on :{main_port})"
        )
        with running(env, stack.log_dir) as (replicas, router):
            for process in [*replicas.values(), router]:
                show(f"{process.name}: {process.url}/metrics  log: {process.log_path}")
            world = World(env)
            walkthrough(world, replicas, main_port)
            front = FrontDoor(DOMAIN, main_port)
            with running_apis(env, stack.log_dir) as apis:
                front_door(world, front, apis)
                if args.once:
                    front_door_leave(world, front)
                    front.close()
                    say("Done.")
                    return 0
                say(f"Everything is running. Open {front.page} ; press Ctrl-C to stop.")
                for key in ("CONSUL_HTTP_ADDR", "NOMAD_ADDR"):
                    show(f"export {key}={env[key]}")
                show("reconciler status --watch: the live table of users follows")
                time.sleep(2)
                table = status_command(env, "--watch")
                try:
                    while not stop.wait(0.5):
                        if router.proc.poll() is not None:
                            say("the haproxy controller exited; stopping")
                            break
                except KeyboardInterrupt:
                    pass
                finally:
                    table.terminate()
                    table.wait(10)
                    front.close()
    say("Stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
