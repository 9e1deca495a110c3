"""Cleanup is total: 50 users come and go through every controller, run as real processes.

The devstack runs as child processes (Consul, Nomad with three nodes and simulated docker tasks
that really serve their ports, the ELB endpoint); every controller of the pipeline
(``waitlist``, ``jobs``, ``allocations``, ``haproxy-kv``, ``elb``) runs twice as
``reconciler run <name>``, one leader and one standby each. 50 users arrive in random order,
half of them leave again at random moments (some before they were ever routed), ``MAX_USERS``
keeps some waiting, and one leader is SIGKILLed midway. At the end nothing of a departed user
remains anywhere (waiting entry, Nomad job, Consul services, allocation, route reservations,
HAProxy data, ELB listener and record, status entries), every remaining user is fully routed,
and standbys never acted.

Consul runs with ACLs on (default policy deny) and Nomad with ACLs on: each controller runs with
a Consul token made from its own policy (``charts/policies/<name>.hcl``) and, where it talks to
Nomad, a Nomad token made from ``charts/policies/<name>-nomad.hcl``; each token is checked to be
refused another controller's keys before the run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from controllers.api.ids import (
    ALLOCATIONS_PREFIX,
    ELB_PREFIX,
    HAPROXY_DATA_PREFIX,
    REQUESTS_PREFIX,
    WAITING_KEY,
    job_id,
)
from controllers.api.waiting import decode_values
from devstack.up import DevStack
from tests.integration._procs import ROOT, Replica, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

CONTROLLERS = ("waitlist", "jobs", "allocations", "haproxy-kv", "elb")
USERS = 50
LEAVING = 25
MAX_USERS = 30
SEED = 20241
MASTER = "cleanup-root-token"
POLICIES = ROOT / "charts" / "policies"


class Stack:
    """The devstack processes plus the replicas, with just enough HTTP to look at them."""

    def __init__(self, home: Path) -> None:
        self.devstack = DevStack(
            ephemeral=True,
            home=home / "stack",
            services=("consul", "nomad", "elb"),
            nodes=3,
            acl_token=MASTER,
            ready_timeout=120,  # a loaded machine starts moto and two emulators slowly
        )
        self.home = home
        self.replicas: dict[str, list[Replica]] = {}
        # controller -> (Consul token, Nomad token or None), made from its own policies
        self.tokens: dict[str, tuple[str, str | None]] = {}
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.devstack.start()
        env = self.devstack.env
        self.consul = httpx.Client(
            base_url=f"http://{env['CONSUL_HTTP_ADDR']}",
            headers={"X-Consul-Token": MASTER},
            timeout=30,
            trust_env=False,
        )
        self.nomad = httpx.Client(
            base_url=env["NOMAD_ADDR"],
            headers={"X-Nomad-Token": MASTER},
            timeout=30,
            trust_env=False,
        )
        self.elb = boto3.client(
            "elb",
            endpoint_url=env["AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING"],
            region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def make_tokens(self, name: str) -> tuple[str, str | None]:
        """A Consul token (and a Nomad one where the controller has a Nomad policy) made from
        nothing but the controller's own policy files."""
        rules = (POLICIES / f"{name}.hcl").read_text()
        self.consul.put("/v1/acl/policy", json={"Name": name, "Rules": rules}).raise_for_status()
        reply = self.consul.put("/v1/acl/token", json={"Policies": [{"Name": name}]})
        reply.raise_for_status()
        consul_token = str(reply.json()["SecretID"])
        nomad_token: str | None = None
        nomad_policy = POLICIES / f"{name}-nomad.hcl"
        if nomad_policy.exists():
            self.nomad.post(
                f"/v1/acl/policy/{name}", json={"Name": name, "Rules": nomad_policy.read_text()}
            ).raise_for_status()
            reply = self.nomad.post(
                "/v1/acl/token", json={"Name": name, "Type": "client", "Policies": [name]}
            )
            reply.raise_for_status()
            nomad_token = str(reply.json()["SecretID"])
        self.tokens[name] = (consul_token, nomad_token)
        return self.tokens[name]

    def environ(self, name: str) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")
        base = {k: v for k, v in os.environ.items() if k in keep}
        base.update(self.devstack.env)
        consul_token, nomad_token = self.tokens[name]
        base["CONSUL_HTTP_TOKEN"] = consul_token
        if nomad_token is None:
            base.pop("NOMAD_TOKEN", None)
        else:
            base["NOMAD_TOKEN"] = nomad_token
        base.update(
            DOMAIN_NAME="manticore.test",
            ELB_MANTICORE_NAME=self.devstack.load_balancer,
            MANTICORE_ELB_CALLS_PER_SECOND="50",
            MAX_USERS=str(MAX_USERS),
            AWS_SHARED_CREDENTIALS_FILE="/dev/null",
            AWS_CONFIG_FILE="/dev/null",
        )
        return base

    def start_replica(self, name: str, index: int) -> Replica:
        identity = f"{name}-{index}"
        log = self.home / f"{identity}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reconciler.cli",
                    "run",
                    name,
                    "--metrics-addr",
                    "127.0.0.1:0",
                    "--log-format",
                    "json",
                    "--identity",
                    identity,
                ],
                cwd=ROOT,
                env=self.environ(name),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self._procs.append(proc)
        replica = Replica(identity, proc, log)
        self.replicas.setdefault(name, []).append(replica)
        return replica

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            proc.wait(timeout=10)
        for client in ("consul", "nomad"):
            if hasattr(self, client):
                getattr(self, client).close()
        self.devstack.stop()

    # -- looking at the world

    def kv_keys(self, prefix: str) -> list[str]:
        resp = self.consul.get(f"/v1/kv/{prefix}", params={"keys": ""})
        return [] if resp.status_code == 404 else list(resp.json())

    def kv_values(self, prefix: str) -> dict[str, bytes]:
        import base64

        resp = self.consul.get(f"/v1/kv/{prefix}", params={"recurse": ""})
        if resp.status_code == 404:
            return {}
        return {e["Key"]: base64.b64decode(e["Value"] or "") for e in resp.json()}

    def lock_holder(self, name: str) -> str | None:
        values = self.kv_values(f"reconciler/leader/{name}")
        raw = values.get(f"reconciler/leader/{name}")
        resp = self.consul.get(f"/v1/kv/reconciler/leader/{name}")
        if not raw or resp.status_code != 200 or not resp.json()[0].get("Session"):
            return None
        return str(json.loads(raw)["holder"])

    def put(self, key: str, value: bytes = b"{}") -> None:
        assert self.consul.put(f"/v1/kv/{key}", content=value).json() is True

    def delete(self, key: str) -> None:
        self.consul.delete(f"/v1/kv/{key}").raise_for_status()

    def tcp_listeners(self) -> set[int]:
        (lb,) = self.elb.describe_load_balancers(LoadBalancerNames=[self.devstack.load_balancer])[
            "LoadBalancerDescriptions"
        ]
        return {
            d["Listener"]["LoadBalancerPort"]
            for d in lb["ListenerDescriptions"]
            if d["Listener"]["Protocol"] in ("TCP", "SSL")
        }

    def services(self) -> set[str]:
        return set(self.consul.get("/v1/catalog/services").json())

    def job_exists(self, user: str) -> bool:
        return self.nomad.get(f"/v1/job/{job_id(user)}").status_code == 200


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.close()


