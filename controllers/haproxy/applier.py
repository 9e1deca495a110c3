"""Carry a :class:`~.plan.Plan` out on this host: files, runtime API, validated reloads.

Everything here blocks (files, UNIX sockets, ``haproxy -c``); the controller runs it in a worker
thread. The files in the config directory always describe what HAProxy runs:

- ``haproxy.cfg``: the rendered configuration, slot addresses included;
- ``maps/hosts-<generation>.map`` and ``maps/ports-<generation>.map``: the maps it loaded;
- ``state.json``: the applied state itself (shape, routes, slots), from which a restarted
  controller picks up where it left off without reloading;
- ``not_found.html``: the 404 page.

A reload writes the maps of a *new* generation, renders the configuration that names them, has
``haproxy -c`` check it, renames it into place and asks the master for a hitless reload
(:mod:`.process`). A configuration that fails any step leaves the running one, its maps and
``state.json`` exactly as they were. A runtime change applies its commands first, then rewrites
whichever files changed (each one atomically).

:meth:`Applier.verify` reads HAProxy's state back (``show servers state``, ``show map``) and
the files, and lists every difference with what was applied: drift the controller repairs with
a full reload.
"""

from __future__ import annotations

import bisect
import contextlib
import ipaddress
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controllers.api.haproxy import Address, DomainName, Port, Role, Subdomain
from controllers.api.ids import UserId
from controllers.haproxy import metrics, render
from controllers.haproxy.plan import (
    PLACEHOLDER,
    POOLS,
    Applied,
    MapAdd,
    MapDel,
    MapName,
    MapSet,
    Op,
    Plan,
    SetAddr,
    SetState,
    Shape,
    ShutdownSessions,
    slot_server,
)
from controllers.haproxy.process import (
    ConfigInvalid,
    HAProxyError,
    HAProxyProcess,
    ReloadFailed,
    write_atomically,
)
from controllers.haproxy.routes import Routing, Target, split_address
from controllers.haproxy.runtime import RuntimeAPI, ServerState
from controllers.settings import HAProxySettings
from reconciler.clients.errors import ConfigError

STATE_NAME = "state.json"
K = TypeVar("K", str, int)


class NotRunning(HAProxyError):
    """No HAProxy runs for the config directory and the controller may not start one."""


@dataclass(frozen=True)
class Timings:
    """How long the last application took, by step (seconds)."""

    path: Literal["runtime", "reload"]
    render: float = 0.0
    validate_and_switch: float = 0.0
    runtime: float = 0.0
    files: float = 0.0

    @property
    def total(self) -> float:
        return self.render + self.validate_and_switch + self.runtime + self.files


# -- state.json -----------------------------------------------------------------------------


class _SavedShape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    domain: DomainName
    main_port: Port
    http_slots: int = Field(ge=1)
    tcp_slots: int = Field(ge=1)
    web_slots: int = Field(ge=1)


