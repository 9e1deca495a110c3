"""Agent-local health checks, really executed: TTL timers, HTTP requests, TCP connects.

A real agent probes each registered HTTP/TCP target on its interval and reports the result to the
catalog; a TTL check turns critical when nobody refreshes it. Controllers depend on exactly this
(an allocation is "up" when its checks pass), so the emulator runs the probes for real against the
targets, with Consul's status mapping (2xx passing, 429 warning, anything else critical), its
output texts, ``SuccessBeforePassing``/``FailuresBeforeCritical`` and
``DeregisterCriticalServiceAfter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from devstack.consul.catalog import delete_service, set_check_status
from devstack.consul.encoding import CI, format_duration, parse_duration
from devstack.consul.errors import bad_request
from devstack.consul.state import State

MIN_INTERVAL = 1.0
DEFAULT_TIMEOUT = 10.0
OUTPUT_MAX = 4096
REAP_EVERY = 1.0


@dataclass(slots=True)
class CheckDefinition:
    id: str
    name: str
    kind: str  # ttl | http | tcp | grpc | script | docker | alias | h2ping | udp
    service_id: str = ""
    notes: str = ""
    status: str = ""
    ttl: float = 0.0
    interval: float = 0.0
    timeout: float = DEFAULT_TIMEOUT
    http: str = ""
    method: str = "GET"
    header: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    tcp: str = ""
    grpc: str = ""
    tls_skip_verify: bool = False
    deregister_after: float = 0.0
    success_before_passing: int = 0
    failures_before_critical: int = 0
    interval_text: str = ""
    timeout_text: str = ""

    @property
    def type_name(self) -> str:
        return self.kind


def _duration(value: Any, field_name: str) -> tuple[float, str]:
    if value in (None, "", 0):
        return 0.0, ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Go decodes a bare number as nanoseconds.
        seconds = float(value) / 1e9
        return seconds, format_duration(seconds)
    if not isinstance(value, str):
        raise bad_request(f"Request decode failed: invalid {field_name}")
    try:
        return parse_duration(value), value
    except ValueError as exc:
        raise bad_request(f"Request decode failed: {field_name}: {exc}") from exc


def parse_definition(body: CI, default_id: str, default_name: str) -> CheckDefinition:
    """Decode one check of an agent registration; raise 400 with Consul-like texts."""
    name = body.text("Name") or default_name
    cid = body.text("CheckID", "ID") or default_id or name
    interval, interval_text = _duration(body.get("Interval"), "Interval")
    timeout, timeout_text = _duration(body.get("Timeout"), "Timeout")
    ttl, _ = _duration(body.get("TTL"), "TTL")
    deregister, _ = _duration(
        body.get("DeregisterCriticalServiceAfter"), "DeregisterCriticalServiceAfter"
    )
    defn = CheckDefinition(
        id=cid,
        name=name,
        kind="",
        service_id=body.text("ServiceID"),
        notes=body.text("Notes"),
        status=body.text("Status"),
        ttl=ttl,
        interval=max(interval, MIN_INTERVAL) if interval else 0.0,
        timeout=timeout or DEFAULT_TIMEOUT,
        http=body.text("HTTP"),
        method=body.text("Method") or "GET",
        body=body.text("Body"),
        tcp=body.text("TCP"),
        grpc=body.text("GRPC"),
        tls_skip_verify=bool(body.get("TLSSkipVerify", default=False)),
        deregister_after=deregister,
        success_before_passing=int(body.get("SuccessBeforePassing", default=0) or 0),
        failures_before_critical=int(body.get("FailuresBeforeCritical", default=0) or 0),
        interval_text=interval_text,
        timeout_text=timeout_text,
    )
    header = body.get("Header")
    if header is not None:
        if not isinstance(header, dict):
            raise bad_request("Request decode failed: Header must be a map of lists")
        defn.header = {
            k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in header.items()
        }
    if defn.status not in ("", "passing", "warning", "critical"):
        raise bad_request(
            f"Status for checks must 'passing', 'warning', 'critical', got {defn.status!r}"
        )
    _validate(body, defn, interval, ttl)
    if ttl:
        defn.kind = "ttl"
    elif defn.http:
        defn.kind = "http"
    elif defn.tcp:
        defn.kind = "tcp"
    elif defn.grpc:
        defn.kind = "grpc"
    elif body.get("Args", "ScriptArgs"):
        defn.kind = "docker" if body.get("DockerContainerID") else "script"
    elif body.get("AliasService", "AliasNode"):
        defn.kind = "alias"
    elif body.get("H2PING"):
        defn.kind = "h2ping"
    elif body.get("UDP"):
        defn.kind = "udp"
    else:
        defn.kind = "os_service"
    return defn


def _validate(body: CI, defn: CheckDefinition, interval: float, ttl: float) -> None:
    """``CheckType.Validate`` with the ``Invalid check:`` prefix the agent's handlers add."""
    interval_check = bool(
        body.get("Args", "ScriptArgs")
        or defn.http
        or defn.tcp
        or body.get("UDP")
        or defn.grpc
        or body.get("H2PING")
        or body.get("OSService")
    )
    alias = bool(body.get("AliasService", "AliasNode"))
    text = ""
    if interval > 0 and ttl > 0:
        text = "Interval and TTL cannot both be specified"
    elif interval_check and interval <= 0:
        text = "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
    elif interval_check and alias:
        text = "Interval cannot be set for Alias checks"
    elif alias and ttl > 0:
        text = "TTL must be not be set for Alias checks"
    elif not interval_check and not alias and ttl <= 0:
        text = "TTL must be > 0 for TTL checks"
    elif int(body.get("FailuresBeforeWarning", default=0) or 0) > defn.failures_before_critical:
        text = "FailuresBeforeWarning can't be higher than FailuresBeforeCritical"
    if text:
        raise bad_request(f"Invalid check: {text}")


