"""The front door end to end, with real processes and the real HAProxy.

The devstack (Consul, Nomad with simulated nodes whose tasks are the devstack's fake core and HMI,
the ELB endpoint), two replicas of every leader-elected controller, the haproxy controller with
its HAProxy, and two intake API instances registered as the web app. Everything a user does
goes through HAProxy, as in production: a user posts, waits in line (``MAX_USERS=1``), is
claimed when the other user leaves, receives its addresses over the event stream, reaches its
fake HMI through HAProxy by subdomain and its fake core through its TCP port, is warned, then
expires, and nothing of either user remains.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from controllers.api.ids import job_id
from controllers.haproxy.process import HAProxyProcess
from devstack.fakes import job_settings_env
from devstack.intake import APIInstance
from devstack.process import free_ports
from devstack.up import DevStack
from tests.integration._procs import ROOT, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

DOMAIN = "manticore.test"
LEADER_ELECTED = ("waitlist", "jobs", "allocations", "haproxy-kv", "elb", "expiry")
USAGE, WARNING = 30, 6


class Controllers:
    """One ``reconciler run ...`` process."""

    def __init__(self, name: str, names: tuple[str, ...], env: dict[str, str], logs: Path):
        self.name = name
        self.port = free_ports(1)[0]
        self.log = logs / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reconciler.cli",
                    "run",
                    *names,
                    "--metrics-addr",
                    f"127.0.0.1:{self.port}",
                    "--identity",
                    name,
                    "--drain-timeout",
                    "3",
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"{self.name} exited; see {self.log}"
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


class World:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.stack = DevStack(
            ephemeral=True, home=home / "stack", services=("consul", "nomad", "elb"), nodes=3
        )
        self.procs: list[Controllers] = []
        self.apis: list[APIInstance] = []

    def start(self) -> None:
        self.stack.start()
        self.main_port, stats = free_ports(2)
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        env.update(self.stack.env)
        env.update(job_settings_env())
        env.update(
            MAX_USERS="1",
            DOMAIN_NAME=DOMAIN,
            HAPROXY_HTTP_LISTEN=str(self.main_port),
            # Below Nomad's dynamic ports (20000-32000), which the users' fakes listen on.
            TCP_PORT_RANGE_START="19100",
            TCP_PORT_RANGE_END="19199",
            ELB_MANTICORE_NAME=self.stack.load_balancer,
            MANTICORE_ELB_CALLS_PER_SECOND="20",
            MANTICORE_HAPROXY_CONFIG_DIR=str(self.home / "haproxy"),
            MANTICORE_HAPROXY_STATS_PORT=str(stats),
            MANTICORE_HAPROXY_WAIT_MIN="0.05",
            MANTICORE_HAPROXY_WAIT_MAX="0.2",
            MANTICORE_HAPROXY_HARD_STOP_AFTER="5",
            USAGE_DURATION=str(USAGE),
            WARNING_DURATION=str(WARNING),
            MANTICORE_EXPIRY_RECHECK_INTERVAL="1",
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_CONFIG_FILE=os.devnull,
        )
        self.env = env
        for name in ("replica-a", "replica-b"):
            self.procs.append(Controllers(name, LEADER_ELECTED, env, self.home))
        self.procs.append(Controllers("router", ("haproxy",), env, self.home))
        for name in ("a", "b"):
            self.apis.append(APIInstance(name, env, self.home))
        self.consul = httpx.Client(base_url=f"http://{env['CONSUL_HTTP_ADDR']}", timeout=30)
        self.nomad = httpx.Client(base_url=env["NOMAD_ADDR"], timeout=30)
        self.front = httpx.Client(
            base_url=f"http://127.0.0.1:{self.main_port}", headers={"Host": DOMAIN}, timeout=30
        )

    def close(self) -> None:
        for api in self.apis:
            api.stop()
        for proc in self.procs:
            if proc.proc.poll() is None:
                proc.proc.terminate()
        for proc in self.procs:
            try:
                proc.proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.proc.kill()
                proc.proc.wait(5)
        HAProxyProcess(self.home / "haproxy").stop()
        for client in ("consul", "nomad", "front"):
            if hasattr(self, client):
                getattr(self, client).close()
        self.stack.stop()

    def kv(self, prefix: str) -> dict[str, bytes]:
        got = self.consul.get(f"/v1/kv/{prefix}", params={"recurse": ""})
        if got.status_code == 404:
            return {}
        return {e["Key"]: base64.b64decode(e["Value"] or "") for e in got.json()}

    def status(self, user: str) -> dict[str, Any] | None:
        try:
            got = self.front.get(f"/api/v1/requests/{user}")
        except httpx.HTTPError:
            return None
        return got.json() if got.status_code == 200 else None

    def leftovers(self, user: str) -> list[str]:
        found = [
            k
            for prefix in ("manticore/", "haproxy/", "reconciler/status/")
            for k in self.kv(prefix)
            if k.rsplit("/", 1)[-1] == user
        ]
        found += [k for k, v in self.kv("manticore/routes/").items() if v == user.encode()]
        waiting = self.kv("manticore/waiting/data")
        found += [k for k, v in waiting.items() if f'"{user}"'.encode() in v]
        if self.nomad.get(f"/v1/job/{job_id(user)}").status_code == 200:
            found.append(f"nomad job {job_id(user)}")
        found += [s for s in self.consul.get("/v1/catalog/services").json() if user in s]
        return found


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        w.start()
        yield w
    finally:
        w.close()


class EventReader(threading.Thread):
    """Reads one user's event stream through HAProxy into a list."""

    def __init__(self, world: World, user: str) -> None:
        super().__init__(daemon=True)
        self.world = world
        self.user = user
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(
                    base_url=f"http://127.0.0.1:{self.world.main_port}",
                    headers={"Host": DOMAIN},
                    timeout=httpx.Timeout(10, read=60),
                ) as http,
                http.stream("GET", f"/api/v1/requests/{self.user}/events") as response,
            ):
                assert response.status_code == 200
                event, data = "message", []
                for line in response.iter_lines():
                    if line == "":
                        if data:
                            self.events.append((event, json.loads("\n".join(data))))
                            if event == "ended":
                                return
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
        except BaseException as exc:
            self.error = exc

    def first(self, state: str, timeout: float) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            assert self.error is None, self.error
            return next((d for _, d in self.events if d.get("state") == state), None)

        return wait_until(found, timeout, every=0.05, what=f"{self.user} {state} event")


