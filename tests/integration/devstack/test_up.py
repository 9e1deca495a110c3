"""``devstack up`` as a real process, ``status``/``down`` against it, and the DevStack Python API.

Every test tracks the pids it caused (the ``up`` process, each service, the HAProxy master and
workers) and kills whatever is left in a ``finally``, so a failing test leaves nothing running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from devstack.haproxy import HAProxy
from devstack.process import pid_alive, signal_pid, wait_pid_gone, wait_until
from devstack.up import READY_BANNER, DevStack, DevStackError, read_state

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("needs_haproxy")]


class UpProcess:
    """A ``devstack up`` child whose output is collected line by line."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack", "up", "--ephemeral", "--home", str(home), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.pids: set[int] = {self.proc.pid}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 40.0) -> dict[str, str]:
        """Wait for the ready banner; return the exported environment."""
        ready = wait_until(
            lambda: (
                any(line.startswith(READY_BANNER) for line in self.lines)
                or self.proc.poll() is not None
            ),
            timeout,
        )
        assert ready, f"devstack up not ready in {timeout} s:\n{self.output}"
        assert self.proc.poll() is None, f"devstack up exited:\n{self.output}"
        self.track_state()
        exports = [line.removeprefix("export ") for line in self.lines if line.startswith("export")]
        return dict(line.split("=", 1) for line in exports)

    def track_state(self) -> dict[str, Any]:
        state = read_state(self.home)
        assert state is not None, f"no state file:\n{self.output}"
        self.pids |= {int(info["pid"]) for info in state["services"].values()}
        if "haproxy" in state["services"]:
            proxy = HAProxy.attach(state["services"]["haproxy"]["extra"]["config_dir"])
            status = proxy.status()
            self.pids |= {pid for pid in (status.master_pid, *status.workers) if pid}
        return state

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.pids:
            if pid_alive(pid):
                signal_pid(pid, signal.SIGKILL)
                wait_pid_gone(pid, 5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Any]:
    started: list[UpProcess] = []

    def start(*args: str) -> UpProcess:
        up = UpProcess(tmp_path / "home", *args)
        started.append(up)
        return up

    try:
        yield start
    finally:
        for up in started:
            up.cleanup()


def run_devstack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack", *args],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )


@pytest.mark.slow
def test_up_runs_every_service_until_sigterm(start_up: Any) -> None:
    up = start_up("--nodes", "2")
    env = up.wait_ready()
    state = up.track_state()
    assert set(state["services"]) == {"consul", "nomad", "elb", "haproxy"}

    status = run_devstack("status", "--home", str(up.home))
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("consul", "nomad", "elb", "haproxy"):
        assert any(
            row.split()[:1] == [name] and row.endswith(" up") for row in status.stdout.splitlines()
        )

    with httpx.Client(trust_env=False, timeout=5) as http:
        consul = f"http://{env['CONSUL_HTTP_ADDR']}"
        assert http.put(f"{consul}/v1/kv/devstack/up-test", content=b"hello").json() is True
        assert http.get(f"{consul}/v1/kv/devstack/up-test", params={"raw": ""}).text == "hello"

        nomad = env["NOMAD_ADDR"]
        assert http.get(f"{nomad}/v1/status/leader").json()
        assert len(http.get(f"{nomad}/v1/nodes").json()) == 2

        main = http.get(env["DEVSTACK_HAPROXY_URL"])
        assert (main.status_code, main.text) == (503, "no route\n")
        assert http.get(env["DEVSTACK_HAPROXY_STATS_URL"]).status_code == 200

    elb = boto3.session.Session().client(
        "elb",
        endpoint_url=env["AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    (lb,) = elb.describe_load_balancers()["LoadBalancerDescriptions"]
    assert lb["LoadBalancerName"] == env["DEVSTACK_ELB_NAME"] == "manticore"
    haproxy_port = int(env["DEVSTACK_HAPROXY_URL"].rsplit(":", 1)[1])
    assert [d["Listener"]["InstancePort"] for d in lb["ListenerDescriptions"]] == [haproxy_port]

    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(20) == 0, up.output
    assert len(up.pids) >= 6  # up, four services, HAProxy master and worker
    assert wait_until(lambda: not any(pid_alive(pid) for pid in up.pids), 5), up.output
    assert read_state(up.home) is None
    assert run_devstack("status", "--home", str(up.home)).returncode == 1


def test_down_stops_a_running_up(start_up: Any) -> None:
    up = start_up("--only", "haproxy")
    env = up.wait_ready()
    assert httpx.get(env["DEVSTACK_HAPROXY_STATS_URL"], trust_env=False).status_code == 200

    down = run_devstack("down", "--home", str(up.home))

    assert down.returncode == 0, down.stdout + down.stderr
    assert up.proc.wait(10) == 0
    assert "SIGTERM received" in up.output
    assert not any(pid_alive(pid) for pid in up.pids)


def test_up_stops_everything_when_one_service_dies(start_up: Any) -> None:
    up = start_up("--only", "haproxy", "--only", "elb")
    up.wait_ready()
    state = up.track_state()
    elb_pid = int(state["services"]["elb"]["pid"])

    os.kill(elb_pid, signal.SIGKILL)

    assert up.proc.wait(20) == 1
    assert "elb exited with code -9; stopping the rest" in up.output
    assert wait_until(lambda: not any(pid_alive(pid) for pid in up.pids), 5), up.output


def test_python_api_runs_a_stack_and_refuses_a_second_one(tmp_path: Path) -> None:
    pids: set[int] = set()
    try:
        with DevStack(ephemeral=True, home=tmp_path, services=["haproxy"]) as stack:
            pids |= {child.pid for child in stack.children.values()}
            proxy = stack.haproxy()
            status = proxy.status()
            pids |= {pid for pid in (status.master_pid, *status.workers) if pid}
            assert set(stack.env) >= {"DEVSTACK_HOME", "DEVSTACK_HAPROXY_URL"}
            assert "CONSUL_HTTP_ADDR" not in stack.env
            assert httpx.get(stack.env["DEVSTACK_HAPROXY_URL"], trust_env=False).status_code == 503
            assert read_state(tmp_path) is not None

            with pytest.raises(DevStackError, match="already runs"):
                DevStack(ephemeral=True, home=tmp_path, services=["haproxy"]).start()

            # A service killed outright is noticed; its HAProxy goes with it (parent-death signal).
            os.kill(stack.children["haproxy"].pid, signal.SIGKILL)
            assert stack.wait() == {"haproxy": -signal.SIGKILL}
            assert status.master_pid is not None
            assert wait_pid_gone(status.master_pid, 5)
        assert read_state(tmp_path) is None
        assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), 5)
    finally:
        for pid in pids:
            if pid_alive(pid):
                signal_pid(pid, signal.SIGKILL)