def _go_errno_text(exc: OSError | None) -> str:
    """Go's ``syscall.Errno`` text (``connection refused``), not Python's wrapping of it."""
    if exc is not None and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc).lower() if exc is not None else "unknown error"


class CheckRunner:
    """Runs the probes of the agent's local checks as tasks on the server loop."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.definitions: dict[str, CheckDefinition] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ttl_timers: dict[str, asyncio.TimerHandle] = {}
        self._streaks: dict[str, tuple[bool, int]] = {}
        self.critical_since: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._reaper: asyncio.Task[None] | None = None
        state.check_removed.append(self._removed)

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_loop())

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        if self._reaper is not None:
            tasks.append(self._reaper)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for timer in self._ttl_timers.values():
            timer.cancel()
        self._ttl_timers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- lifecycle of one check ----------------------------------------------------------------

    def add(self, defn: CheckDefinition) -> None:
        self.stop(defn.id)
        self.definitions[defn.id] = defn
        if defn.kind == "ttl":
            self.refresh_ttl(defn.id)
        elif defn.kind in ("http", "tcp", "grpc"):
            self._tasks[defn.id] = asyncio.create_task(self._probe_loop(defn))

    def _removed(self, node: str, check_id: str) -> None:
        if node == self.state.node_name:
            self.stop(check_id)

    def stop(self, check_id: str) -> None:
        self.definitions.pop(check_id, None)
        self._streaks.pop(check_id, None)
        self.critical_since.pop(check_id, None)
        task = self._tasks.pop(check_id, None)
        if task is not None:
            task.cancel()
        timer = self._ttl_timers.pop(check_id, None)
        if timer is not None:
            timer.cancel()

    def refresh_ttl(self, check_id: str) -> None:
        defn = self.definitions.get(check_id)
        if defn is None or defn.kind != "ttl":
            return
        timer = self._ttl_timers.pop(check_id, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._ttl_timers[check_id] = loop.call_later(defn.ttl, self._ttl_expired, check_id)

    def _ttl_expired(self, check_id: str) -> None:
        self._ttl_timers.pop(check_id, None)
        if check_id in self.definitions:
            self.report(check_id, "critical", "TTL expired", direct=True)

    # -- results -------------------------------------------------------------------------------

    def report(self, check_id: str, status: str, output: str, *, direct: bool = False) -> None:
        """Record a probe result, applying the consecutive success/failure thresholds."""
        defn = self.definitions.get(check_id)
        if defn is None:
            return
        if not direct:
            # Consul's StatusHandler: warning counts as a success, thresholds need a streak.
            ok = status != "critical"
            last_ok, count = self._streaks.get(check_id, (ok, 0))
            count = count + 1 if last_ok == ok else 1
            self._streaks[check_id] = (ok, count)
            if ok and count < defn.success_before_passing:
                return
            if not ok and count < defn.failures_before_critical:
                return
        if status == "critical":
            self.critical_since.setdefault(check_id, time.monotonic())
        else:
            self.critical_since.pop(check_id, None)
        set_check_status(self.state, self.state.node_name, check_id, status, output)

    # -- probes --------------------------------------------------------------------------------

    async def _probe_loop(self, defn: CheckDefinition) -> None:
        # Consul staggers the first run randomly within the interval; a short cap keeps a fresh
        # registration observable within a second, which is what tests and demos wait for.
        await asyncio.sleep(random.uniform(0, min(defn.interval, 0.2)))
        while True:
            try:
                if defn.kind == "http":
                    status, output = await self._http(defn)
                else:
                    target = defn.tcp or defn.grpc
                    status, output = await self._tcp(target, defn.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status, output = "critical", f"check failed: {exc}"
            self.report(defn.id, status, output)
            await asyncio.sleep(defn.interval)

    async def _http(self, defn: CheckDefinition) -> tuple[str, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                headers={"User-Agent": "Consul Health Check"},
            )
        headers = {k: ", ".join(v) for k, v in defn.header.items()}
        headers.setdefault("Accept", "text/plain, text/*, */*")
        try:
            async with self._session.request(
                defn.method,
                defn.http,
                headers=headers,
                data=defn.body.encode() if defn.body else None,
                timeout=aiohttp.ClientTimeout(total=defn.timeout),
                ssl=not defn.tls_skip_verify,
                allow_redirects=True,
            ) as resp:
                # Consul keeps the body in a circular buffer: the last 4 KiB are the output.
                tail = b""
                async for chunk in resp.content.iter_chunked(65536):
                    tail = (tail + chunk)[-OUTPUT_MAX:]
                text = tail.decode("utf-8", "replace")
                output = (
                    f"HTTP {defn.method} {defn.http}: {resp.status} {resp.reason} Output: {text}"
                )
                if 200 <= resp.status < 300:
                    return "passing", output
                if resp.status == 429:
                    return "warning", output
                return "critical", output
        except TimeoutError:
            return (
                "critical",
                f'{defn.method.title()} "{defn.http}": context deadline exceeded '
                "(Client.Timeout exceeded while awaiting headers)",
            )
        except aiohttp.ClientConnectorError as exc:
            return (
                "critical",
                f'{defn.method.title()} "{defn.http}": dial tcp {exc.host}:{exc.port}: '
                f"connect: {_go_errno_text(exc.os_error)}",
            )
        except aiohttp.ClientError as exc:
            return "critical", f'{defn.method.title()} "{defn.http}": {exc}'

    @staticmethod
    async def _tcp(target: str, timeout: float) -> tuple[str, str]:
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        except TimeoutError:
            return "critical", f"dial tcp {target}: i/o timeout"
        except OSError as exc:
            return "critical", f"dial tcp {target}: connect: {_go_errno_text(exc)}"
        except ValueError:
            return "critical", f"dial tcp {target}: address {target}: missing port in address"
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return "passing", f"TCP connect {target}: Success"

    # -- DeregisterCriticalServiceAfter ---------------------------------------------------------

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY)
            now = time.monotonic()
            for check_id, since in list(self.critical_since.items()):
                defn = self.definitions.get(check_id)
                if defn is None or not defn.deregister_after or not defn.service_id:
                    continue
                if now - since >= defn.deregister_after:
                    delete_service(self.state, self.state.node_name, defn.service_id)
