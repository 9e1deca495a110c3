"""``make run``: the whole system on one machine, shown working.

Starts the devstack (Consul, Nomad with three nodes, the ELB endpoint, HAProxy), then two
replicas of every registered controller (``reconciler run --all``: one leads, one stands by),
and walks through what they do: inputs converge, the leader is named in Consul, metrics and
readiness are served, Nomad places a real ``raw_exec`` task whose health check turns passing in
Consul, and stopping the leader hands over to the standby at once. Then it keeps running until
Ctrl-C (or exits, with ``--once``).
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import signal
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

from devstack.process import free_ports
from devstack.up import DevStack

GREETINGS = {"ada": "hello", "grace": "hi", "linus": "hey"}


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show(text: str) -> None:
    print(f"    {text}", flush=True)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Replica:
    """One ``reconciler run --all`` process; its log goes to a file in the devstack home."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_ports(1)[0]
        self.log_path = log_dir / f"reconciler-{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler.cli",
                "run",
                "--all",
                "--metrics-addr",
                f"127.0.0.1:{self.port}",
                "--identity",
                name,
            ],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

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


class Consul:
    def __init__(self, address: str) -> None:
        self.http = httpx.Client(base_url=f"http://{address}", timeout=10, trust_env=False)

    def put(self, key: str, value: bytes) -> None:
        self.http.put(f"/v1/kv/{key}", content=value).raise_for_status()

    def get(self, key: str) -> bytes | None:
        response = self.http.get(f"/v1/kv/{key}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        raw = response.json()[0]["Value"]
        return base64.b64decode(raw) if raw else b""

    def delete(self, key: str) -> None:
        self.http.delete(f"/v1/kv/{key}").raise_for_status()


def demo_job(job_id: str) -> dict[str, Any]:
    """A raw_exec HTTP server with a Consul HTTP check: Nomad -> Consul health, for real."""
    second = 1_000_000_000
    server = "import http.server as h,os;h.HTTPServer(('127.0.0.1',int(os.environ['NOMAD_PORT_http'])),h.SimpleHTTPRequestHandler).serve_forever()"  # noqa: E501
    return {
        "Job": {
            "ID": job_id,
            "Name": job_id,
            "Type": "service",
            "Datacenters": ["dc1"],
            "TaskGroups": [
                {
                    "Name": "web",
                    "Count": 1,
                    "Networks": [{"DynamicPorts": [{"Label": "http"}]}],
                    "Tasks": [
                        {
                            "Name": "server",
                            "Driver": "raw_exec",
                            "Config": {"command": sys.executable, "args": ["-c", server]},
                            "Resources": {"CPU": 100, "MemoryMB": 64},
                            "Services": [
                                {
                                    "Name": job_id,
                                    "PortLabel": "http",
                                    "Checks": [
                                        {
                                            "Name": "http",
                                            "Type": "http",
                                            "Path": "/",
                                            "Interval": second,
                                            "Timeout": second,
                                        }
                                    ],
                                }
                            ],
                        }
                    ],
                }
            ],
        }
    }


def leader_of(consul: Consul, controller: str) -> str | None:
    raw = consul.get(f"reconciler/leader/{controller}")
    if not raw:
        return None
    holder = json.loads(raw).get("holder")
    return str(holder) if holder else None


def metric_lines(url: str, *names: str) -> list[str]:
    """The greeter's samples of the named metrics (no histogram buckets, no _created)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return [
        line
        for line in text.splitlines()
        if line.startswith(names)
        and ('controller="greeter"' in line or 'name="greeter"' in line)
        and "_created" not in line
    ]


def walkthrough(stack: DevStack, replicas: dict[str, Replica]) -> None:
    env = stack.env
    consul = Consul(env["CONSUL_HTTP_ADDR"])

    say("The greeter controller converges inputs into outputs (examples/greeter.py)")
    for name, greeting in GREETINGS.items():
        value = json.dumps({"greeting": greeting}).encode()
        consul.put(f"examples/greetings/in/{name}", value)
        show(f"PUT examples/greetings/in/{name} = {value.decode()}")
    for name in GREETINGS:
        key = f"examples/greetings/out/{name}"
        out = wait_for(f"output of {name}", functools.partial(consul.get, key))
        show(f"GET examples/greetings/out/{name} -> {out.decode()}")

    say("Bad input is refused, counted and logged; other users are not affected")
    consul.put("examples/greetings/in/mallory", b"{not json")
    show("PUT examples/greetings/in/mallory = {not json")
    leader = wait_for("a leader", lambda: leader_of(consul, "greeter"))
    active = replicas[leader]
    wait_for(
        "the invalid-input metric",
        lambda: any(
            "reconciler_invalid_input_total" in line and "malformed-json" in line
            for line in metric_lines(active.url, "reconciler_invalid_input_total")
        ),
    )
    for line in metric_lines(active.url, "reconciler_invalid_input_total"):
        show(line)

    say(f"One replica leads, the other stands by: reconciler/leader/greeter names '{leader}'")
    for name, replica in replicas.items():
        ready = httpx.get(f"{replica.url}/readyz", timeout=5).json()
        state = ready["controllers"]["greeter"]["leadership"]
        show(f"{name}: /readyz ok={ready['ok']} leadership={state}  ({replica.url}/metrics)")
    for line in metric_lines(
        active.url,
        "controller_runtime_reconcile_total",
        "leader_election_master_status",
        "reconciler_fenced_writes_total",
    ):
        show(line)

    say("Nomad places a real raw_exec task; its Consul health check turns passing")
    nomad = httpx.Client(base_url=env["NOMAD_ADDR"], timeout=10, trust_env=False)
    nomad.post("/v1/jobs", json=demo_job("demo-web")).raise_for_status()
    allocs = wait_for(
        "a running allocation",
        lambda: [
            a
            for a in nomad.get("/v1/job/demo-web/allocations").json()
            if a["ClientStatus"] == "running"
        ],
    )
    show(f"allocation {allocs[0]['ID'][:8]} running on node {allocs[0]['NodeName']}")
    healthy = wait_for(
        "a passing service",
        lambda: consul.http.get("/v1/health/service/demo-web", params={"passing": "1"}).json(),
    )
    service = healthy[0]["Service"]
    show(f"Consul: {service['ID']} at {service['Address']}:{service['Port']} is passing")
    nomad.delete("/v1/job/demo-web", params={"purge": "true"}).raise_for_status()
    show("job purged: its service is deregistered")

    say("ELB endpoint and HAProxy")
    show(f"ELB '{env['DEVSTACK_ELB_NAME']}' at {env['AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING']}")
    show(
        f"HAProxy serving {env['DEVSTACK_HAPROXY_URL']} (stats {env['DEVSTACK_HAPROXY_STATS_URL']})"
    )

    say(f"SIGTERM the leader '{leader}': it releases the lock, the standby takes over at once")
    started = time.monotonic()
    code = replicas[leader].stop()

    def new_leader() -> str | None:
        holder = leader_of(consul, "greeter")
        return holder if holder != leader else None

    successor = wait_for("a new leader", new_leader)
    took = time.monotonic() - started
    show(f"'{leader}' exited with {code}; '{successor}' leads after {took:.2f} s")
    consul.put("examples/greetings/in/margaret", b'{"greeting": "welcome"}')
    out = wait_for(
        "the new leader to converge", lambda: consul.get("examples/greetings/out/margaret")
    )
    show(f"GET examples/greetings/out/margaret -> {out.decode()}")
    consul.delete("examples/greetings/in/ada")
    wait_for("ada's output to go", lambda: consul.get("examples/greetings/out/ada") is None)
    show("DELETE examples/greetings/in/ada -> its output is gone too")


@contextmanager
def running_replicas(stack: DevStack) -> Iterator[dict[str, Replica]]:
    replicas = {
        name: Replica(name, stack.env, stack.log_dir) for name in ("replica-a", "replica-b")
    }
    try:
        for replica in replicas.values():
            wait_for(f"{replica.name} to be ready", replica.ready, timeout=30)
        yield replicas
    finally:
        for replica in replicas.values():
            replica.stop()


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
    say("Starting the devstack: Consul, Nomad (3 nodes), ELB endpoint (moto), HAProxy")
    with DevStack(ephemeral=args.ephemeral, home=home) as stack:
        for name, info in stack.services.items():
            show(f"{name:8} {info.url}")
        for key, value in stack.env.items():
            show(f"export {key}={value}")
        say("Starting two replicas of every registered controller (reconciler run --all)")
        with running_replicas(stack) as replicas:
            for name, replica in replicas.items():
                show(f"{name}: {replica.url}/metrics  log: {replica.log_path}")
            walkthrough(stack, replicas)
            if args.once:
                say("Done.")
                return 0
            say("Everything is running. Press Ctrl-C to stop.")
            try:
                while not stop.wait(0.5):
                    dead = [r.name for r in replicas.values() if r.proc.poll() is not None]
                    if len(dead) == len(replicas):
                        say(f"every replica has exited ({', '.join(dead)}); stopping")
                        break
            except KeyboardInterrupt:
                pass
    say("Stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
