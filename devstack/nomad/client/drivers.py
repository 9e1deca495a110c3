"""Task drivers of the simulated clients: a simulated ``docker`` and a real ``raw_exec``.

``docker`` starts no process. It "starts" after the server's ``docker_start_delay`` and runs
until killed, and while it runs it *serves its ports* as a healthy container does: every host
port mapped to it answers HTTP 200 (any method, any path) and accepts TCP, so Consul's real
HTTP and TCP checks pass. The ports it serves are its task-level network ports, the group ports
named in its ``config.ports``, and, for the group's first docker task without ``ports``, the
group ports no other task names. Listeners bind the allocation's host address (containers of
simulated nodes that share loopback and a static port share one listener) and close when the
task stops. These
conventions, documented for users of the devstack, change what it does:

==============================================  ==============================================
task ``Config``                                 effect
==============================================  ==============================================
``image: "devstack/fail..."``                   the image pull fails: a ``Driver Failure`` event,
                                                handled like any failed start (restart policy)
``image: "devstack/exit:<code>"``               the container exits with ``<code>`` right after
                                                it started
``devstack_start_delay: "250ms"``               start delay for this task (Go duration or s)
``devstack_fail_start: true``                   same as the ``devstack/fail`` image
``devstack_exit_after: "2s"``                   exit (crash) this long after starting...
``devstack_exit_code: 3``                       ...with this code (default 0)
``devstack_unhealthy: true``                    answer HTTP 500 on every port (TCP still
                                                accepts); ``"refuse"``: open no port at all, so
                                                HTTP and TCP checks are refused
``devstack_http_status: 503``                   answer this HTTP status instead of 200
``devstack_listen_delay: "5s"``                 running, but ports open only this long after
                                                the start (an application slow to come up)
``devstack_stop_delay: "2s"``                   a stop takes this long (bounded by the kill
                                                timeout), as a container slow to shut down
==============================================  ==============================================

A node's meta ``devstack_unhealthy`` (``"true"`` or ``"refuse"``) applies the same to every
docker task on that node, for faults that follow a host rather than a job.

``raw_exec`` runs ``config.command`` with ``config.args`` in its own process group (so stop kills
its children too), with the task directory as working directory and stdout/stderr in
``alloc/logs/<task>.stdout.0`` / ``.stderr.0`` as Nomad lays them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from devstack.nomad.util import parse_go_duration


class DriverError(Exception):
    """The driver could not start the task (a ``Driver Failure`` event)."""


@dataclass
class ExitResult:
    exit_code: int
    signal: int = 0

    @property
    def successful(self) -> bool:
        return self.exit_code == 0 and self.signal == 0


@dataclass
class TaskContext:
    alloc_id: str
    task_name: str
    config: dict[str, Any]
    env: dict[str, str]
    task_dir: str
    logs_dir: str
    start_delay: float
    # Host (ip, port) pairs a simulated container serves; the node's meta for fault knobs.
    ports: list[tuple[str, int]] = field(default_factory=list)
    node_meta: dict[str, str] = field(default_factory=dict)


class TaskHandle(Protocol):
    async def wait(self) -> ExitResult: ...

    async def kill(self, sig: str, timeout: float) -> None: ...


class Driver(Protocol):
    async def start(self, ctx: TaskContext) -> TaskHandle: ...


def _seconds(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return parse_go_duration(str(value)) / 1e9
    except ValueError:
        return default


_REASONS = {200: "OK", 500: "Internal Server Error", 503: "Service Unavailable"}


class _Responder(asyncio.Protocol):
    """One connection to a simulated container: answer the first HTTP request, then close.

    A TCP check connects and leaves; that is an accept, nothing more to do. One small class
    serves every port of every container, so a thousand containers cost sockets, not threads.
    """

    __slots__ = ("_buffer", "_response", "_transport")

    def __init__(self, response: bytes) -> None:
        self._response = response
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both have write/close.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n\r\n" in self._buffer or len(self._buffer) > 16384:
            assert self._transport is not None
            self._transport.write(self._response)
            self._transport.close()


def _http_response(status: int) -> bytes:
    body = b"ok\n" if status < 400 else b"unhealthy\n"
    reason = _REASONS.get(status, "Status")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class _Listener:
    """One listening socket, shared by the simulated containers of one loop that use its port.

    Simulated nodes share loopback, so two nodes may hold the same static port; the first
    container still running answers. No ``SO_REUSEPORT``: another process (another devstack)
    on the same port is a collision, reported as docker reports it.
    """

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.owners: list[_SimulatedContainer] = []
        # Set once the socket is bound (or failed); containers starting meanwhile wait on it.
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def respond(self) -> _Responder:
        return _Responder(self.owners[0].response if self.owners else _http_response(503))


_LISTENERS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, int], _Listener]
] = weakref.WeakKeyDictionary()


class _SimulatedContainer:
    def __init__(self, exit_after: float | None, exit_code: int, stop_delay: float = 0) -> None:
        self._stop_delay = stop_delay
        self._killed = asyncio.Event()
        self._exit_after = exit_after
        self._exit_code = exit_code
        self._ports: list[tuple[str, int]] = []
        self._opener: asyncio.Task[None] | None = None
        self.response = _http_response(200)

    async def listen(self, ports: list[tuple[str, int]], status: int, delay: float) -> None:
        """Serve ``ports`` (after ``delay``); a port taken by another process fails the start."""
        self.response = _http_response(status)
        if delay > 0:
            self._opener = asyncio.get_running_loop().create_task(self._open_later(ports, delay))
            return
        await self._open(ports)

    async def _open_later(self, ports: list[tuple[str, int]], delay: float) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(DriverError):
            await self._open(ports)

    async def _open(self, ports: list[tuple[str, int]]) -> None:
        loop = asyncio.get_running_loop()
        table = _LISTENERS.setdefault(loop, {})
        for ip, port in ports:
            key = (ip or "127.0.0.1", port)
            entry = table.get(key)
            if entry is None:
                entry = table[key] = _Listener()
                try:
                    entry.server = await loop.create_server(
                        entry.respond, host=key[0], port=port, backlog=64
                    )
                except OSError as exc:
                    del table[key]
                    entry.opened.set_exception(exc)
                else:
                    entry.opened.set_result(None)
            try:
                await asyncio.shield(entry.opened)
            except OSError as exc:
                self.close()
                raise DriverError(
                    "Failed to start container: API error (500): driver failed programming "
                    f"external connectivity: Bind for {ip}:{port} failed: port is already "
                    f"allocated ({exc.strerror})"
                ) from exc
            entry.owners.append(self)
            self._ports.append(key)

    def close(self) -> None:
        if self._opener is not None:
            self._opener.cancel()
        with contextlib.suppress(RuntimeError):
            table = _LISTENERS.get(asyncio.get_running_loop(), {})
            for key in self._ports:
                entry = table.get(key)
                if entry is None:
                    continue
                if self in entry.owners:
                    entry.owners.remove(self)
                if not entry.owners and entry.opened.done():
                    if entry.server is not None:
                        entry.server.close()
                    del table[key]
        self._ports.clear()

    async def wait(self) -> ExitResult:
        try:
            if self._exit_after is None:
                await self._killed.wait()
                return ExitResult(137, int(signal.SIGKILL))
            try:
                await asyncio.wait_for(self._killed.wait(), self._exit_after)
            except TimeoutError:
                return ExitResult(self._exit_code)
            return ExitResult(137, int(signal.SIGKILL))
        finally:
            self.close()

    async def kill(self, sig: str, timeout: float) -> None:
        if self._stop_delay > 0:
            await asyncio.sleep(min(self._stop_delay, timeout))
        self.close()
        self._killed.set()


def _health(cfg: dict[str, Any], node_meta: dict[str, str]) -> tuple[int, bool]:
    """(HTTP status to answer, whether to open ports at all) from task config and node meta."""
    unhealthy = cfg.get("devstack_unhealthy", node_meta.get("devstack_unhealthy"))
    if isinstance(unhealthy, str) and unhealthy.lower() == "refuse":
        return 0, False
    status = 200
    if unhealthy is True or (isinstance(unhealthy, str) and unhealthy.lower() == "true"):
        status = 500
    code = cfg.get("devstack_http_status")
    if isinstance(code, (int, str)) and str(code).isdigit() and 100 <= int(code) <= 599:
        status = int(code)
    return status, True


class DockerDriver:
    """Simulated docker: timing, outcome and listening ports; no container."""

    async def start(self, ctx: TaskContext) -> TaskHandle:
        cfg = ctx.config
        image = str(cfg.get("image", ""))
        await asyncio.sleep(_seconds(cfg.get("devstack_start_delay"), ctx.start_delay))
        repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        if repo.startswith("devstack/fail") or cfg.get("devstack_fail_start"):
            raise DriverError(
                f"Failed to pull `{image}`: API error (404): pull access denied for {repo}, "
                "repository does not exist or may require 'docker login'"
            )
        if repo == "devstack/exit":
            tag = image.rsplit(":", 1)[-1] if ":" in image else "0"
            return _SimulatedContainer(0.0, int(tag) if tag.lstrip("-").isdigit() else 0)
        exit_after = cfg.get("devstack_exit_after")
        code = cfg.get("devstack_exit_code", 0)
        container = _SimulatedContainer(
            None if exit_after is None else _seconds(exit_after, 0.0),
            int(code) if isinstance(code, (int, str)) and str(code).lstrip("-").isdigit() else 0,
            _seconds(cfg.get("devstack_stop_delay"), 0.0),
        )
        status, serve = _health(cfg, ctx.node_meta)
        if serve and ctx.ports:
            delay = _seconds(cfg.get("devstack_listen_delay"), 0.0)
            await container.listen(ctx.ports, status, delay)
        return container


class _Process:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def wait(self) -> ExitResult:
        code = await self.proc.wait()
        self._reap_group()
        if code < 0:
            return ExitResult(128 - code, -code)
        return ExitResult(code)

    def _reap_group(self) -> None:
        # The task's children share its process group; none may outlive the task.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def kill(self, sig: str, timeout: float) -> None:
        signum = getattr(signal, sig or "SIGTERM", signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout)
        self._reap_group()
        with contextlib.suppress(ProcessLookupError):
            await self.proc.wait()


def _open_logs(logs_dir: str, task: str) -> tuple[Any, Any]:
    # Nomad's layout: alloc/logs/<task>.stdout.0 and .stderr.0 (tiny local files).
    os.makedirs(logs_dir, exist_ok=True)
    out = open(os.path.join(logs_dir, f"{task}.stdout.0"), "ab")  # noqa: SIM115
    err = open(os.path.join(logs_dir, f"{task}.stderr.0"), "ab")  # noqa: SIM115
    return out, err


class RawExecDriver:
    """Runs the command for real, as the agent's user, like Nomad's raw_exec."""

    async def start(self, ctx: TaskContext) -> TaskHandle:
        command = ctx.config.get("command")
        if not isinstance(command, str) or not command:
            raise DriverError("failed to parse config: missing required field command")
        args = ctx.config.get("args") or []
        if not isinstance(args, list):
            raise DriverError("failed to parse config: args must be a list of strings")
        out, err = _open_logs(ctx.logs_dir, ctx.task_name)
        with out, err:
            try:
                proc = await asyncio.create_subprocess_exec(
                    command,
                    *[str(a) for a in args],
                    env=ctx.env,
                    cwd=ctx.task_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as exc:
                raise DriverError(
                    "failed to launch command with executor: rpc error: code = Unknown desc = "
                    f"{exc.strerror or exc}: {command}"
                ) from exc
        return _Process(proc)


DRIVERS: dict[str, Driver] = {"docker": DockerDriver(), "raw_exec": RawExecDriver()}
