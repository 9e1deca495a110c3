"""The HAProxy process: validate a configuration, start it, reload it hitlessly, stop it.

Production HAProxy hosts run the real ``haproxy`` in master-worker mode (``haproxy -W -S
<master socket> -f <cfg> -p <pidfile>``); the haproxy controller and the devstack both drive it
through :class:`HAProxyProcess`, so "how to reload" exists once. A candidate configuration is
checked with ``haproxy -c`` before anything changes (:class:`ConfigInvalid`: nothing was touched),
written beside the live file and renamed over it, and the master is asked for a reload on its CLI;
the reload counts only once ``show proc`` names a new worker. A reload the master rejects puts the
previous file back while the previous workers go on serving (:class:`ReloadFailed`).

Every call blocks (subprocesses, UNIX sockets, short polls): async callers run them in a worker
thread. The master is started in its own session and, unless asked, does not die with the
process that started it: routing must outlive a restart of its controller.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Self

CONFIG_NAME = "haproxy.cfg"

# sun_path holds 108 bytes and HAProxy binds "<path>.<pid>.tmp" before renaming it into place.
_MAX_SOCKET_PATH = 90


class HAProxyError(RuntimeError):
    """HAProxy could not be started, reloaded or reached."""


class ConfigInvalid(HAProxyError):
    """``haproxy -c`` rejected a configuration; nothing was changed."""

    def __init__(self, message: str) -> None:
        super().__init__(f"invalid HAProxy configuration: {message}")
        self.message = message


class ReloadFailed(HAProxyError):
    """The master did not take a new configuration; the previous one still serves."""


class Validation(NamedTuple):
    """Outcome of ``haproxy -c``: unpacks as ``ok, message``."""

    ok: bool
    message: str


@dataclass(frozen=True)
class HAProxyStatus:
    """What the master reports on its CLI (``show proc``), plus where the configuration is."""

    running: bool
    master_pid: int | None
    workers: tuple[int, ...] = ()
    old_workers: tuple[int, ...] = ()
    reloads: int = 0
    failed_reloads: int = 0
    version: str = ""
    config_path: Path | None = None


@dataclass(frozen=True)
class MasterView:
    """One ``show proc`` answer of the master CLI."""

    master_pid: int
    reloads: int
    failed: int
    version: str
    workers: tuple[int, ...]
    old: tuple[int, ...]


# -- processes ------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        # The state field follows the parenthesised command name, which may hold spaces.
        if stat.read_text().rpartition(")")[2].split()[0] == "Z":
            return False
    return True


def pid_cmdline(pid: int) -> str:
    """The command line of ``pid`` (Linux ``/proc``), or ``""`` when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def signal_pid(pid: int, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to ``pid``; False when the process is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
        raise
    return True


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` no longer runs (reaping it when it is our child)."""

    def gone() -> bool:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return not pid_alive(pid)

    return wait_until(gone, timeout, interval=0.05)


def haproxy_binary(binary: str = "haproxy") -> str | None:
    """The path of the ``haproxy`` executable (also looked up in the sbin directories)."""
    found = shutil.which(binary)
    if found is None and os.sep not in binary:
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
        found = shutil.which(binary, path=path)
    return found


# -- CLIs -----------------------------------------------------------------------------------


def parse_show_proc(text: str) -> MasterView | None:
    """The master CLI's ``show proc`` table: master pid, reload counts, current and old workers."""
    master_pid: int | None = None
    reloads = failed = 0
    version = ""
    workers: list[int] = []
    old: list[int] = []
    section = "master"
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if "old workers" in stripped:
                section = "old"
            elif "workers" in stripped:
                section = "workers"
            elif "programs" in stripped:
                section = "programs"
            continue
        fields = stripped.split()
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        pid = int(fields[0])
        if fields[1] == "master":
            master_pid = pid
            reloads = int(fields[2]) if fields[2].isdigit() else 0
            match = re.search(r"\[failed:\s*(\d+)\]", stripped)
            failed = int(match.group(1)) if match else 0
            version = fields[-1]
        elif fields[1] == "worker":
            (old if section == "old" else workers).append(pid)
    if master_pid is None:
        return None
    return MasterView(master_pid, reloads, failed, version, tuple(workers), tuple(old))


def unix_command(path: Path, command: str, timeout: float = 5.0) -> str:
    """One command on a HAProxy CLI socket (non-interactive: the answer ends at EOF)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


_LOG_PREFIX = re.compile(r"^\[(?P<level>[A-Z]+)\]\s*\(\d+\)\s*:\s*(?:config\s*:\s*)?")


def alerts(text: str) -> str:
    """The lines of HAProxy output that explain a failure, without the pid noise."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = [_LOG_PREFIX.sub("", line) for line in lines if line.startswith("[ALERT]")]
    return "\n".join(found or lines)


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write beside ``path`` and rename over it: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


class HAProxyProcess:
    """A real HAProxy in master-worker mode, owned by this process or attached to by path.

    ``config_dir`` holds ``haproxy.cfg``, the pid file and HAProxy's own log (``haproxy.log``);
    the master and runtime sockets live there too unless the path is too long for a UNIX socket,
    in which case they go to a short directory under the temp dir derived from ``config_dir``, so
    another process (a restarted controller, ``devstack``) finds them again from the same path.
    ``die_with_parent`` ties the master to the starting thread's life (tests, the devstack).
    """

    def __init__(
        self,
        config_dir: Path | str,
        *,
        binary: str = "haproxy",
        die_with_parent: bool = False,
    ) -> None:
        self.config_dir = Path(config_dir).absolute()
        self.binary = binary
        self.die_with_parent = die_with_parent
        self.config_path = self.config_dir / CONFIG_NAME
        self.pid_file = self.config_dir / "haproxy.pid"
        self.log_path = self.config_dir / "haproxy.log"
        socket_dir = self.config_dir
        if len(str(socket_dir / "runtime.sock")) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self.config_dir).encode()).hexdigest()[:16]
            socket_dir = Path(tempfile.gettempdir()) / f"haproxy-{digest}"
        self.socket_dir = socket_dir
        self.master_socket = socket_dir / "master.sock"
        self.runtime_socket = socket_dir / "runtime.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # -- validation -------------------------------------------------------------------------

    def executable(self) -> str:
        found = haproxy_binary(self.binary)
        if found is None:
            raise HAProxyError(
                f"{self.binary!r} not found; install it (Debian: apt-get install -y haproxy)"
            )
        return found

    def validate(self, cfg_text: str) -> Validation:
        """Check ``cfg_text`` with ``haproxy -c``, leaving the running proxy and its file alone."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="haproxy.", suffix=".cfg.check", dir=self.config_dir)
        candidate = Path(name)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(cfg_text)
            return self.validate_file(candidate)
        finally:
            candidate.unlink(missing_ok=True)

    def validate_file(self, path: Path) -> Validation:
        try:
            result = subprocess.run(
                [self.executable(), "-c", "-f", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Validation(False, "haproxy -c did not finish within 60 s")
        output = (result.stdout + result.stderr).replace(str(path), "<candidate>")
        if result.returncode == 0:
            return Validation(True, output.strip() or "Configuration file is valid")
        return Validation(False, alerts(output) or f"haproxy -c exited with {result.returncode}")

    # -- lifecycle --------------------------------------------------------------------------

    def _spawn_options(self) -> dict[str, Any]:
        """Extra ``Popen`` options; the devstack ties its HAProxy to the launching process."""
        return {}

    def start(self, cfg_text: str, *, timeout: float = 15.0) -> Self:
        """Validate ``cfg_text``, install it, start the master and wait for its first worker.

        Raises :class:`ConfigInvalid` (nothing written) or :class:`HAProxyError`.
        """
        with self._lock:
            if self.master_pid() is not None:
                raise HAProxyError(f"HAProxy already runs for {self.config_dir}")
            checked = self.validate(cfg_text)
            if not checked.ok:
                raise ConfigInvalid(checked.message)
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(self.config_path, cfg_text)
            for stale in (self.master_socket, self.runtime_socket, self.pid_file):
                stale.unlink(missing_ok=True)
            log_offset = self._log_size()
            argv = [
                self.executable(),
                "-W",
                "-S",
                f"{self.master_socket},mode,600",
                "-f",
                str(self.config_path),
                "-p",
                str(self.pid_file),
            ]
            with self.log_path.open("ab") as log:
                if self.die_with_parent:
                    self._proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=self.config_dir,
                        start_new_session=True,
                        **self._spawn_options(),
                    )
                else:
                    # Detached: a short-lived shell backgrounds the master and exits, so HAProxy
                    # is nobody's child here and outlives this process (a restarted controller
                    # attaches to it through the pid file and the sockets).
                    launcher = subprocess.Popen(
                        ["/bin/sh", "-c", '"$0" "$@" &', *argv],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=self.config_dir,
                        start_new_session=True,
                    )
                    launcher.wait(10)
            proc = self._proc

            def exited() -> bool:
                if proc is not None:
                    return proc.poll() is not None
                return "[ALERT]" in self._log_since(log_offset) and self.master_pid() is None

            def started() -> bool:
                return exited() or bool(self._show_proc_or_none(timeout=1.0))

            wait_until(started, timeout)
            state = self._show_proc_or_none(timeout=1.0)
            if exited() or state is None or not state.workers:
                self._kill_owned()
                self.stop()
                raise HAProxyError(f"HAProxy did not start:\n{alerts(self._log_since(log_offset))}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the master and its workers (SIGTERM, then SIGKILL); idempotent."""
        with self._lock:
            workers: tuple[int, ...] = ()
            state = self._show_proc_or_none(timeout=1.0)
            if state is not None:
                workers = state.workers + state.old
            pid = self.master_pid()
            if pid is not None:
                signal_pid(pid, signal.SIGTERM)
                if not self._wait_gone(pid, timeout):
                    signal_pid(pid, signal.SIGKILL)
                    self._wait_gone(pid, 5.0)
            for worker in workers:
                if pid_alive(worker):
                    signal_pid(worker, signal.SIGKILL)
                    wait_pid_gone(worker, 5.0)
            self._proc = None
            for leftover in (self.master_socket, self.runtime_socket, self.pid_file):
                leftover.unlink(missing_ok=True)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        return wait_pid_gone(pid, timeout)

    def _kill_owned(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(5)
            self._proc = None

    # -- reload -----------------------------------------------------------------------------

    def reload(self, cfg_text: str | None = None, *, timeout: float = 15.0) -> HAProxyStatus:
        """Validate and install ``cfg_text`` (default: reload the file as it is), then reload.

        Returns the status once a new worker serves. Raises :class:`ConfigInvalid` when
        ``haproxy -c`` rejects the text (nothing changed at all), :class:`ReloadFailed` when the
        master does not take it (the previous file is put back; the previous workers serve on).
        """
        with self._lock:
            before = self._show_proc(timeout=2.0)
            previous = self.config_path.read_text() if self.config_path.exists() else None
            text = previous if cfg_text is None else cfg_text
            if text is None:
                raise HAProxyError(f"{self.config_path} does not exist")
            checked = self.validate(text)
            if not checked.ok:
                raise ConfigInvalid(checked.message)
            log_offset = self._log_size()
            write_atomically(self.config_path, text)
            try:
                self._request_reload(before.master_pid)
                after = self._await_reload(before, timeout)
            except ReloadFailed:
                if previous is not None:
                    write_atomically(self.config_path, previous)
                raise ReloadFailed(
                    "HAProxy rejected the reload; the previous configuration still serves:\n"
                    + alerts(self._log_since(log_offset))
                ) from None
            return self._status_from(after)

    def _request_reload(self, master_pid: int) -> None:
        try:
            unix_command(self.master_socket, "reload", timeout=5.0)
        except OSError:
            # The master CLI may drop the connection as it re-executes; SIGUSR2 is the same
            # request and needs no socket.
            if not signal_pid(master_pid, signal.SIGUSR2):
                raise HAProxyError("HAProxy master is not running") from None

    def _await_reload(self, before: MasterView, timeout: float) -> MasterView:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self._show_proc_or_none(timeout=1.0)
            if state is not None:
                if state.failed > before.failed:
                    raise ReloadFailed("reload failed")
                new_workers = set(state.workers) - set(before.workers)
                if state.reloads > before.reloads and new_workers:
                    return state
            elif not self._alive(before.master_pid):
                # Only the process itself says so: while the master re-executes, its CLI is
                # down and its pid file is unlinked and written again.
                raise ReloadFailed("master exited")
            time.sleep(0.02)
        raise ReloadFailed(f"no new worker within {timeout} s")

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return pid_alive(pid)

    # -- status and CLIs --------------------------------------------------------------------

    def master_pid(self) -> int | None:
        """The master's pid while it runs (our child, or read from the pid file)."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        # A stale pid file may name a recycled pid: only an haproxy process counts.
        cmdline = pid_cmdline(pid)
        if not pid_alive(pid) or (cmdline and "haproxy" not in cmdline):
            return None
        return pid

    def master_command(self, command: str, timeout: float = 5.0) -> str:
        """A command on the master CLI (``show proc``, ``@1 show info``, ...)."""
        return unix_command(self.master_socket, command, timeout)

    def runtime_command(self, command: str, timeout: float = 5.0) -> str:
        """A command on the current worker's runtime API (``show stat``, ``set server``...)."""
        return unix_command(self.runtime_socket, command, timeout)

    def status(self) -> HAProxyStatus:
        """The processes the master reports; ``running`` is False when no master runs."""
        pid = self.master_pid()
        if pid is None:
            return HAProxyStatus(running=False, master_pid=None, config_path=self.config_path)
        state = self._show_proc_or_none(timeout=2.0)
        if state is None:
            return HAProxyStatus(running=True, master_pid=pid, config_path=self.config_path)
        return self._status_from(state)

    def _status_from(self, state: MasterView) -> HAProxyStatus:
        return HAProxyStatus(
            running=True,
            master_pid=state.master_pid,
            workers=state.workers,
            old_workers=state.old,
            reloads=state.reloads,
            failed_reloads=state.failed,
            version=state.version,
            config_path=self.config_path,
        )

    def _show_proc(self, timeout: float) -> MasterView:
        try:
            state = parse_show_proc(self.master_command("show proc", timeout))
        except OSError as exc:
            raise HAProxyError(f"HAProxy master CLI {self.master_socket}: {exc}") from exc
        if state is None:
            raise HAProxyError("HAProxy master CLI answered without a master line")
        return state

    def _show_proc_or_none(self, timeout: float) -> MasterView | None:
        try:
            return self._show_proc(timeout)
        except HAProxyError:
            return None

    # -- files ------------------------------------------------------------------------------

    def config_text(self) -> str:
        """The configuration the master loads on its next (re)start."""
        return self.config_path.read_text()

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""