def leftovers(stack: Stack, user: str) -> list[str]:
    """Everything of ``user`` still anywhere."""
    found: list[str] = []
    for prefix in ("manticore/", "haproxy/", "reconciler/status/"):
        found += [k for k in stack.kv_keys(prefix) if k.rsplit("/", 1)[-1] == user]
    found += [
        f"{k} (held for {user})"
        for k, v in stack.kv_values("manticore/routes/").items()
        if v.decode(errors="replace") == user
    ]
    waiting = decode_values(stack.kv_values(WAITING_KEY))
    if user in waiting.entries:
        found.append(f"waiting entry {user}")
    if stack.job_exists(user):
        found.append(f"nomad job {job_id(user)}")
    found += [s for s in stack.services() if s.startswith(f"{job_id(user)}-")]
    return found


def routed(stack: Stack, user: str, listeners: set[int]) -> bool:
    values = stack.kv_values(f"{HAPROXY_DATA_PREFIX}{user}")
    raw = values.get(f"{HAPROXY_DATA_PREFIX}{user}")
    if not raw or f"{ALLOCATIONS_PREFIX}{user}" not in stack.kv_keys(ALLOCATIONS_PREFIX):
        return False
    routes = json.loads(raw)
    record = stack.kv_values(f"{ELB_PREFIX}{user}").get(f"{ELB_PREFIX}{user}")
    ports = {r["port"] for r in routes.get("tcp", [])}
    return bool(ports) and ports <= listeners and record is not None