class _SavedHTTP(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    subdomain: Subdomain
    slot: int = Field(ge=0)
    user: UserId
    role: Role
    address: Address


class _SavedTCP(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    port: Port
    slot: int = Field(ge=0)
    user: UserId
    role: Role
    address: Address


class _SavedWeb(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    address: Address
    slot: int = Field(ge=0)


class SavedState(BaseModel):
    """``state.json``: the applied state, every value validated again when read back."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1
    generation: int = Field(ge=1)
    shape: _SavedShape
    http: list[_SavedHTTP]
    tcp: list[_SavedTCP]
    web: list[_SavedWeb]

    @staticmethod
    def dump(applied: Applied) -> str:
        """``state.json`` for ``applied``: this model's shape, written without re-validating
        values that were validated on the way in (it is validated again when read back)."""
        routing = applied.routing
        document = {
            **_state_head(applied),
            "http": [
                {"subdomain": s, "slot": slot, **_target(routing.http[s])}
                for s, slot in sorted(applied.http.items())
            ],
            "tcp": [
                {"port": p, "slot": slot, **_target(routing.tcp[p])}
                for p, slot in sorted(applied.tcp.items())
            ],
            "web": [{"address": a, "slot": slot} for a, slot in sorted(applied.web.items())],
        }
        return json.dumps(document, separators=(",", ":"))

    def applied(self) -> Applied:
        shape = Shape(**self.shape.model_dump())
        routing = Routing(
            domain=shape.domain,
            main_port=shape.main_port,
            web_app=tuple(sorted(w.address for w in self.web)),
            http={h.subdomain: Target(h.user, h.role, h.address) for h in self.http},
            tcp={t.port: Target(t.user, t.role, t.address) for t in self.tcp},
        )
        applied = Applied(
            shape=shape,
            routing=routing,
            http={h.subdomain: h.slot for h in self.http},
            tcp={t.port: t.slot for t in self.tcp},
            web={w.address: w.slot for w in self.web},
            generation=self.generation,
        )
        for pool in POOLS:
            slots = list(applied.owners(pool))
            if len(set(slots)) != applied.used(pool) or any(s >= shape.size(pool) for s in slots):
                raise ValueError(f"{STATE_NAME}: {pool} slots overlap or exceed the pool")
        return applied


def _target(target: Target) -> dict[str, str]:
    return {"user": target.user, "role": target.role, "address": target.address}


class StateDocument:
    """``state.json`` kept as one JSON fragment per route, in key order, so writing it after a
    runtime change encodes and places only the routes that changed; the text is exactly
    :meth:`SavedState.dump`'s."""

    def __init__(self) -> None:
        self._http = _Rows[str]("subdomain")
        self._tcp = _Rows[int]("port")

    def text(self, applied: Applied) -> str:
        head = json.dumps(_state_head(applied), separators=(",", ":"))
        http = self._http.text(applied.http, applied.routing.http)
        tcp = self._tcp.text(applied.tcp, applied.routing.tcp)
        web = json.dumps(
            [{"address": a, "slot": slot} for a, slot in sorted(applied.web.items())],
            separators=(",", ":"),
        )
        return f'{head[:-1]},"http":[{http}],"tcp":[{tcp}],"web":{web}}}'


class _Rows(Generic[K]):
    """The JSON objects of one route table (``name``: the key's field), each encoded once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._rows: dict[K, tuple[int, Target, str]] = {}
        self._keys: list[K] = []

    def text(self, slots: Mapping[K, int], targets: Mapping[K, Target]) -> str:
        rows, keys = self._rows, self._keys
        if rows.keys() != slots.keys():
            for gone in rows.keys() - slots.keys():
                del rows[gone]
                del keys[bisect.bisect_left(keys, gone)]
            for new in sorted(slots.keys() - set(keys)):
                bisect.insort(keys, new)
        for key, slot in slots.items():
            target = targets[key]
            known = rows.get(key)
            if known is None or known[0] != slot or (known[1] is not target and known[1] != target):
                row = {self.name: key, "slot": slot, **_target(target)}
                rows[key] = (slot, target, json.dumps(row, separators=(",", ":")))
        return ",".join([rows[key][2] for key in keys])


# -- the applier ----------------------------------------------------------------------------


class Applier:
    """Files, runtime API and reloads of the HAProxy whose config directory is ``settings``'."""

    def __init__(self, settings: HAProxySettings, process: HAProxyProcess | None = None) -> None:
        self.settings = settings
        self.process = process or HAProxyProcess(settings.config_dir, binary=settings.binary)
        self.config_dir = self.process.config_dir
        self.maps_dir = self.config_dir / "maps"
        self.state_path = self.config_dir / STATE_NAME
        self.page_path = self.config_dir / "not_found.html"
        self.runtime = RuntimeAPI(self.process.runtime_socket)
        self._template = render.load_template(settings)
        self._page = self._load_page()
        self.last: Timings | None = None
        self._document: render.ConfigDocument | None = None
        self._hosts_map = render.MapDocument(render.HOSTS_MAP_TITLE)
        self._ports_map = render.MapDocument(render.PORTS_MAP_TITLE)
        self._state = StateDocument()
        self._written: dict[Path, bytes] = {}
        # Fail at start, not at the first reload, when a path cannot be rendered or written.
        render.safe_path(self.config_dir, "MANTICORE_HAPROXY_CONFIG_DIR")
        render.safe_path(self.process.runtime_socket, "runtime socket")
        try:
            self.maps_dir.mkdir(parents=True, exist_ok=True)
            self.process.socket_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"MANTICORE_HAPROXY_CONFIG_DIR: {exc}") from exc

    def _load_page(self) -> bytes:
        if self.settings.not_found_page is None:
            return render.builtin_not_found_page()
        try:
            return self.settings.not_found_page.read_bytes()
        except OSError as exc:
            raise ConfigError(f"MANTICORE_HAPROXY_NOT_FOUND_PAGE: {exc}") from exc

    # -- paths and rendering ----------------------------------------------------------------

    def files(self, generation: int) -> render.Files:
        return render.Files(
            hosts_map=self.maps_dir / f"hosts-{generation}.map",
            ports_map=self.maps_dir / f"ports-{generation}.map",
            not_found_page=self.page_path,
            runtime_socket=self.process.runtime_socket,
        )

    def map_paths(self, generation: int) -> dict[MapName, Path]:
        files = self.files(generation)
        return {"hosts": files.hosts_map, "ports": files.ports_map}

    def render(self, applied: Applied) -> dict[Path, str]:
        """Every file ``applied`` is made of, by path (the configuration last)."""
        files = self.files(applied.generation)
        doc = self._document
        if doc is not None and doc.shape == applied.shape and doc.generation == applied.generation:
            doc.update(applied)
        else:
            base = render.render_base(self._template, self.settings, files.runtime_socket)
            doc = self._document = render.ConfigDocument(applied, self.settings, files, base)
        return {
            files.hosts_map: self._hosts_map.text(applied.hosts_map()),
            files.ports_map: self._ports_map.text(applied.ports_map()),
            self.process.config_path: doc.text(),
        }

    def running(self) -> bool:
        return self.process.master_pid() is not None

    # -- applying ---------------------------------------------------------------------------

    def apply(self, current: Applied | None, plan: Plan) -> Timings:
        """Carry ``plan`` out. Raises :class:`ConfigInvalid` / :class:`ReloadFailed` /
        :class:`NotRunning` / runtime errors; on any of them the running HAProxy and the files
        still describe ``current``."""
        if plan.reload is not None:
            timings = self._reload(current, plan.target, plan.reload)
        elif current is not None and plan.ops:
            timings = self._runtime(plan.target, plan.ops)
        else:
            timings = Timings("runtime")
        self.last = timings
        self._observe(plan.target)
        return timings

    def _reload(self, current: Applied | None, target: Applied, reason: str) -> Timings:
        started = time.perf_counter()
        self._write_if_changed(self.page_path, self._page)
        rendered = self.render(target)
        config_text = rendered.pop(self.process.config_path)
        rendered_at = time.perf_counter()
        fresh_maps = [path for path in rendered if not path.exists()]
        for path, text in rendered.items():
            self._write_if_changed(path, text)
        running = self.running()
        try:
            if running:
                self.process.reload(config_text)
            elif self.settings.start:
                self.process.start(config_text)
            else:
                raise NotRunning(
                    f"no HAProxy runs for {self.config_dir} and MANTICORE_HAPROXY_START is false"
                )
        except ConfigInvalid:
            metrics.CONFIG_VALID.set(0)
            metrics.RELOAD_FAILURES.labels(kind="invalid").inc()
            self._discard(fresh_maps, current)
            raise
        except ReloadFailed:
            metrics.CONFIG_VALID.set(0)
            metrics.RELOAD_FAILURES.labels(kind="rejected").inc()
            self._discard(fresh_maps, current)
            raise
        except HAProxyError:
            if not running:
                metrics.RELOAD_FAILURES.labels(kind="start").inc()
            self._discard(fresh_maps, current)
            raise
        switched_at = time.perf_counter()
        write_atomically(self.state_path, self._state.text(target))
        self._remove_other_generations(target.generation)
        metrics.CONFIG_VALID.set(1)
        metrics.RELOADS.labels(reason=reason).inc()
        metrics.LAST_RELOAD.set(time.time())
        done = time.perf_counter()
        metrics.APPLY_SECONDS.labels(path="reload").observe(done - started)
        return Timings(
            "reload",
            render=rendered_at - started,
            validate_and_switch=switched_at - rendered_at,
            files=done - switched_at,
        )

    def _runtime(self, target: Applied, ops: tuple[Op, ...]) -> Timings:
        started = time.perf_counter()
        self.runtime.apply(ops, self.map_paths(target.generation), on_done=_count)
        applied_at = time.perf_counter()
        for path, text in self.render(target).items():
            self._write_if_changed(path, text)
        write_atomically(self.state_path, self._state.text(target))
        done = time.perf_counter()
        metrics.APPLY_SECONDS.labels(path="runtime").observe(done - started)
        return Timings("runtime", runtime=applied_at - started, files=done - applied_at)

    def _write_if_changed(self, path: Path, data: str | bytes) -> bool:
        wanted = data.encode() if isinstance(data, str) else data
        # What this process last wrote there: no need to read a 2 MB file back to compare
        # (but a file someone removed is written again).
        if self._written.get(path) == wanted and path.exists():
            return False
        try:
            if path not in self._written and path.read_bytes() == wanted:
                self._written[path] = wanted
                return False
        except OSError:
            pass
        write_atomically(path, wanted)
        self._written[path] = wanted
        return True

    def _discard(self, fresh_maps: list[Path], current: Applied | None) -> None:
        """Remove map files a failed reload wrote, unless the running configuration uses them."""
        keep = set(self.map_paths(current.generation).values()) if current else set()
        for path in fresh_maps:
            if path not in keep:
                self._unlink(path)

    def _remove_other_generations(self, generation: int) -> None:
        keep = set(self.map_paths(generation).values())
        for path in self.maps_dir.glob("*.map"):
            if path not in keep:
                self._unlink(path)

    def _unlink(self, path: Path) -> None:
        # Forget it too: the next write of the same bytes must really write the file again.
        self._written.pop(path, None)
        path.unlink(missing_ok=True)

    def _observe(self, applied: Applied) -> None:
        for pool in POOLS:
            metrics.SLOTS_IN_USE.labels(pool=pool).set(applied.used(pool))
            metrics.SLOTS_TOTAL.labels(pool=pool).set(applied.shape.size(pool))
        metrics.ROUTES.labels(pool="http").set(len(applied.routing.http))
        metrics.ROUTES.labels(pool="tcp").set(len(applied.routing.tcp))
        metrics.ROUTES.labels(pool="web").set(len(applied.routing.web_app))

    # -- recovering and verifying -----------------------------------------------------------

    def load_state(self) -> Applied | None:
        """``state.json`` as an :class:`Applied`, or None when missing or not trustworthy."""
        try:
            return SavedState.model_validate_json(self.state_path.read_bytes()).applied()
        except (OSError, ValidationError, ValueError, TypeError):
            return None

    def recover(self) -> Applied | None:
        """What the running HAProxy serves, when a previous controller left it consistent.

        Returns None (the caller then renders and reloads everything) unless HAProxy runs,
        ``state.json`` is valid, and :meth:`verify` finds no difference.
        """
        if not self.running():
            return None
        applied = self.load_state()
        if applied is None:
            return None
        if self.verify(applied):
            return None
        self._observe(applied)
        return applied

    def verify(self, applied: Applied) -> list[str]:
        """Every difference between ``applied`` and HAProxy's runtime state or the files."""
        problems = [
            f"{path.name} on disk differs from what runs"
            for path, text in self.render(applied).items()
            if _read(path) != text.encode()
        ]
        try:
            servers = self.runtime.servers_state()
            for pool in POOLS:
                owners = applied.owners(pool)
                for slot in range(applied.shape.size(pool)):
                    name = slot_server(pool, slot)
                    state = servers.get(name)
                    owner = owners.get(slot)
                    if state is None:
                        problems.append(f"{name} does not exist")
                    elif owner is None and state.ready:
                        problems.append(f"{name} is free but takes traffic")
                    elif owner is not None and not state.ready:
                        problems.append(f"{name} routes {owner[0]} but is not ready")
                    elif owner is not None and not _same_address(state, owner[1]):
                        problems.append(
                            f"{name} points at {state.address}:{state.port}, not {owner[1]}"
                        )
            paths = self.map_paths(applied.generation)
            maps: tuple[tuple[MapName, dict[str, str]], ...] = (
                ("hosts", applied.hosts_map()),
                ("ports", applied.ports_map()),
            )
            for name, wanted in maps:
                entries = self.runtime.map_entries(paths[name])
                if sorted(entries) != sorted(wanted.items()):
                    problems.append(
                        f"{name} map holds {len(entries)} entries, {len(wanted)} expected"
                        + (" (or different ones)" if len(entries) == len(wanted) else "")
                    )
        except (OSError, RuntimeError) as exc:
            problems.append(f"runtime API: {exc}")
        if problems:
            metrics.DRIFT.inc()
        return problems


def _state_head(applied: Applied) -> dict[str, Any]:
    """The fields of ``state.json`` before its routes: both encoders start with these."""
    shape = applied.shape
    return {
        "version": 1,
        "generation": applied.generation,
        "shape": {
            "domain": shape.domain,
            "main_port": shape.main_port,
            "http_slots": shape.http_slots,
            "tcp_slots": shape.tcp_slots,
            "web_slots": shape.web_slots,
        },
    }


def _read(path: Path) -> bytes | None:
    with contextlib.suppress(OSError):
        return path.read_bytes()
    return None


def _same_address(state: ServerState, address: str) -> bool:
    host, port = split_address(address)
    try:
        return ipaddress.ip_address(state.address) == ipaddress.ip_address(host) and (
            state.port == port
        )
    except ValueError:
        return False


def _count(op: Op) -> None:
    kind = {
        SetAddr: "server-addr",
        SetState: "server-state",
        ShutdownSessions: "shutdown-sessions",
        MapAdd: "map-add",
        MapSet: "map-set",
        MapDel: "map-del",
    }[type(op)]
    metrics.RUNTIME_UPDATES.labels(op=kind).inc()


__all__ = ["PLACEHOLDER", "Applier", "NotRunning", "SavedState", "Timings"]
