"""expiry: claimed users -> deadlines in ``manticore/expiry/data/<id>``; warn, then end them.

Manticore kept its inactivity timers in each web server's memory: a restart forgot them, and
with several instances the one that saw a user's activity was not the one whose timer deleted
the user. Here the usage clock is data. When a user is first seen claimed, a record with the
user's deadlines is created (a CAS create: it is never overwritten, so a restart, a second
replica or a new leader cannot restart anyone's clock); past ``warn_at`` the record is marked
warned (the API reports the user as ``expiring``); past ``expires_at`` the user's request is
deleted together with the record, in one transaction that is CAS-checked on both, so a request
that changed meanwhile (the user was active) is looked at again first. Everything downstream
(waiting list, job, routes, listener) goes away because the request did.

With ``RESET_TIMER_ALLOWED``, the request's ``last_activity`` (written by the intake API, the
request's writer) restarts the clock from that time; otherwise it is ignored.

One aggregate key: requests, the waiting list and the records all map to it, and a pass is a
pure plan (:func:`plan`) over the caches plus a fresh read of the records, then fenced
transactions. The next deadline is a ``requeue_after`` (capped by
``MANTICORE_EXPIRY_RECHECK_INTERVAL``), so nothing is polled; the clock is injected so tests
move time instead of sleeping.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from controllers.api.expiry import EXPIRY_PREFIX, ExpiryRecord
from controllers.api.ids import REQUESTS_PREFIX, WAITING_KEY, user_of_key
from controllers.api.requests import UserRequest
from controllers.api.waiting import decode_pages
from controllers.settings import Settings, UsageSettings
from reconciler import watches
from reconciler.clients.consul import KVEntry, KVOp
from reconciler.controller import Context, Controller, Dependencies, constant_key
from reconciler.kv import decode, encode
from reconciler.result import InvalidValue, Result, TemporaryError

NAME = "expiry"
KEY = "expiry"
REQUESTS_WATCH = f"kv:{REQUESTS_PREFIX}"
PAGES_WATCH = "kv:waiting-pages"
RECORDS_WATCH = f"kv:{EXPIRY_PREFIX}"
# Users per transaction: each takes at most two operations, plus the fencing check.
USERS_PER_TXN = 60

Clock = Callable[[], dt.datetime]

WARNINGS = Counter("manticore_expiry_warnings_total", "Users warned that their time is nearly up")
EXPIRED = Counter("manticore_expiry_expired_total", "Users whose time ran out (request deleted)")
RESETS = Counter("manticore_expiry_resets_total", "Usage clocks restarted by user activity")
TRACKED = Gauge("manticore_expiry_tracked_users", "Claimed users with a usage deadline")
OVERDUE = Gauge(
    "manticore_expiry_overdue_users",
    "Users still there more than OVERDUE_AFTER seconds past their end (deleting them fails)",
)
OVERDUE_AFTER = 30.0
NEXT_DEADLINE = Gauge(
    "manticore_expiry_next_deadline_seconds",
    "Seconds until the next warning or expiry (0 when none is pending)",
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Stored:
    """A KV value with the index to CAS on; ``value`` None when it did not decode."""

    value: Any
    index: int


@dataclass(frozen=True)
class Observed:
    now: dt.datetime
    requests: Mapping[str, Stored]  # Stored[UserRequest | None]
    claimed: frozenset[str]
    records: Mapping[str, Stored]  # Stored[ExpiryRecord | None]


@dataclass
class Plan:
    """What a pass does, per user: at most one change each."""

    create: dict[str, ExpiryRecord] = field(default_factory=dict)
    update: dict[str, tuple[ExpiryRecord, int]] = field(default_factory=dict)
    forget: dict[str, int] = field(default_factory=dict)
    # user -> (request index, record index): delete both at once.
    expire: dict[str, tuple[int, int]] = field(default_factory=dict)
    warned: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    next_at: dt.datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.forget or self.expire)

    def ops(self) -> list[list[KVOp]]:
        """The writes, grouped per user (a user's operations always share a transaction)."""
        groups: list[list[KVOp]] = []
        for user, record in sorted(self.create.items()):
            groups.append([KVOp.cas(EXPIRY_PREFIX + user, encode(record), index=0)])
        for user, (record, index) in sorted(self.update.items()):
            groups.append([KVOp.cas(EXPIRY_PREFIX + user, encode(record), index=index)])
        for user, index in sorted(self.forget.items()):
            groups.append([KVOp.delete_cas(EXPIRY_PREFIX + user, index=index)])
        for user, (request_index, record_index) in sorted(self.expire.items()):
            groups.append(
                [
                    KVOp.delete_cas(REQUESTS_PREFIX + user, index=request_index),
                    KVOp.delete_cas(EXPIRY_PREFIX + user, index=record_index),
                ]
            )
        return groups


def new_record(
    start: dt.datetime,
    usage: UsageSettings,
    *,
    resets: int = 0,
    activity: dt.datetime | None = None,
) -> ExpiryRecord:
    assert usage.usage_duration is not None
    warn_at = start + dt.timedelta(seconds=usage.usage_duration)
    return ExpiryRecord(
        started_at=start,
        warn_at=warn_at,
        expires_at=warn_at + dt.timedelta(seconds=usage.warning_duration),
        resets=resets,
        activity=activity,
    )


def plan(observed: Observed, usage: UsageSettings) -> Plan:
    """Deadlines for every claimed user with a request; records of everyone else forgotten."""
    result = Plan()
    now = observed.now
    soonest: list[dt.datetime] = []
    for user, stored in observed.records.items():
        if not usage.enabled or user not in observed.claimed or user not in observed.requests:
            result.forget[user] = stored.index
    if not usage.enabled:
        return result
    for user in sorted(observed.claimed):
        request = observed.requests.get(user)
        if request is None:
            continue
        found = observed.records.get(user)
        record: ExpiryRecord | None = found.value if found is not None else None
        activity = request.value.last_activity if request.value is not None else None
        if record is None:
            # Activity from before the claim is already accounted for: the clock starts now.
            record = new_record(now, usage, activity=activity)
            if found is None:
                result.create[user] = record
            else:  # an invalid record: reported when read, replaced from now
                result.update[user] = (record, found.index)
        elif usage.reset_timer_allowed:
            newer = record.activity is None or (activity is not None and activity > record.activity)
            if activity is not None and activity > record.started_at and newer:
                # An API clock ahead of ours must not move the deadline past what we can see.
                start = min(activity, now)
                record = new_record(start, usage, resets=record.resets + 1, activity=activity)
                result.update[user] = (record, found.index if found else 0)
                result.reset.append(user)
        if now >= record.expires_at:
            result.update.pop(user, None)
            result.create.pop(user, None)
            if found is not None:
                result.expire[user] = (request.index, found.index)
            # else: the record is being created now; it expires on the next pass.
            continue
        if now >= record.warn_at and record.warned_at is None:
            record = record.model_copy(update={"warned_at": now})
            index = found.index if found is not None else 0
            if user in result.create:
                result.create[user] = record
            else:
                result.update[user] = (record, index)
            result.warned.append(user)
        soonest.append(record.expires_at if record.warned_at is not None else record.warn_at)
    result.next_at = min(soonest, default=None)
    return result


# ----------------------------------------------------------------------------- the controller


def claimed_users(pages: Iterable[KVEntry]) -> frozenset[str]:
    return frozenset(decode_pages(pages).claimed())


class Expiry:
    """The controller's state: its settings and its clock."""

    def __init__(self, settings: Settings | None = None, *, clock: Clock = utcnow) -> None:
        self._settings = settings
        self.clock = clock

    @property
    def usage(self) -> UsageSettings:
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings.usage

    async def startup(self, deps: Dependencies) -> None:
        _ = self.usage  # a bad value stops the process with its message

    async def reconcile(self, ctx: Context, key: str) -> Result | None:
        usage = self.usage
        requests: dict[str, Stored] = {}
        for entry in ctx.cache(REQUESTS_WATCH).values():
            user = user_of_key(REQUESTS_PREFIX, entry.key)
            if user is not None:
                parsed = ctx.parse(UserRequest, entry, report_as=user)
                requests[user] = Stored(parsed, entry.modify_index)
        claimed = claimed_users(ctx.cache(PAGES_WATCH).values())
        # Records are read fresh: their indexes are what the writes CAS on.
        records: dict[str, Stored] = {}
        for entry in await ctx.kv.list(EXPIRY_PREFIX):
            user = user_of_key(EXPIRY_PREFIX, entry.key)
            if user is None:
                continue
            try:
                record = decode(ExpiryRecord, entry.value, key=entry.key)
                records[user] = Stored(record, entry.modify_index)
            except InvalidValue as exc:
                ctx.log.error("invalid expiry record; replacing it", user=user, error=str(exc))
                records[user] = Stored(None, entry.modify_index)
        now = self.clock()
        late = now - dt.timedelta(seconds=OVERDUE_AFTER)
        OVERDUE.set(
            sum(1 for s in records.values() if s.value is not None and s.value.expires_at < late)
        )
        result = plan(Observed(now, requests, claimed, records), usage)
        await self._apply(ctx, result.ops())
        for user in result.warned:
            WARNINGS.inc()
            ctx.log.info("user warned: time nearly up", user=user)
        for user in result.expire:
            EXPIRED.inc()
            ctx.log.info("user expired: request deleted", user=user)
        RESETS.inc(len(result.reset))
        TRACKED.set(len([u for u in claimed if u in requests]) if usage.enabled else 0)
        if result.next_at is None:
            NEXT_DEADLINE.set(0)
            return None
        delay = max(0.0, (result.next_at - now).total_seconds())
        NEXT_DEADLINE.set(delay)
        return Result(requeue_after=min(max(delay, 0.01), usage.recheck_interval))

    @staticmethod
    async def _apply(ctx: Context, groups: Sequence[list[KVOp]]) -> None:
        failed = 0
        for start in range(0, len(groups), USERS_PER_TXN):
            ops = [op for group in groups[start : start + USERS_PER_TXN] for op in group]
            if not await ctx.kv.apply(ops):
                failed += 1
        if failed:
            # Someone changed a request or record since it was read: plan again from fresh data.
            raise TemporaryError(f"{failed} transaction(s) lost a CAS race; retrying", delay=0.2)


def build(settings: Settings | None = None, *, clock: Clock = utcnow) -> Controller:
    """The expiry controller (``settings`` None: read from the environment at start)."""
    state = Expiry(settings, clock=clock)
    everything = constant_key(KEY)
    return Controller(
        name=NAME,
        description="claimed users -> manticore/expiry/data/<id> deadlines; warn, then delete "
        "the request",
        reconcile=state.reconcile,
        startup=state.startup,
        watches=[
            watches.kv(REQUESTS_PREFIX, to_keys=everything, name=REQUESTS_WATCH),
            watches.kv(WAITING_KEY, recurse=True, to_keys=everything, name=PAGES_WATCH),
            watches.kv(EXPIRY_PREFIX, to_keys=everything, name=RECORDS_WATCH),
        ],
        writes=[f"{EXPIRY_PREFIX}<id>", f"delete {REQUESTS_PREFIX}<id> when time is up"],
        models={"manticore-expiry": ExpiryRecord},
        workers=1,
        resync_period=60,
        reconcile_timeout=60,
    )


controller = build()

__all__ = ["Expiry", "Observed", "Plan", "build", "controller", "plan"]
