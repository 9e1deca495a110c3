"""Each routing controller as its own process: ``reconciler run <name>``, configured only by the
environment, ready, converging, exporting its domain metrics; a bad setting stops it at start
with exit code 2 and the variable's name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controllers.api.ids import ALLOCATIONS_PREFIX, ELB_PREFIX, HAPROXY_DATA_PREFIX, REQUESTS_PREFIX
from devstack.elb import ELBEndpoint
from devstack.elb import Listener as DevListener
from tests.integration._procs import ROOT, Replica, wait_until
from tests.integration.routing.helpers import Services

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALLOCATION = {
    "services": {
        "hmi": {"address": "10.0.0.5", "port": 21000, "route": "http"},
        "broker": {"address": "10.0.0.5", "port": 21001, "route": "http"},
        "core": {"address": "10.0.0.5", "port": 21002, "route": "tcp"},
    },
    "job": "core-hmi-ada",
    "allocation": "3a1f9d3e-1111-4222-8333-444455556666",
    "node": "node-1",
}
ROUTES = {"tcp": [{"port": 20009, "address": "10.0.0.5:21002", "role": "core"}]}


@pytest.fixture(scope="module")
def aws() -> Iterator[ELBEndpoint]:
    with ELBEndpoint(load_balancer="procs", listeners=[DevListener("HTTP", 80, 8080)]) as e:
        yield e


def spawn(name: str, environ: dict[str, str], log: Path) -> Replica:
    keep = ("CONSUL_", "RECONCILER_", "AWS_", "ELB_", "TCP_", "HAPROXY_", "DOMAIN_", "MANTICORE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(keep)}
    env.update(environ)
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
                "--drain-timeout",
                "5",
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return Replica(name, proc, log)


class Run:
    """One controller process; stopped (SIGTERM, then killed) when the test ends."""

    def __init__(self, name: str, environ: dict[str, str], tmp: Path) -> None:
        self.replica = spawn(name, environ, tmp / f"{name}.log")

    def __enter__(self) -> Replica:
        return self.replica

    def __exit__(self, *exc: object) -> None:
        proc = self.replica.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def kv_get(consul: httpx.Client, key: str) -> Any:
    reply = consul.get(f"/v1/kv/{key}", params={"raw": "true"})
    return None if reply.status_code == 404 else json.loads(reply.content)


@pytest.mark.parametrize("name", ["allocations", "haproxy-kv", "elb"])
def test_each_controller_runs_alone_configured_by_the_environment(
    name: str, consul_server: Any, aws: ELBEndpoint, tmp_path: Path
) -> None:
    aws.reset()
    environ = {
        "CONSUL_HTTP_ADDR": consul_server.address,
        "DOMAIN_NAME": "procs.test",
        "TCP_PORT_RANGE_START": "20000",
        "TCP_PORT_RANGE_END": "20099",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_CONFIG_FILE": "/dev/null",
        **aws.env,
        "ELB_MANTICORE_NAME": "procs",
    }
    consul = httpx.Client(base_url=consul_server.url, timeout=10, trust_env=False)
    services = Services(consul_server.url)
    try:
        with Run(name, environ, tmp_path) as replica:
            wait_until(replica.ready, 30, what=f"{name} ready: {replica.tail()}")
            consul.put(f"/v1/kv/{REQUESTS_PREFIX}ada", content=b"{}")
            if name == "allocations":
                services.register("ada")
                record = wait_until(lambda: kv_get(consul, f"{ALLOCATIONS_PREFIX}ada"), 30)
                assert set(record["services"]) == {"hmi", "broker", "core"}
                wait_until(lambda: replica.metric("manticore_users_running") == 1, 40)
            elif name == "haproxy-kv":
                consul.put(f"/v1/kv/{ALLOCATIONS_PREFIX}ada", content=json.dumps(ALLOCATION))
                routes = wait_until(lambda: kv_get(consul, f"{HAPROXY_DATA_PREFIX}ada"), 30)
                assert len(routes["http"]) == 2
                domain = consul.get("/v1/kv/haproxy/domainName", params={"raw": "true"})
                assert domain.text == "procs.test"
                wait_until(lambda: replica.metric("manticore_tcp_ports_total") == 100, 40)
            else:
                consul.put(f"/v1/kv/{HAPROXY_DATA_PREFIX}ada", content=json.dumps(ROUTES))
                record = wait_until(lambda: kv_get(consul, f"{ELB_PREFIX}ada"), 30)
                assert record["load_balancer"] == "procs"
                assert replica.metric("manticore_elb_listener_quota", load_balancer="procs") == 100
            assert replica.metric("leader_election_master_status", name=name) == 1
    finally:
        consul.close()
        services.close()


@pytest.mark.parametrize(
    ("name", "environ", "names"),
    [
        (
            "haproxy-kv",
            {"TCP_PORT_RANGE_START": "30000", "TCP_PORT_RANGE_END": "20000"},
            "TCP_PORT_RANGE_END",
        ),
        ("haproxy-kv", {"DOMAIN_NAME": "not a domain"}, "DOMAIN_NAME"),
        ("elb", {}, "ELB_MANTICORE_NAME"),
        ("elb", {"ELB_MANTICORE_NAME": "ok", "ELB_SSL_PORT": "443"}, "SSL_CERTIFICATE_ARN"),
        (
            "elb",
            {"ELB_MANTICORE_NAME": "ok", "MANTICORE_ELB_LISTENER_QUOTA": "zero"},
            "MANTICORE_ELB_LISTENER_QUOTA",
        ),
    ],
)
def test_a_bad_setting_stops_the_process_at_start_naming_the_variable(
    name: str, environ: dict[str, str], names: str, consul_server: Any, tmp_path: Path
) -> None:
    replica = spawn(name, {"CONSUL_HTTP_ADDR": consul_server.address, **environ}, tmp_path / "log")
    try:
        code = replica.proc.wait(30)
    finally:
        if replica.proc.poll() is None:
            replica.proc.kill()
    assert code == 2, replica.tail()
    assert names in replica.log.read_text()
