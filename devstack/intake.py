"""Intake API instances as child processes, for ``make run`` and end-to-end tests.

Each instance is a ``manticore-api`` process (``python -m controllers.intake.server``) on a free
loopback port, registered in the stack's Consul as the web app service, so haproxy-kv publishes
it and HAProxy sends ``http://<DOMAIN_NAME>:<mainPort>/`` to it. Its JSON log goes to a file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
