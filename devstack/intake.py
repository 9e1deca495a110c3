"""Intake API instances as child processes, for ``make run`` and end-to-end tests.

Each instance is a ``manticore-api`` process (``python -m controllers.intake.server``) on a free
loopback port, registered in the stack's Consul as the web app service, so haproxy-kv publishes
it and HAProxy sends ``http://<DOMAIN_NAME>:<mainPort>/`` to it. Its JSON log goes to a file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from devstack.process import free_ports


class APIInstance:
    """One ``manticore-api`` process."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_ports(1)[0]
        self.log_path = log_dir / f"manticore-api-{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controllers.intake.server", "--log-format", "json"],
            env={
                **os.environ,
                **env,
                "HTTP_PORT": str(self.port),
                "MANTICORE_API_SERVICE_ID": f"manticore-api-{name}",
                "MANTICORE_API_CHECK_INTERVAL": env.get("MANTICORE_API_CHECK_INTERVAL", "1"),
            },
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"manticore-api {self.name} exited; see {self.log_path}")
        try:
            response = httpx.get(f"{self.url}/readyz", timeout=2, trust_env=False)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def status_command(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """``reconciler status`` (``--watch`` for the live table) against the stack."""
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "status", *args],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


def front_door_env(env: dict[str, str]) -> dict[str, str]:
    """What ``make run`` adds for the front door: where users reach HAProxy, a usage limit."""
    return {
        **env,
        # The devstack's ELB endpoint does not carry traffic: users reach HAProxy directly.
        "MANTICORE_PUBLIC_HTTP_PORT": env.get("HAPROXY_HTTP_LISTEN", "8080"),
        "MANTICORE_PUBLIC_TCP_HOST": "127.0.0.1",
        "USAGE_DURATION": env.get("USAGE_DURATION", "900"),
        "WARNING_DURATION": env.get("WARNING_DURATION", "60"),
        "RESET_TIMER_ALLOWED": env.get("RESET_TIMER_ALLOWED", "true"),
    }


@contextlib.contextmanager
def running_apis(
    env: dict[str, str], log_dir: Path, names: tuple[str, ...] = ("api-a", "api-b")
) -> Iterator[list[APIInstance]]:
    """Intake API instances, ready and registered; stopped (SIGTERM: deregistered) on exit."""
    apis = [APIInstance(name, env, log_dir) for name in names]
    try:
        deadline = time.monotonic() + 60
        for api in apis:
            while not api.ready():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"manticore-api {api.name} not ready; see {api.log_path}")
                time.sleep(0.1)
        yield apis
    finally:
        for api in apis:
            api.stop()


class FrontDoor:
    """The web app as users reach it: through HAProxy's main port, with Host = DOMAIN_NAME."""

    def __init__(self, domain: str, main_port: int) -> None:
        self.domain = domain
        self.main_port = main_port
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{main_port}",
            headers={"Host": domain},
            timeout=10,
            trust_env=False,
        )

    @property
    def page(self) -> str:
        return f"http://{self.domain}:{self.main_port}/"

    def open(self) -> bool:
        try:
            return self.http.get("/api/v1/options").status_code == 200
        except httpx.HTTPError:
            return False

    def ask(self, user: str) -> int:
        return self.http.post("/api/v1/requests", json={"id": user}).status_code

    def status(self, user: str) -> dict[str, object] | None:
        got = self.http.get(f"/api/v1/requests/{user}")
        return got.json() if got.status_code == 200 else None

    def leave(self, user: str) -> int:
        return self.http.delete(f"/api/v1/requests/{user}").status_code

    def close(self) -> None:
        self.http.close()
