"""Child-process plumbing shared by the devstack launchers: ports, health probes, clean shutdown.

``devstack up`` runs every service (Consul, Nomad, the ELB endpoint, HAProxy) as its own child
process, and :mod:`devstack.haproxy` runs the real ``haproxy`` binary. They all need the same few
things done carefully: choose free loopback ports, probe an HTTP endpoint without picking up a
proxy from the environment, follow a child's output into a log file while watching for its ready
line, and stop it with SIGTERM, then SIGKILL if it does not go, so that nothing outlives the
command (or the test) that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

# The process helpers the production HAProxy driver needs live with it; the devstack shares them.
from controllers.haproxy.process import (
    pid_alive,
    pid_cmdline,
    signal_pid,
    wait_pid_gone,
    wait_until,
)

__all__ = [
    "LOOPBACK",
    "ChildProcess",
    "free_port",
    "free_ports",
    "http_get",
    "http_ok",
    "pid_alive",
    "pid_cmdline",
    "signal_pid",
    "spawn_options",
    "terminate",
    "wait_pid_gone",
    "wait_until",
]

LOOPBACK = "127.0.0.1"

_PR_SET_PDEATHSIG = 1

# One opener for every probe: loopback services must never be reached through HTTP(S)_PROXY.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free ports; all sockets are held until every port is chosen."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def ephemeral_ports() -> range:
    """The kernel's range for port-0 binds (``ip_local_port_range``)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


# Nomad hands out dynamic ports from 20000 to 32000 (the embedded one too).
NOMAD_DYNAMIC_PORTS = range(20000, 32001)


def free_port_range(count: int, attempts: int = 200, host: str = LOOPBACK) -> range:
    """``count`` consecutive ports, all free on ``host`` right now, clear of the kernel's and
    Nomad's port ranges (so neither a port-0 bind nor a user's task can land inside it):
    HAProxy's TCP range on a machine that other stacks and benchmarks share."""
    ceiling = min(ephemeral_ports().start, NOMAD_DYNAMIC_PORTS.start)
    for _ in range(attempts):
        start = random.randint(10000, ceiling - count)
        held: list[socket.socket] = []
        try:
            for port in range(start, start + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind((host, port))
            return range(start, start + count)
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def http_get(url: str, timeout: float = 2.0, *, method: str = "GET") -> tuple[int, bytes]:
    """``(status, body)`` of a request without a body; :class:`OSError` when nothing answers."""
    try:
        with _opener.open(urllib.request.Request(url, method=method), timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers a GET with a 2xx status."""
    try:
        status, _ = http_get(url, timeout)
    except (OSError, ValueError):
        return False
    return 200 <= status < 300


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM ``proc``, SIGKILL it after ``timeout`` seconds; return its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    return int(proc.returncode)


def spawn_options() -> dict[str, object]:
    """Extra ``Popen`` options that tie a child's life to ours (Linux, main thread only)."""
    # PDEATHSIG fires when the spawning *thread* exits; only tie children to the main thread,
    # which lives as long as the process (a worker thread may exit while the stack runs).
    if not sys.platform.startswith("linux"):
        return {}
    if threading.current_thread() is not threading.main_thread():
        return {}
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return {}
    parent = os.getpid()

    def die_with_parent() -> None:
        # Runs in the child between fork and exec: only async-signal-safe work (no imports).
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return {"preexec_fn": die_with_parent}


class ChildProcess:
    """A child process whose output goes to a log file, with its ready line caught on the way.

    The child runs in its own session (a Ctrl-C in the terminal reaches the parent only, which
    then stops its children in order) and, on Linux, dies with the parent's main thread.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready_pattern: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._ready_re = re.compile(ready_pattern) if ready_pattern else None
        self._env = env
        self._cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_match: re.Match[str] | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "start() first"
        return self.proc.pid

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._env,
            cwd=self._cwd,
            start_new_session=True,
            **spawn_options(),  # type: ignore[call-overload]
        )
        self._reader = threading.Thread(
            target=self._follow, name=f"devstack-{self.name}-log", daemon=True
        )
        self._reader.start()
        return self

    def _follow(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        with self.log_path.open("ab") as log:
            for raw in self.proc.stdout:
                log.write(raw)
                log.flush()
                if self._ready_re is not None and not self._ready.is_set():
                    match = self._ready_re.search(raw.decode(errors="replace"))
                    if match is not None:
                        self.ready_match = match
                        self._ready.set()
        self.proc.stdout.close()

    def wait_ready_line(self, timeout: float) -> bool:
        """Wait for the ready line (True at once when no pattern was given)."""
        if self._ready_re is None:
            return True
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if not self.running() or time.monotonic() >= deadline:
                return self._ready.is_set()
        return True

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the child wrote, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code (None if never run)."""
        if self.proc is None:
            return None
        code = terminate(self.proc, timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code