def test_acl_token_turns_acls_on_in_consul_and_nomad(tmp_path: Path) -> None:
    token = "devstack-root-token"
    services = ("consul", "nomad")
    with DevStack(ephemeral=True, home=tmp_path, services=services, nodes=1, acl_token=token) as s:
        env = s.env
        assert env["CONSUL_HTTP_TOKEN"] == token
        assert env["NOMAD_TOKEN"] == token
        consul = f"http://{env['CONSUL_HTTP_ADDR']}"
        root = {"X-Consul-Token": token}
        assert httpx.put(f"{consul}/v1/kv/x", content=b"1", trust_env=False).status_code == 403
        put = httpx.put(f"{consul}/v1/kv/x", content=b"1", headers=root, trust_env=False)
        assert put.status_code == 200
        nomad = env["NOMAD_ADDR"]
        assert httpx.get(f"{nomad}/v1/jobs", trust_env=False).status_code == 403
        nodes = httpx.get(
            f"{nomad}/v1/nodes", headers={"X-Nomad-Token": token}, trust_env=False
        ).json()
        assert [n["Status"] for n in nodes] == ["ready"]
        # Nomad registers its tasks' services in Consul with the same token (deny by default).
        assert f"--consul-token {token}" in " ".join(s._plans["nomad"].argv)


def test_a_service_that_cannot_start_is_reported(tmp_path: Path) -> None:
    stack = DevStack(ephemeral=True, home=tmp_path, services=["elb"], ready_timeout=20)
    busy = stack.ports.elb
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", busy))
        squatter.listen()
        started = time.monotonic()
        with pytest.raises(DevStackError, match="elb exited with code 1 before it was ready"):
            stack.start()
    assert time.monotonic() - started < 15
    assert not any(child.running() for child in stack.children.values())
    assert read_state(tmp_path) is None


def test_children_do_not_outlive_a_killed_up(start_up: Any) -> None:
    up = start_up("--only", "haproxy")
    up.wait_ready()
    services = set(up.pids) - {up.proc.pid}

    up.proc.kill()  # no chance to clean up: the children must notice on their own

    assert up.proc.wait(10) == -signal.SIGKILL
    assert wait_until(lambda: not any(pid_alive(pid) for pid in services), 10), up.output
    status = run_devstack("status", "--home", str(up.home))
    assert status.returncode == 1
    assert "down" in status.stdout
    assert run_devstack("down", "--home", str(up.home)).returncode == 0
    assert read_state(up.home) is None
