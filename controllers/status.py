"""``reconciler status``: every user at a glance, for operators, against any Consul and Nomad.

One row per user with a request or anything left behind: position in line, claimed, the state
the intake API reports (:mod:`controllers.api.view`), the Nomad job and its allocation, the
routes, the ELB listener and the time left, plus who leads each controller. Everything is read
from the KV contract and Nomad, so it shows the same truth on any machine pointed at the same
cluster (``CONSUL_HTTP_ADDR``, ``NOMAD_ADDR``, ...). A user who has no request but still owns
something (a job, a route, a listener) is shown as ``leaving``: that is what an operator looks
for when something is left behind.

``--watch`` redraws the table whenever ``manticore/`` or ``haproxy/`` change (a blocking query,
not a poll) and at least every ``--interval`` seconds for Nomad's side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from controllers.api.allocations import UserAllocation
from controllers.api.elb import ListenerRecord
from controllers.api.expiry import EXPIRY_PREFIX, ExpiryRecord
from controllers.api.haproxy import UserRoutes
from controllers.api.ids import (
    ALLOCATIONS_PREFIX,
    ELB_PREFIX,
    HAPROXY_DATA_PREFIX,
    HAPROXY_DOMAIN_KEY,
    HAPROXY_MAIN_PORT_KEY,
    JOB_PREFIX,
    REQUESTS_PREFIX,
    WAITING_KEY,
    user_of_job,
    user_of_key,
)
from controllers.api.requests import UserRequest
from controllers.api.view import PublicEndpoints, positions, user_status
from controllers.api.waiting import decode_pages
from controllers.settings import Settings
from reconciler.clients.config import ClientsConfig
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import ClientError, ConfigError
from reconciler.clients.nomad import NomadClient
from reconciler.kv import decode
from reconciler.leader import LEADER_PREFIX, LeaderRecord
from reconciler.result import InvalidValue

CONTROLLERS = ("waitlist", "jobs", "allocations", "haproxy-kv", "elb", "expiry")
COLUMNS = (
    ("user", "USER"),
    ("position", "POS"),
    ("claimed", "CLAIMED"),
    ("state", "STATE"),
    ("job", "JOB"),
    ("allocation", "ALLOCATION"),
    ("routes", "ROUTES"),
    ("elb", "ELB LISTENER"),
    ("time_left", "TIME LEFT"),
)


@dataclass(frozen=True)
class NomadView:
    """Per user: job status and the latest allocation's client status (None: Nomad not read)."""

    jobs: Mapping[str, str] = field(default_factory=dict)
    allocations: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """What the table is made of: the KV under ``manticore/`` and ``haproxy/``, and Nomad."""

    kv: Mapping[str, bytes | None]
    nomad: NomadView
    now: dt.datetime
    settings: Settings


@dataclass(frozen=True)
class Row:
    user: str
    position: str
    claimed: str
    state: str
    job: str
    allocation: str
    routes: str
    elb: str
    time_left: str


def _decode(model: Any, raw: bytes | None, key: str) -> Any:
    try:
        return decode(model, raw, key=key)
    except InvalidValue:
        return None