def reconciles(replica: Replica) -> float:
    total = 0.0
    for line in replica.get("/metrics").text.splitlines():
        if line.startswith("controller_runtime_reconcile_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_token_is_narrow(stack: Stack, name: str) -> None:
    """The controller's Consul token writes its own leader key, and nobody else's keys."""
    token, _ = stack.tokens[name]
    headers = {"X-Consul-Token": token}
    own = stack.consul.put(f"/v1/kv/reconciler/status/{name}/probe", content=b"x", headers=headers)
    assert own.status_code == 200, (name, own.text)
    stack.consul.delete(f"/v1/kv/reconciler/status/{name}/probe", headers=headers)
    for other in CONTROLLERS:
        if other == name:
            continue
        for key in (f"reconciler/leader/{other}", f"reconciler/status/{other}/probe"):
            denied = stack.consul.put(f"/v1/kv/{key}", content=b"x", headers=headers)
            assert denied.status_code == 403, f"{name}'s token may write {key}"
    denied = stack.consul.put(f"/v1/kv/{REQUESTS_PREFIX}probe", content=b"x", headers=headers)
    assert denied.status_code == 403, f"{name}'s token may write requests"


def test_fifty_users_come_and_go_and_nothing_of_the_departed_remains(stack: Stack) -> None:
    started = time.monotonic()
    for name in CONTROLLERS:
        stack.make_tokens(name)
        assert_token_is_narrow(stack, name)
    for name in CONTROLLERS:
        for index in (1, 2):
            stack.start_replica(name, index)
    for name in CONTROLLERS:
        wait_until(lambda name=name: stack.lock_holder(name), 60, what=f"a {name} leader")
        for replica in stack.replicas[name]:
            wait_until(replica.ready, 60, what=f"{replica.identity} ready")
    leaders = {name: stack.lock_holder(name) for name in CONTROLLERS}

    rng = random.Random(SEED)
    users = [f"user-{i:02d}" for i in range(USERS)]
    leaving = set(rng.sample(users, LEAVING))
    # Arrivals in random order; each departure at a random moment after its arrival.
    events: list[tuple[str, str]] = [("arrive", u) for u in rng.sample(users, USERS)]
    for user in leaving:
        after = next(i for i, e in enumerate(events) if e == ("arrive", user))
        events.insert(rng.randint(after + 1, len(events)), ("leave", user))
    victim = rng.choice(CONTROLLERS)
    killed: Replica | None = None
    for step, (kind, user) in enumerate(events):
        if kind == "arrive":
            stack.put(f"{REQUESTS_PREFIX}{user}")
        else:
            stack.delete(f"{REQUESTS_PREFIX}{user}")
        if step == len(events) // 2:
            killed = next(r for r in stack.replicas[victim] if r.identity == leaders[victim])
            killed.proc.send_signal(signal.SIGKILL)
            killed.proc.wait(timeout=10)
        time.sleep(rng.uniform(0.02, 0.25))
    assert killed is not None
    remaining = [u for u in users if u not in leaving]
    last_event = time.monotonic()

    def converged() -> bool:
        listeners = stack.tcp_listeners()
        if any(leftovers(stack, u) for u in sorted(leaving)):
            return False
        return all(routed(stack, u, listeners) for u in remaining)

    try:
        # Generous for a loaded 2-core machine; a quiet one converges in about 20 s.
        wait_until(converged, 300 - (last_event - started), every=1.0, what="convergence")
    finally:
        summary = {u: leftovers(stack, u) for u in sorted(leaving)}
        print(f"\nleftovers of departed users: {[(u, v) for u, v in summary.items() if v]}")
    converged_after = time.monotonic() - last_event
    # Exactly the remaining users hold a listener, and only leaders ever acted.
    assert len(stack.tcp_listeners()) == len(remaining)
    waiting = decode_values(stack.kv_values(WAITING_KEY))
    assert sorted(waiting.entries) == sorted(remaining)
    assert all(e.claimed for e in waiting.entries.values()), "MAX_USERS >= remaining users"
    new_leader = stack.lock_holder(victim)
    assert new_leader is not None
    assert new_leader != killed.identity
    for name in CONTROLLERS:
        for replica in stack.replicas[name]:
            if replica is killed:
                continue
            if replica.identity not in (leaders[name], stack.lock_holder(name)):
                assert reconciles(replica) == 0, f"standby {replica.identity} acted"
    print(
        f"{USERS} users, {LEAVING} left, leader {killed.identity} killed; converged "
        f"{converged_after:.1f}s after the last event, {time.monotonic() - started:.1f}s in all"
    )
