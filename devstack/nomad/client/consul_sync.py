"""Service registration in Consul, the way a Nomad client does it, through the agent HTTP API.

:func:`service_registrations` turns an allocation's ``service`` blocks into Consul agent
registrations with Nomad's IDs (``_nomad-task-<alloc>-<task>-<service>-<port>``), addresses,
``external-source: nomad`` meta and checks. :class:`ConsulSync` keeps Consul level-converged to
the wanted set (register what is missing or changed, deregister what is no longer wanted),
retrying while Consul is away: each changed service is one request of its own as soon as it
changes (at most 16 at a time), never held back behind a batch. Every 30 s it reconciles
against what the agent really holds, as Nomad's periodic ``sync`` does: one read of the
agent's services and checks, and a registration only for a service the agent lacks (Consul
restarted, or someone deregistered it) or holds differently; an unchanged service is not
registered again, so the periodic sync costs two reads whatever the number of services, not
one write per service.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from devstack.nomad.util import format_go_duration

from .taskenv import interpolate, port_map

log = logging.getLogger("devstack.nomad.consul")
RESYNC_SECONDS = 30.0
# Nomad's health tracker looks up the agent's checks every 500 ms (consulCheckLookupInterval);
# one read of every check of the agent serves every tracker for that long.
STATUS_TTL = 0.5
# Registration requests under way at once.
OP_CONCURRENCY = 16


def service_id(alloc_id: str, owner: str, service: str, port_label: str) -> str:
    """``owner`` is the task name, or ``group-<group>`` for a group-level service."""
    return f"_nomad-task-{alloc_id}-{owner}-{service}-{port_label}"


def check_id(sid: str, check: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for part in (
        sid,
        check["Name"],
        check["Type"],
        check.get("Path", ""),
        check.get("Protocol", ""),
        check.get("PortLabel", ""),
        str(check.get("Interval", 0)),
        str(check.get("Timeout", 0)),
        check.get("Method", ""),
    ):
        h.update(part.encode())
    return "_nomad-check-" + h.hexdigest()


class AddressError(ValueError):
    """A service or check names a port the allocation does not have (Nomad's client error)."""


def resolve_port(
    alloc: dict[str, Any], label: str, networks: list[dict[str, Any]] | None = None
) -> tuple[str, int]:
    """Host IP and port of a port label, as ``serviceregistration.GetAddress`` (auto/host).

    Group ports first, then ``networks`` (a task's own networks for a task service, the
    group's for a group service), then a numeric label; anything else is an error.
    """
    shared = alloc["AllocatedResources"]["Shared"]
    for p in shared.get("Ports") or []:
        if p["Label"] == label:
            return p["HostIP"], int(p["Value"])
    nets = shared.get("Networks") or [] if networks is None else networks
    for net in nets:
        for p in (net.get("ReservedPorts") or []) + (net.get("DynamicPorts") or []):
            if p["Label"] == label and p.get("Value"):
                return net.get("IP", ""), int(p["Value"])
    if not label.isdigit():
        raise AddressError(f"invalid port {label!r}: port label not found".replace("'", '"'))
    if int(label) <= 0:
        raise AddressError(f'invalid port: "{label}": port must be >0')
    # A bare number: the Consul agent's address with that port.
    return "", int(label)


def _check(
    sid: str,
    check: dict[str, Any],
    ip: str,
    port: int,
    alloc: dict[str, Any],
    networks: list[dict[str, Any]] | None,
) -> dict:
    ctype = check["Type"].lower()
    if check.get("PortLabel"):
        try:
            ip, port = resolve_port(alloc, check["PortLabel"], networks)
        except AddressError as exc:
            raise AddressError(f'unable to get address for check "{check["Name"]}": {exc}') from exc
    out: dict[str, Any] = {
        "CheckID": check_id(sid, check),
        "Name": check["Name"],
    }
    interval = format_go_duration(check["Interval"])
    timeout = format_go_duration(check["Timeout"]) if check.get("Timeout") else ""
    if ctype == "http":
        scheme = check.get("Protocol") or "http"
        out.update({"HTTP": f"{scheme}://{ip}:{port}{check['Path']}", "Interval": interval})
        if check.get("Method"):
            out["Method"] = check["Method"]
        if check.get("Header"):
            out["Header"] = check["Header"]
        if check.get("Body"):
            out["Body"] = check["Body"]
        if check.get("TLSSkipVerify"):
            out["TLSSkipVerify"] = True
    elif ctype == "tcp":
        out.update({"TCP": f"{ip}:{port}", "Interval": interval})
    elif ctype == "grpc":
        target = f"{ip}:{port}" + (f"/{check['GRPCService']}" if check.get("GRPCService") else "")
        out.update(
            {"GRPC": target, "GRPCUseTLS": bool(check.get("GRPCUseTLS")), "Interval": interval}
        )
    else:
        # ttl, and script checks (which Nomad runs itself and reports through a TTL check).
        out["TTL"] = format_go_duration(check["Interval"])
    if timeout and ctype != "ttl":
        out["Timeout"] = timeout
    if check.get("InitialStatus"):
        out["Status"] = check["InitialStatus"]
    if check.get("SuccessBeforePassing"):
        out["SuccessBeforePassing"] = check["SuccessBeforePassing"]
    if check.get("FailuresBeforeCritical"):
        out["FailuresBeforeCritical"] = check["FailuresBeforeCritical"]
    return out


def service_registrations(
    alloc: dict[str, Any],
    services: list[dict[str, Any]],
    owner: str,
    env: dict[str, str],
    node: dict[str, Any] | None,
    task: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Consul agent service definitions for ``services`` of ``alloc`` (checks embedded).

    ``task`` is the task owning task-level services: its own networks and the docker
    ``port_map`` take part in address resolution. Raises :class:`AddressError` with Nomad's
    text when a port label resolves to nothing, so no service is ever registered on port 0.
    """
    networks = None
    mapped: dict[str, int] = {}
    if task is not None:
        networks = alloc["AllocatedResources"]["Tasks"].get(task["Name"], {}).get("Networks") or []
        mapped = port_map(task)
    regs = []
    for svc in services:
        name = interpolate(svc["Name"], env, node)
        label = svc["PortLabel"]
        try:
            ip, port = resolve_port(alloc, label, networks) if label else ("", 0)
        except AddressError as exc:
            raise AddressError(f'unable to get address for service "{name}": {exc}') from exc
        if svc.get("AddressMode") == "driver" and label:
            for p in alloc["AllocatedResources"]["Shared"].get("Ports") or []:
                if p["Label"] == label and p.get("To"):
                    port = int(p["To"])
            if label in mapped:
                port = mapped[label]
        if svc.get("Address"):
            ip = interpolate(svc["Address"], env, node)
        if not ip:
            nets = alloc["AllocatedResources"]["Shared"].get("Networks") or []
            ip = (
                nets[0]["IP"]
                if nets
                else (node or {}).get("Attributes", {}).get("unique.network.ip-address", "")
            )
        sid = service_id(alloc["ID"], owner, name, label)
        meta = {k: interpolate(v, env, node) for k, v in (svc.get("Meta") or {}).items()}
        meta["external-source"] = "nomad"
        reg: dict[str, Any] = {
            "ID": sid,
            "Name": name,
            "Tags": [interpolate(t, env, node) for t in svc.get("Tags") or []],
            "Address": ip,
            "Port": port,
            "Meta": meta,
            "EnableTagOverride": bool(svc.get("EnableTagOverride")),
            "Checks": [_check(sid, c, ip, port, alloc, networks) for c in svc.get("Checks") or []],
        }
        if svc.get("TaggedAddresses"):
            reg["TaggedAddresses"] = {
                k: {"Address": v.rsplit(":", 1)[0], "Port": int(v.rsplit(":", 1)[1])}
                for k, v in svc["TaggedAddresses"].items()
                if ":" in v and v.rsplit(":", 1)[1].isdigit()
            }
        regs.append(reg)
    return regs


class ConsulSync:
    """Converges the local Consul agent's ``_nomad-task-*`` services to the wanted set."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.base = address if "://" in address else f"http://{address}"
        self.base = self.base.rstrip("/")
        self.token = token
        self._wanted: dict[str, dict[str, Any]] = {}
        self._owners: dict[str, list[str]] = {}
        self._applied: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._statuses: tuple[float, dict[str, str]] = (float("-inf"), {})
        self._status_fetch: asyncio.Task[dict[str, str]] | None = None
        self._task: asyncio.Task[None] | None = None
        # Service ids whose wanted registration changed (or whose registration Consul lost)
        # since they were last looked at, the ids with a request under way, and those requests.
        self._dirty: set[str] = set()
        self._inflight: set[str] = set()
        self._ops: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(OP_CONCURRENCY)
        # Registration and deregistration requests sent (for tests and figures).
        self.registrations = 0
        self.deregistrations = 0

    async def start(self) -> None:
        headers = {"X-Consul-Token": self.token} if self.token else {}
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=5), headers=headers
        )
        self._task = asyncio.get_running_loop().create_task(self._run())

    def set(self, owner: str, registrations: list[dict[str, Any]]) -> None:
        for sid in self._owners.pop(owner, []):
            self._wanted.pop(sid, None)
            self._dirty.add(sid)
        self._owners[owner] = [r["ID"] for r in registrations]
        for r in registrations:
            self._wanted[r["ID"]] = r
            self._dirty.add(r["ID"])
        self._changed()

    def clear(self, owner: str) -> None:
        ids = self._owners.pop(owner, [])
        for sid in ids:
            self._wanted.pop(sid, None)
        self._dirty.update(ids)
        if ids:
            self._changed()

    def _changed(self) -> None:
        self._synced.clear()
        self._wake.set()

    async def flush(self, timeout: float = 2.0) -> bool:
        """Wait until Consul matches the wanted set (or ``timeout``); True if it does."""
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def check_ids(self, owner: str) -> list[str]:
        """The Consul check IDs of ``owner``'s wanted registrations."""
        return [
            c["CheckID"]
            for sid in self._owners.get(owner, [])
            for c in self._wanted.get(sid, {}).get("Checks") or []
        ]

    async def check_statuses(self) -> dict[str, str]:
        """Every check of the local agent and its status (``GET /v1/agent/checks``).

        Every allocation's health tracker asks; one request serves all who ask within
        :data:`STATUS_TTL`, so a thousand deploying allocations cost two requests a second (each
        one encodes every check of the agent: at 1,000 Manticore users, 3,000 of them).
        """
        loop = asyncio.get_running_loop()
        fetched_at, statuses = self._statuses
        if loop.time() - fetched_at < STATUS_TTL:
            return statuses
        if self._status_fetch is None or self._status_fetch.done():
            self._status_fetch = loop.create_task(self._fetch_statuses())
        return await asyncio.shield(self._status_fetch)

    async def _fetch_statuses(self) -> dict[str, str]:
        assert self._session is not None
        async with self._session.get(self.base + "/v1/agent/checks") as resp:
            if resp.status != 200:
                raise RuntimeError(f"consul /v1/agent/checks: {resp.status}")
            body = await resp.json()
        statuses = {cid: str(c.get("Status", "")) for cid, c in (body or {}).items()}
        self._statuses = (asyncio.get_running_loop().time(), statuses)
        return statuses

    async def _put(self, path: str, body: Any = None) -> None:
        assert self._session is not None
        async with self._session.put(self.base + path, json=body) as resp:
            if resp.status == 404 and "/deregister/" in path:
                return
            if resp.status >= 400:
                text = await resp.text()
                raise RuntimeError(f"consul {path}: {resp.status} {text.strip()}")

    async def _send(self, sid: str, body: dict[str, Any] | None) -> None:
        """One registration (``body``) or deregistration (None) of ``sid``, then record it."""
        if body is None:
            self.deregistrations += 1
            await self._put(f"/v1/agent/service/deregister/{quote(sid, safe='')}")
            self._applied.pop(sid, None)
        else:
            self.registrations += 1
            await self._put("/v1/agent/service/register", body)
            self._applied[sid] = body

    async def _apply_once(self) -> None:
        """Every difference at once, waiting for all of them (used by :meth:`close`)."""
        limit = asyncio.Semaphore(OP_CONCURRENCY)
        wanted = dict(self._wanted)

        async def send(sid: str, body: dict[str, Any] | None) -> None:
            async with limit:
                await self._send(sid, body)

        jobs = [send(sid, None) for sid in list(self._applied) if sid not in wanted]
        jobs += [send(s, b) for s, b in wanted.items() if self._applied.get(s) != b]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def _dispatch(self) -> None:
        """Start a request for every changed service id that has none under way.

        Each request runs on its own (at most ``OP_CONCURRENCY`` at a time) and looks at its
        id again when it ends: a registration never waits for a batch of others to finish
        (under load one slow request held every later one back for seconds)."""
        dirty, self._dirty = self._dirty, set()
        for sid in dirty:
            if sid in self._inflight:
                continue  # looked at again when its request ends
            body = self._wanted.get(sid)
            if body is None and sid not in self._applied:
                continue
            if body is not None and self._applied.get(sid) == body:
                continue
            self._inflight.add(sid)
            task = asyncio.get_running_loop().create_task(self._op(sid, body))
            self._ops.add(task)
            task.add_done_callback(self._ops.discard)

    async def _op(self, sid: str, body: dict[str, Any] | None) -> None:
        try:
            async with self._limit:
                await self._send(sid, body)
        except (aiohttp.ClientError, TimeoutError, RuntimeError, OSError) as exc:
            log.warning("consul sync of %s failed, retrying: %s", sid, exc)
            await asyncio.sleep(1.0)
        finally:
            self._inflight.discard(sid)
            self._dirty.add(sid)
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        periodic_at = loop.time() + RESYNC_SECONDS
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, periodic_at - loop.time()))
            self._wake.clear()
            if loop.time() >= periodic_at:
                periodic_at = loop.time() + RESYNC_SECONDS
                try:
                    # Consul may have restarted and forgotten everything, or someone may have
                    # deregistered or edited a service: compare with what the agent holds.
                    await self._forget_drifted()
                except (aiohttp.ClientError, TimeoutError, RuntimeError, OSError) as exc:
                    log.warning("consul sync failed, retrying: %s", exc)
                    periodic_at = loop.time() + 1.0
            self._dispatch()
            if not self._dirty and not self._inflight:
                self._synced.set()

    async def _get_json(self, path: str) -> Any:
        assert self._session is not None
        async with self._session.get(self.base + path) as resp:
            if resp.status != 200:
                raise RuntimeError(f"consul {path}: {resp.status}")
            return await resp.json()

    async def _forget_drifted(self) -> None:
        """Drop from ``_applied`` every service the agent lacks or holds differently (its
        checks included), so the next apply registers exactly those again."""
        services = await self._get_json("/v1/agent/services") or {}
        checks = await self._get_json("/v1/agent/checks") or {}
        for sid, body in list(self._applied.items()):
            if sid in self._inflight:
                continue
            held = services.get(sid)
            if held is None or not _same_service(body, held):
                del self._applied[sid]
                self._dirty.add(sid)
                continue
            if any(c["CheckID"] not in checks for c in body.get("Checks") or []):
                del self._applied[sid]
                self._dirty.add(sid)

    async def close(self) -> None:
        """Deregister everything this client registered, then stop."""
        if self._status_fetch is not None:
            self._status_fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._status_fetch
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for op in list(self._ops):
            op.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._ops, return_exceptions=True)
        # A request cut short may have registered its service: deregister those too.
        for sid in self._inflight:
            self._applied.setdefault(sid, {})
        self._wanted.clear()
        self._owners.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._apply_once(), 3.0)
        if self._session is not None:
            await self._session.close()


def _same_service(body: dict[str, Any], held: dict[str, Any]) -> bool:
    """Whether the agent's view of a service (``/v1/agent/services``) is what we registered."""
    return (
        held.get("Service") == body["Name"]
        and (held.get("Address") or "") == (body.get("Address") or "")
        and int(held.get("Port") or 0) == int(body.get("Port") or 0)
        and list(held.get("Tags") or []) == list(body.get("Tags") or [])
        and dict(held.get("Meta") or {}) == dict(body.get("Meta") or {})
    )