def _per_user(kv: Mapping[str, bytes | None], prefix: str, model: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, raw in kv.items():
        user = user_of_key(prefix, key)
        if user is not None:
            found[user] = _decode(model, raw, key)
    return found


def _left(expiry: ExpiryRecord | None, now: dt.datetime) -> str:
    if expiry is None:
        return "-"
    seconds = int((expiry.expires_at - now).total_seconds())
    if seconds <= 0:
        return "over"
    minutes, secs = divmod(seconds, 60)
    text = f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    return text + (" (warned)" if expiry.warned_at is not None else "")


def rows(snapshot: Snapshot) -> tuple[list[Row], dict[str, Any]]:
    """The table (users in line order, then the others) and its summary."""
    kv, nomad = snapshot.kv, snapshot.nomad
    requests: dict[str, UserRequest | None] = _per_user(kv, REQUESTS_PREFIX, UserRequest)
    pages = [_Stored(k, v) for k, v in kv.items() if k.startswith(WAITING_KEY)]
    waiting = decode_pages(pages)
    ahead = positions(waiting)
    allocations: dict[str, UserAllocation | None] = _per_user(
        kv, ALLOCATIONS_PREFIX, UserAllocation
    )
    routes: dict[str, UserRoutes | None] = _per_user(kv, HAPROXY_DATA_PREFIX, UserRoutes)
    listeners: dict[str, ListenerRecord | None] = _per_user(kv, ELB_PREFIX, ListenerRecord)
    expiry: dict[str, ExpiryRecord | None] = _per_user(kv, EXPIRY_PREFIX, ExpiryRecord)
    settings = snapshot.settings
    domain = (kv.get(HAPROXY_DOMAIN_KEY) or b"").decode(errors="replace").strip()
    port = (kv.get(HAPROXY_MAIN_PORT_KEY) or b"").decode(errors="replace").strip()
    public = PublicEndpoints(
        domain=domain or settings.haproxy.domain_name,
        http_port=int(port) if port.isdigit() else settings.haproxy.main_port,
        elb=settings.elb.enabled,
    )
    everyone = (
        set(requests)
        | set(waiting.entries)
        | set(allocations)
        | set(routes)
        | set(listeners)
        | set(expiry)
        | set(nomad.jobs)
    )
    order = {user: n for n, (user, _) in enumerate(waiting.ordered())}
    table: list[Row] = []
    for user in sorted(everyone, key=lambda u: (order.get(u, len(order)), u)):
        entry = waiting.entries.get(user)
        state: str
        if user in requests:
            state = user_status(
                user,
                requests[user] or UserRequest(),
                entry=entry,
                position=ahead.get(user),
                waiting=len(ahead),
                routes=routes.get(user),
                listener=listeners.get(user),
                expiry=expiry.get(user),
                public=public,
            ).state
        else:
            state = "leaving"
        allocation = allocations.get(user)
        route = routes.get(user)
        listener = listeners.get(user)
        job = nomad.jobs.get(user, "-" if nomad.error is None else "?")
        client = nomad.allocations.get(user)
        table.append(
            Row(
                user=user,
                position=str(ahead[user] + 1) if user in ahead else "-",
                claimed="yes" if entry is not None and entry.claimed else "no",
                state=state,
                job=f"{job}/{client}" if client else job,
                allocation=(
                    f"{allocation.allocation[:8]}@{allocation.node}" if allocation else "-"
                ),
                routes=_routes(route),
                elb=(
                    ",".join(f"{listener.load_balancer}:{item.port}" for item in listener.listeners)
                    if listener
                    else "-"
                ),
                time_left=_left(expiry.get(user), snapshot.now),
            )
        )
    counts = {"waiting": len(waiting.waiting()), "claimed": len(waiting.claimed())}
    summary = {
        "users": len(requests),
        **counts,
        "leaders": _leaders(kv),
        "nomad": nomad.error or "ok",
        "problems": [p.message for p in waiting.problems],
    }
    return table, summary


def _routes(route: UserRoutes | None) -> str:
    if route is None:
        return "-"
    parts = [f"{r.role}={r.subdomain[:6]}…" for r in route.http]
    parts += [f"{r.role}:{r.port}" for r in route.tcp]
    return " ".join(parts) or "-"


def _leaders(kv: Mapping[str, bytes | None]) -> dict[str, str]:
    leaders = {}
    for name in CONTROLLERS:
        raw = kv.get(LEADER_PREFIX + name)
        record = _decode(LeaderRecord, raw, name) if raw else None
        leaders[name] = record.holder if record is not None else "-"
    return leaders


@dataclass(frozen=True)
class _Stored:
    key: str
    value: bytes | None
    modify_index: int = 0


def render(table: Sequence[Row], summary: Mapping[str, Any], now: dt.datetime) -> str:
    lines = [
        f"Manticore at {now:%Y-%m-%d %H:%M:%S} UTC: {summary['users']} user(s), "
        f"{summary['waiting']} waiting, {summary['claimed']} claimed"
        + ("" if summary["nomad"] == "ok" else f"; Nomad: {summary['nomad']}"),
        "leaders: " + ", ".join(f"{name}={holder}" for name, holder in summary["leaders"].items()),
        "",
    ]
    cells = [[title for _, title in COLUMNS]] + [
        [str(getattr(row, name)) for name, _ in COLUMNS] for row in table
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    for n, cell in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip())
        if n == 0 and not table:
            lines.append("(no users)")
    for problem in summary["problems"]:
        lines.append(f"! waiting list: {problem}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- reading


async def read_kv(
    consul: ConsulClient, *, index: int = 0, wait: float | None = None
) -> tuple[int, dict[str, bytes | None]]:
    """Everything the table needs from Consul; ``index``/``wait`` block on ``manticore/``."""
    got, entries = await consul.kv_list("manticore/", index=index, wait=wait)
    kv: dict[str, bytes | None] = {e.key: e.value for e in entries}
    for prefix in ("haproxy/", LEADER_PREFIX):
        _, more = await consul.kv_list(prefix)
        kv.update({e.key: e.value for e in more})
    return got, kv


async def read_nomad(nomad: NomadClient | None) -> NomadView:
    if nomad is None:
        return NomadView(error="not configured")
    try:
        _, jobs = await nomad.list_jobs(prefix=JOB_PREFIX)
        _, allocs = await nomad.list_allocations()
    except ClientError as exc:
        return NomadView(error=str(exc).splitlines()[0][:80])
    by_user = {}
    for job in jobs:
        user = user_of_job(job.id)
        if user is not None:
            by_user[user] = job.status or "?"
    latest: dict[str, tuple[int, str]] = {}
    for alloc in allocs:
        user = user_of_job(alloc.job_id)
        if user is None:
            continue
        if user not in latest or alloc.create_index > latest[user][0]:
            latest[user] = (alloc.create_index, alloc.client_status)
    return NomadView(by_user, {u: s for u, (_, s) in latest.items()})


async def show(args: argparse.Namespace) -> int:
    clients = ClientsConfig.from_env()
    settings = Settings.from_env()
    out = sys.stdout
    async with ConsulClient(clients.consul) as consul:
        nomad = NomadClient(clients.nomad) if not args.no_nomad else None
        try:
            index = 0
            while True:
                try:
                    index, kv = await read_kv(
                        consul, index=index if args.watch else 0, wait=args.interval
                    )
                except ClientError as exc:
                    if not args.watch:
                        print(f"reconciler status: cannot read Consul: {exc}", file=sys.stderr)
                        return 1
                    out.write(f"\x1b[H\x1b[2Jcannot read Consul: {exc}\n")
                    out.flush()
                    await anyio.sleep(args.interval)
                    continue
                now = dt.datetime.now(dt.UTC)
                snapshot = Snapshot(kv, await read_nomad(nomad), now, settings)
                table, summary = rows(snapshot)
                if args.json:
                    text = json.dumps(
                        {"summary": summary, "users": [asdict(r) for r in table]}, default=str
                    )
                    out.write(text + "\n")
                else:
                    out.write(("\x1b[H\x1b[2J" if args.watch else "") + render(table, summary, now))
                out.flush()
                if not args.watch:
                    return 0
        finally:
            if nomad is not None:
                await nomad.aclose()


def handler(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise ConfigError("--interval must be > 0")
    try:
        return anyio.run(show, args)
    except KeyboardInterrupt:
        return 0


def register(subparsers: Any) -> None:
    """The ``reconciler.commands`` entry point: adds ``reconciler status``."""
    parser = subparsers.add_parser(
        "status",
        help="a table of Manticore's users: position, claimed, job, allocation, routes, ELB "
        "listener, time left",
        description="Read Consul (CONSUL_HTTP_ADDR...) and Nomad (NOMAD_ADDR...) and show every "
        "user, for operators.",
    )
    parser.add_argument("--watch", action="store_true", help="redraw on every change until Ctrl-C")
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="with --watch, redraw at least this often (Nomad's side; default 2)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document per refresh")
    parser.add_argument("--no-nomad", action="store_true", help="do not read Nomad")
    parser.set_defaults(handler=handler)
