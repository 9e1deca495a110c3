"""Real processes for failover tests: the embedded Consul and ``reconciler run`` replicas.

Every process is started through :class:`Processes`, which kills whatever still runs at the end
of the test. A replica's stderr (its JSON log) goes to a file, never to a pipe nobody reads, so
a chatty replica cannot block on a full pipe.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, every: float = 0.02, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(every)


class Replica:
    """One ``reconciler run greeter`` process."""

    def __init__(self, identity: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.identity = identity
        self.proc = proc
        self.log = log
        self._port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[dict[str, Any]]:
        """The JSON objects logged so far (anything else on stderr is skipped)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out

    def raw_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    @property
    def port(self) -> int:
        """The metrics port it picked (``--metrics-addr 127.0.0.1:0``), from its log."""
        if self._port is None:

            def find() -> int | None:
                assert self.proc.poll() is None, f"{self.identity} exited: {self.tail()}"
                for line in self.lines():
                    if line.get("event") == "manager started":
                        return int(str(line["metrics"]).rsplit(":", 1)[1].split("/", 1)[0])
                return None

            port = wait_until(find, 15, what=f"{self.identity} to serve metrics")
            assert port is not None
            self._port = port
        return self._port

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5, trust_env=False)

    def metric(self, name: str, /, **labels: str) -> float | None:
        """One sample of its ``/metrics`` (None if absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.get("/metrics").text.splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, rest = series.partition("{")
            if metric != name:
                continue
            got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p))
            if got == want:
                return float(value)
        return None

    def ready(self) -> bool:
        try:
            return self.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.raw_lines()[-n:])


class Processes:
    """Starts the embedded Consul and replicas; :meth:`close` kills every one still running."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[subprocess.Popen[bytes]] = []
        self.consul_address = ""

    def _spawn(self, args: list[str], stderr: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        with stderr.open("wb") as err:
            proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stderr=err, **kwargs)
        self._procs.append(proc)
        return proc

    def start_consul(self) -> str:
        """``python -m devstack.consul --port 0``; returns ``127.0.0.1:PORT`` once it is ready."""
        proc = self._spawn(
            [sys.executable, "-m", "devstack.consul", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self.workdir / "consul.err",
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "embedded consul did not print its ready line"
        line = proc.stdout.readline().decode().strip()
        prefix = "consul ready on http://"
        assert line.startswith(prefix), f"unexpected first line {line!r}"
        self.consul_address = line[len(prefix) :]
        return self.consul_address

    def start_replica(self, identity: str, *extra: str, drain_timeout: float = 5.0) -> Replica:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "RECONCILER_"))}
        env.update(CONSUL_HTTP_ADDR=self.consul_address, RECONCILER_IDENTITY=identity)
        log = self.workdir / f"{identity}.log"
        proc = self._spawn(
            [
                sys.executable,
                "-m",
                "reconciler.cli",
                "run",
                "greeter",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--drain-timeout",
                str(drain_timeout),
                *extra,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        return Replica(identity, proc, log)

    def close(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


class ConsulHTTP:
    """Just enough of Consul's HTTP API (and the devstack admin API) for the tests."""

    def __init__(self, address: str) -> None:
        self.http = httpx.Client(base_url=f"http://{address}", timeout=10, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def put(self, key: str, value: bytes) -> None:
        assert self.http.put(f"/v1/kv/{key}", content=value).json() is True

    def get(self, key: str) -> dict[str, Any] | None:
        resp = self.http.get(f"/v1/kv/{key}")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        entry: dict[str, Any] = resp.json()[0]
        return entry

    def raw(self, key: str) -> bytes | None:
        resp = self.http.get(f"/v1/kv/{key}", params={"raw": ""})
        return None if resp.status_code == 404 else resp.content

    def lock(self, name: str) -> tuple[str | None, str | None]:
        """(holder, session) of ``reconciler/leader/<name>``; (None, None) when nobody holds it."""
        entry = self.get(f"reconciler/leader/{name}")
        if entry is None or not entry.get("Session"):
            return None, None
        record = json.loads(base64.b64decode(entry["Value"]))
        return str(record["holder"]), str(entry["Session"])

    def expire_session(self, session: str) -> None:
        self.http.put(f"/_devstack/session/{session}/expire").raise_for_status()


def terminate(replica: Replica, timeout: float) -> int:
    replica.proc.send_signal(signal.SIGTERM)
    return replica.proc.wait(timeout=timeout)


def iter_events(replica: Replica, event: str) -> Iterator[dict[str, Any]]:
    return (line for line in replica.lines() if line.get("event") == event)
