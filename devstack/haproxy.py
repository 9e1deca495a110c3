"""The real HAProxy, launched and reloaded the way the Manticore HAProxy hosts run it.

HAProxy is not emulated: routing bugs only show up in the real proxy, so the devstack runs the
``haproxy`` binary itself, in master-worker mode (``haproxy -W -S <master socket> -f <cfg> -p
<pidfile>``). :class:`HAProxy` is the seam the HAProxy renderer (the consul-template role of the
design) is built on: it validates a candidate configuration with ``haproxy -c`` before anything
changes, swaps the file atomically, asks the master for a hitless reload and confirms on the
master CLI that a new worker took over. A configuration that fails validation never reaches the
running proxy (:class:`ConfigInvalid`); a reload the master rejects puts the previous file back,
while the previous workers go on serving (:class:`ReloadFailed`).

Every ``bind`` of the generated configurations is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NamedTuple

from devstack.process import (
    LOOPBACK,
    free_ports,
    pid_alive,
    pid_cmdline,
    signal_pid,
    spawn_options,
    wait_pid_gone,
    wait_until,
)

DEFAULT_PORT = 8080
DEFAULT_STATS_PORT = 8404

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
    """What the master reports on its CLI (``show proc``), plus where things are."""

    running: bool
    master_pid: int | None
    workers: tuple[int, ...] = ()
    old_workers: tuple[int, ...] = ()
    reloads: int = 0
    failed_reloads: int = 0
    version: str = ""
    config_path: Path | None = None
    stats_url: str = ""


@dataclass(frozen=True)
class _MasterView:
    """One ``show proc`` answer of the master CLI."""

    master_pid: int
    reloads: int
    failed: int
    version: str
    workers: tuple[int, ...]
    old: tuple[int, ...]


def haproxy_binary(binary: str = "haproxy") -> str | None:
    """The path of the ``haproxy`` executable (also looked up in the sbin directories)."""
    found = shutil.which(binary)
    if found is None and os.sep not in binary:
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
        found = shutil.which(binary, path=path)
    return found


def base_config(
    *,
    stats_port: int,
    runtime_socket: Path | str | None = None,
    host: str = LOOPBACK,
    hard_stop_after: str = "30s",
) -> str:
    """The ``global``/``defaults`` sections and the stats/health frontend.

    A renderer appends its own frontends and backends to this. ``runtime_socket`` is the
    worker's admin socket (runtime API); its ``expose-fd listeners`` lets a new worker take the
    listening sockets over from the old one, so a reload never refuses a connection.
    """
    lines = ["global", f"    hard-stop-after {hard_stop_after}"]
    if runtime_socket is not None:
        lines.append(f"    stats socket {runtime_socket} mode 600 level admin expose-fd listeners")
    lines += [
        "",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 30s",
        "    timeout server 30s",
        "",
        "frontend stats",
        f"    bind {host}:{stats_port}",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 10s",
        "    monitor-uri /healthz",
        "",
    ]
    return "\n".join(lines)


def bootstrap_config(
    *,
    port: int,
    stats_port: int,
    runtime_socket: Path | str | None = None,
    host: str = LOOPBACK,
) -> str:
    """A complete configuration with no routes yet: the ``mainPort`` frontend answers 503."""
    return base_config(stats_port=stats_port, runtime_socket=runtime_socket, host=host) + "\n".join(
        [
            "frontend main",
            f"    bind {host}:{port}",
            "    default_backend no_route",
            "",
            "backend no_route",
            '    http-request return status 503 content-type text/plain string "no route\\n"',
            "",
        ]
    )


def _parse_show_proc(text: str) -> _MasterView | None:
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
    return _MasterView(master_pid, reloads, failed, version, tuple(workers), tuple(old))


def _unix_command(path: Path, command: str, timeout: float = 5.0) -> str:
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


def _alerts(text: str) -> str:
    """The lines of HAProxy output that explain a failure, without the pid noise."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    alerts = [_LOG_PREFIX.sub("", line) for line in lines if line.startswith("[ALERT]")]
    return "\n".join(alerts or lines)


