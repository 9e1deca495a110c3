"""Task drivers of the simulated clients: a simulated ``docker`` and a real ``raw_exec``.

``docker`` starts no process. It "starts" after the server's ``docker_start_delay`` and runs
until killed, unless told otherwise through these conventions (documented for users of the
devstack):

============================================  ================================================
task ``Config``                               effect
============================================  ================================================
``image: "devstack/fail..."``                 the image pull fails: a ``Driver Failure`` event,
                                              handled like any failed start (restart policy)
``image: "devstack/exit:<code>"``             the container exits with ``<code>`` right after it
                                              started
``devstack_start_delay: "250ms"``             start delay for this task (Go duration or seconds)
``devstack_fail_start: true``                 same as the ``devstack/fail`` image
``devstack_exit_after: "2s"``                 exit this long after starting...
``devstack_exit_code: 3``                     ...with this code (default 0)
============================================  ================================================

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
from dataclasses import dataclass
from typing import Any, Protocol

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


class _SimulatedContainer:
    def __init__(self, exit_after: float | None, exit_code: int) -> None:
        self._killed = asyncio.Event()
        self._exit_after = exit_after
        self._exit_code = exit_code

    async def wait(self) -> ExitResult:
        if self._exit_after is None:
            await self._killed.wait()
            return ExitResult(137, int(signal.SIGKILL))
        try:
            await asyncio.wait_for(self._killed.wait(), self._exit_after)
        except TimeoutError:
            return ExitResult(self._exit_code)
        return ExitResult(137, int(signal.SIGKILL))

    async def kill(self, sig: str, timeout: float) -> None:
        self._killed.set()


class DockerDriver:
    """Simulated docker: timing and outcome only, no container."""

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
        return _SimulatedContainer(
            None if exit_after is None else _seconds(exit_after, 0.0),
            int(code) if isinstance(code, (int, str)) and str(code).lstrip("-").isdigit() else 0,
        )


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