def test_a_user_waits_is_claimed_reaches_its_pair_is_warned_and_expires(world: World) -> None:
    for proc in world.procs:
        wait_until(proc.ready, 120, every=0.2, what=f"{proc.name} ready")
    for api in world.apis:
        wait_until(api.ready, 60, every=0.2, what=f"api {api.name} ready")

    def both_published() -> bool:
        return len(world.kv("haproxy/webAppAddresses/")) == 2

    wait_until(both_published, 60, every=0.2, what="both API instances in webAppAddresses")

    def front_door_open() -> bool:
        try:
            return world.front.get("/api/v1/options").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(front_door_open, 60, every=0.2, what="HAProxy routing to the API")
    page = world.front.get("/")
    assert page.status_code == 200
    assert "Manticore" in page.text

    first = world.front.post("/api/v1/requests", json={"id": "first"})
    assert first.status_code == 200, first.text
    wait_until(
        lambda: (world.status("first") or {}).get("state") == "ready", 120, 0.2, "first ready"
    )

    second = world.front.post("/api/v1/requests", json={"id": "second"})
    assert second.status_code == 200, second.text
    waiting = wait_until(
        lambda: (s := world.status("second")) and s["position"] == 0 and s, 30, 0.1, "in line"
    )
    assert waiting["state"] == "waiting"
    reader = EventReader(world, "second")
    reader.start()
    reader.first("waiting", 30)

    assert world.front.delete("/api/v1/requests/first").status_code == 204
    ready = reader.first("ready", 120)
    addresses = ready["addresses"]
    hmi = urlsplit(addresses["hmi_url"])
    assert hmi.hostname.endswith("." + DOMAIN)
    assert hmi.port is None  # the ELB's HTTP port, 80; the ELB forwards it to HAProxy's
    # The user's HMI, through HAProxy (where the ELB would send it), by its subdomain.
    with httpx.Client(base_url=f"http://127.0.0.1:{world.main_port}", timeout=10) as http:

        def hmi_answers() -> str | None:
            got = http.get("/", headers={"Host": hmi.hostname})
            return got.text if got.status_code == 200 else None

        body = wait_until(hmi_answers, 30, 0.2, "the HMI through HAProxy")
    assert "hmi second" in body
    # The user's core, through its TCP port (on the ELB in production; HAProxy's port here).
    port = addresses["core_port"]
    assert addresses["core_tcp"].endswith(f":{port}")
    listener = json.loads(world.kv("manticore/elb/data/second")["manticore/elb/data/second"])
    assert any(item["port"] == port for item in listener["listeners"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        assert sock.recv(100).decode().strip() == "core second"

    warned = reader.first("expiring", USAGE + 30)
    assert warned["warned"] is True
    reader.first("ended", WARNING + 30)
    states = [d.get("state") for _, d in reader.events]
    order = [s for n, s in enumerate(states) if n == 0 or states[n - 1] != s]
    assert order[-4:] == ["starting", "ready", "expiring", "ended"] or order[-3:] == [
        "ready",
        "expiring",
        "ended",
    ], states

    for user in ("first", "second"):
        deadline = time.monotonic() + 90
        while world.leftovers(user) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = world.leftovers(user)
        detail = {
            name: world.consul.get(f"/v1/health/service/{name}").json()
            for name in left
            if name.startswith("core-hmi-")
        }
        allocs = [
            (a["ID"][:8], a["ClientStatus"], a["DesiredStatus"])
            for a in world.nomad.get("/v1/allocations").json()
            if a["JobID"] == job_id(user)
        ]
        assert left == [], (user, allocs, json.dumps(detail)[:3000])
    assert world.status("second") is None