class HAProxy:
    """A real HAProxy in master-worker mode, owned by this process or attached to by path.

    ``config_dir`` holds ``haproxy.cfg``, the pid file and HAProxy's own log (``haproxy.log``);
    the master and runtime sockets live there too unless the path is too long for a UNIX socket,
    in which case they go to a short directory under the temp dir derived from ``config_dir``, so
    :meth:`attach` finds them again from another process.
    """

    def __init__(
        self,
        config_dir: Path | str,
        *,
        port: int = DEFAULT_PORT,
        stats_port: int = DEFAULT_STATS_PORT,
        host: str = LOOPBACK,
        binary: str = "haproxy",
    ) -> None:
        self.config_dir = Path(config_dir).absolute()
        self.port = port
        self.stats_port = stats_port
        self.host = host
        self.binary = binary
        self.config_path = self.config_dir / CONFIG_NAME
        self.pid_file = self.config_dir / "haproxy.pid"
        self.log_path = self.config_dir / "haproxy.log"
        socket_dir = self.config_dir
        if len(str(socket_dir / "runtime.sock")) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self.config_dir).encode()).hexdigest()[:16]
            socket_dir = Path(tempfile.gettempdir()) / f"devstack-haproxy-{digest}"
        self.socket_dir = socket_dir
        self.master_socket = socket_dir / "master.sock"
        self.runtime_socket = socket_dir / "runtime.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @classmethod
    def attach(
        cls,
        config_dir: Path | str,
        *,
        port: int = DEFAULT_PORT,
        stats_port: int = DEFAULT_STATS_PORT,
        host: str = LOOPBACK,
        binary: str = "haproxy",
    ) -> HAProxy:
        """A handle on an HAProxy another process started with the same ``config_dir``.

        The ports only matter for :meth:`bootstrap_config`, :attr:`url` and the stats URLs;
        status, validation and reloads go through the files and sockets in ``config_dir``.
        """
        proxy = cls(config_dir, port=port, stats_port=stats_port, host=host, binary=binary)
        if proxy.master_pid() is None:
            raise HAProxyError(f"no running HAProxy for {proxy.config_dir}")
        return proxy

    # -- addresses --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The ``mainPort`` frontend of the bootstrap configuration."""
        return f"http://{self.host}:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://{self.host}:{self.stats_port}/stats"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.stats_port}/healthz"

    def base_config(self) -> str:
        """:func:`base_config` with this instance's stats port and runtime socket."""
        return base_config(
            stats_port=self.stats_port, runtime_socket=self.runtime_socket, host=self.host
        )

    def bootstrap_config(self) -> str:
        """:func:`bootstrap_config` with this instance's ports and runtime socket."""
        return bootstrap_config(
            port=self.port,
            stats_port=self.stats_port,
            runtime_socket=self.runtime_socket,
            host=self.host,
        )

    # -- validation -------------------------------------------------------------------------

    def _binary(self) -> str:
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
            return self._check_file(candidate)
        finally:
            candidate.unlink(missing_ok=True)

    def _check_file(self, path: Path) -> Validation:
        try:
            result = subprocess.run(
                [self._binary(), "-c", "-f", str(path)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Validation(False, "haproxy -c did not finish within 30 s")
        output = (result.stdout + result.stderr).replace(str(path), "<candidate>")
        if result.returncode == 0:
            return Validation(True, output.strip() or "Configuration file is valid")
        return Validation(False, _alerts(output) or f"haproxy -c exited with {result.returncode}")

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, cfg_text: str | None = None, *, timeout: float = 10.0) -> HAProxy:
        """Validate ``cfg_text`` (default: :meth:`bootstrap_config`), start the master, wait for
        its first worker. Raises :class:`ConfigInvalid` or :class:`HAProxyError`."""
        with self._lock:
            if self.master_pid() is not None:
                raise HAProxyError(f"HAProxy already runs for {self.config_dir}")
            text = self.bootstrap_config() if cfg_text is None else cfg_text
            checked = self.validate(text)
            if not checked.ok:
                raise ConfigInvalid(checked.message)
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            self._write_config(text)
            for stale in (self.master_socket, self.runtime_socket, self.pid_file):
                stale.unlink(missing_ok=True)
            argv = [
                self._binary(),
                "-W",
                "-S",
                f"{self.master_socket},mode,600",
                "-f",
                str(self.config_path),
                "-p",
                str(self.pid_file),
            ]
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.config_dir,
                    start_new_session=True,
                    **spawn_options(),  # type: ignore[call-overload]
                )
            proc = self._proc

            def started() -> bool:
                return proc.poll() is not None or bool(self._show_proc_or_none(timeout=1.0))

            wait_until(started, timeout)
            state = self._show_proc_or_none(timeout=1.0)
            if proc.poll() is not None or state is None or not state.workers:
                self._kill_owned()
                raise HAProxyError(f"HAProxy did not start:\n{self._log_tail()}")
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

    def __enter__(self) -> HAProxy:
        if self.master_pid() is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reload -----------------------------------------------------------------------------

    def reload(self, cfg_text: str | None = None, *, timeout: float = 10.0) -> HAProxyStatus:
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
            self._write_config(text)
            try:
                self._request_reload(before.master_pid)
                after = self._await_reload(before, timeout)
            except ReloadFailed:
                if previous is not None:
                    self._write_config(previous)
                raise ReloadFailed(
                    "HAProxy rejected the reload; the previous configuration still serves:\n"
                    + _alerts(self._log_since(log_offset))
                ) from None
            return self._status_from(after)

    def _request_reload(self, master_pid: int) -> None:
        try:
            _unix_command(self.master_socket, "reload", timeout=5.0)
        except OSError:
            # The master CLI may drop the connection as it re-executes; SIGUSR2 is the same
            # request and needs no socket.
            if not signal_pid(master_pid, signal.SIGUSR2):
                raise HAProxyError("HAProxy master is not running") from None

    def _await_reload(self, before: _MasterView, timeout: float) -> _MasterView:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self._show_proc_or_none(timeout=1.0)
            if state is not None:
                if state.failed > before.failed:
                    raise ReloadFailed("reload failed")
                new_workers = set(state.workers) - set(before.workers)
                if state.reloads > before.reloads and new_workers:
                    return state
            elif self.master_pid() is None:
                raise ReloadFailed("master exited")
            time.sleep(0.05)
        raise ReloadFailed(f"no new worker within {timeout} s")

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
        return _unix_command(self.master_socket, command, timeout)

    def runtime_command(self, command: str, timeout: float = 5.0) -> str:
        """A command on the current worker's runtime API (``show stat``, ``set server``...)."""
        return _unix_command(self.runtime_socket, command, timeout)

    def status(self) -> HAProxyStatus:
        """The processes the master reports; ``running`` is False when no master runs."""
        pid = self.master_pid()
        if pid is None:
            return HAProxyStatus(
                running=False, master_pid=None, config_path=self.config_path, stats_url=""
            )
        state = self._show_proc_or_none(timeout=2.0)
        if state is None:
            return HAProxyStatus(
                running=True, master_pid=pid, config_path=self.config_path, stats_url=""
            )
        return self._status_from(state)

    def _status_from(self, state: _MasterView) -> HAProxyStatus:
        return HAProxyStatus(
            running=True,
            master_pid=state.master_pid,
            workers=state.workers,
            old_workers=state.old,
            reloads=state.reloads,
            failed_reloads=state.failed,
            version=state.version,
            config_path=self.config_path,
            stats_url=self.stats_url,
        )

    def _show_proc(self, timeout: float) -> _MasterView:
        try:
            state = _parse_show_proc(self.master_command("show proc", timeout))
        except OSError as exc:
            raise HAProxyError(f"HAProxy master CLI {self.master_socket}: {exc}") from exc
        if state is None:
            raise HAProxyError("HAProxy master CLI answered without a master line")
        return state

    def _show_proc_or_none(self, timeout: float) -> _MasterView | None:
        try:
            return self._show_proc(timeout)
        except HAProxyError:
            return None

    # -- files ------------------------------------------------------------------------------

    def config_text(self) -> str:
        """The configuration the master loads on its next (re)start."""
        return self.config_path.read_text()

    def _write_config(self, text: str) -> None:
        # Written beside the target and renamed: the master never reads a half-written file.
        self.config_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="haproxy.", suffix=".cfg.new", dir=self.config_dir)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(name, self.config_path)

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

    def _log_tail(self, lines: int = 20) -> str:
        return "\n".join(self._log_since(0).splitlines()[-lines:])


# -- `devstack haproxy` ---------------------------------------------------------------------


def default_config_dir() -> Path:
    home = os.environ.get("DEVSTACK_HOME")
    return (Path(home) if home else Path.cwd() / ".devstack") / "haproxy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"mainPort HTTP frontend on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--stats-port",
        type=int,
        default=DEFAULT_STATS_PORT,
        help=f"stats (/stats) and health (/healthz) frontend (default {DEFAULT_STATS_PORT})",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="where haproxy.cfg, the pid file, the sockets and the log live "
        "(default $DEVSTACK_HOME/haproxy or ./.devstack/haproxy)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="start from this configuration instead of the bootstrap one; SIGHUP reloads it",
    )
    parser.add_argument("--binary", default="haproxy", help="the haproxy executable")


def run(args: argparse.Namespace) -> int:
    """Run HAProxy in the foreground until SIGTERM/SIGINT; SIGHUP reloads ``--config``."""
    port, stats_port = args.port, args.stats_port
    if port == 0 or stats_port == 0:
        chosen = iter(free_ports(2))
        port = port or next(chosen)
        stats_port = stats_port or next(chosen)
    config_dir = args.config_dir or default_config_dir()
    proxy = HAProxy(config_dir, port=port, stats_port=stats_port, binary=args.binary)
    stop = threading.Event()
    reload_requested = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_requested.set()

    # Handlers first: a signal that arrives while HAProxy starts must not kill us and orphan it.
    previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    try:
        try:
            proxy.start(args.config.read_text() if args.config else None)
        except (HAProxyError, OSError) as exc:
            print(f"devstack haproxy: {exc}", file=sys.stderr, flush=True)
            return 1
        print(
            f"haproxy ready on {proxy.url} (stats {proxy.stats_url}, "
            f"master socket {proxy.master_socket}, config {proxy.config_path})",
            flush=True,
        )
        while not stop.wait(0.2):
            if proxy.master_pid() is None:
                print("haproxy master exited unexpectedly", file=sys.stderr, flush=True)
                return 1
            if reload_requested.is_set():
                reload_requested.clear()
                source = args.config or proxy.config_path
                try:
                    state = proxy.reload(source.read_text())
                    print(f"haproxy reloaded (workers {list(state.workers)})", flush=True)
                except (HAProxyError, OSError) as exc:
                    print(f"haproxy reload refused: {exc}", file=sys.stderr, flush=True)
    finally:
        proxy.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("haproxy stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack haproxy", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
