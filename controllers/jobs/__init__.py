"""jobs: every claimed user has exactly one Nomad job ``core-hmi-<id>``, built from the template.

The job of a user is wanted while the user is claimed in the waiting list and still has a
request; it is rendered from the job template (``MANTICORE_JOB_TEMPLATE``, checked at start)
with the request's choices. The decision for one user is :func:`.plan.decide` (pure): create
with ``EnforceIndex`` 0, update in place with the job's current ``JobModifyIndex`` (a new
template hash, values, a job stopped or edited by hand), purge (``?purge=true``) when no longer
wanted, and never touch a job without our ownership meta.

Work keys: each user id, from the request watch (a request edited or deleted) and the Nomad
jobs watch (a job changed or deleted by hand comes back), plus one sweep key ``*`` from the
waiting list: a list change (claims) is one pass over the claimed users that compares each
against the cached job stubs and converges only those that differ, so 1,000 claimed users on
one page do not become 1,000 reconciles per write. A user's own reconcile also watches its
placement: a job Nomad cannot place (a blocked evaluation) is reported as ``Blocked`` under
``reconciler/status/jobs/<id>`` and in ``manticore_blocked_placements``; it stays claimed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from prometheus_client import Counter, Gauge

from controllers.api.ids import (
    JOB_PREFIX,
    REQUESTS_PREFIX,
    WAITING_KEY,
    is_user_id,
    job_id,
    user_of_job,
)
from controllers.api.requests import UserRequest
from controllers.api.waiting import WaitingList, WaitingPage, decode_pages, merge_pages
from controllers.jobs.plan import Decision, decide, fast_check, owned
from controllers.settings import Settings
from controllers.templates import (
    TEMPLATE_META,
    JobTemplate,
    NotOffered,
    values_for,
)
from reconciler import watches
from reconciler.clients.consul import KVEntry
from reconciler.clients.errors import BadRequest, Conflict
from reconciler.clients.nomad import JobStub
from reconciler.controller import Context, Controller, Dependencies, constant_key
from reconciler.logging import get_logger
from reconciler.result import Result, TemporaryError, TerminalError

log = get_logger("controllers.jobs")

NAME = "jobs"
SWEEP = "*"  # not a user id: [A-Za-z0-9-] has no '*'
REQUESTS_WATCH = f"kv:{REQUESTS_PREFIX}"
PAGES_WATCH = "kv:waiting-pages"
JOBS_WATCH = f"nomad:jobs:{JOB_PREFIX}"
SWEEP_CONCURRENCY = 16
PENDING_RECHECK = 2.0
BLOCKED_RECHECK = 15.0

BLOCKED = Gauge(
    "manticore_blocked_placements",
    "Claimed users whose job Nomad cannot place (blocked evaluation); they stay claimed",
)
JOB_CHANGES = Counter(
    "manticore_job_changes_total",
    "Nomad job registrations and purges made by the jobs controller",
    ["action", "outcome"],
)
DRIFT = Counter(
    "manticore_job_drift_total",
    "Jobs updated in place because they differed from the template",
    ["reason"],
)
JOBS = Gauge("manticore_jobs", "core-hmi-* jobs in Nomad by owner", ["owner"])
for _action in ("create", "update", "purge"):
    for _outcome in ("ok", "conflict", "refused"):
        JOB_CHANGES.labels(action=_action, outcome=_outcome)
for _reason in ("template", "stopped", "drift"):
    DRIFT.labels(reason=_reason)
for _owner in ("manticore", "other"):
    JOBS.labels(owner=_owner)


@dataclass(frozen=True)
class Config:
    settings: Settings
    template: JobTemplate

    @classmethod
    def of(cls, settings: Settings) -> Config:
        return cls(
            settings,
            JobTemplate.load(settings.jobs.template, variables=settings.jobs.variables),
        )


@dataclass(frozen=True)
class Wanted:
    """What a user should have: a job, no job, or (bad input) leave whatever is there."""

    job: dict[str, Any] | None = None
    problem: str | None = None
    index: int | None = None

    @property
    def hash(self) -> str | None:
        return None if self.job is None else str(self.job["Meta"][TEMPLATE_META])


NOT_WANTED = Wanted()


@dataclass
class _Memo:
    pages: dict[str, tuple[int, WaitingList]] = field(default_factory=dict)
    claimed: tuple[tuple[tuple[str, int], ...], frozenset[str]] | None = None
    # user -> (request ModifyIndex, Wanted when claimed)
    rendered: dict[str, tuple[int, Wanted]] = field(default_factory=dict)


class Jobs:
    """The jobs controller's state: configuration, decoded-input memo, blocked users."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._config: Config | None = None
        self._memo = _Memo()
        self.blocked: set[str] = set()
        # user -> (JobModifyIndex, template hash) of a job this process registered or read and
        # found right: a cached stub showing that same index needs no read. An edit by hand
        # changes the index, so it is read and compared again (drift).
        self._verified: dict[str, tuple[int, str]] = {}

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = Config.of(self._settings or Settings.from_env())
        return self._config

    async def startup(self, deps: Dependencies) -> None:
        """Read and check the settings and the job template once, before anything runs."""
        config = self.config
        log.info(
            "jobs configured",
            template=config.template.source,
            roles=dict(config.template.roles),
            datacenters=list(config.settings.jobs.datacenters),
        )

    # -- reading the inputs

    def claimed(self, ctx: Context) -> frozenset[str]:
        cache: Mapping[str, KVEntry] = ctx.cache(PAGES_WATCH)
        fingerprint = tuple(sorted((k, e.modify_index) for k, e in cache.items()))
        if self._memo.claimed is not None and self._memo.claimed[0] == fingerprint:
            return self._memo.claimed[1]
        pages = self._memo.pages
        for key, entry in cache.items():
            got = pages.get(key)
            if got is None or got[0] != entry.modify_index:
                pages[key] = (entry.modify_index, decode_pages([entry]))
        for gone in [k for k in pages if k not in cache]:
            del pages[gone]
        whole = merge_pages(part for _, part in pages.values())
        users = frozenset(whole.claimed())
        self._memo.claimed = (fingerprint, users)
        return users

    def wanted(self, ctx: Context, user: str, claimed: frozenset[str]) -> Wanted:
        entry: KVEntry | None = ctx.cache(REQUESTS_WATCH).get(REQUESTS_PREFIX + user)
        if entry is None or user not in claimed:
            return NOT_WANTED
        got = self._memo.rendered.get(user)
        if got is not None and got[0] == entry.modify_index:
            return got[1]
        wanted = self._render(ctx, user, entry)
        self._memo.rendered[user] = (entry.modify_index, wanted)
        return wanted

    def _render(self, ctx: Context, user: str, entry: KVEntry) -> Wanted:
        request = ctx.parse(UserRequest, entry, key=entry.key, report_as=user)
        if request is None:
            return Wanted(problem="invalid request", index=entry.modify_index)
        try:
            values = values_for(user, request, self.config.settings)
        except NotOffered as exc:
            return Wanted(problem=str(exc), index=entry.modify_index)
        return Wanted(job=self.config.template.render(values), index=entry.modify_index)

    def forget(self, users: Iterable[str]) -> None:
        for user in users:
            self._memo.rendered.pop(user, None)

    # -- converging one user

    async def converge(
        self, ctx: Context, user: str, wanted: Wanted, stub: JobStub | None = None
    ) -> dict[str, Any] | None:
        """Make Nomad hold what ``wanted`` says for ``user``; returns the job as it now is
        (None when there is none). Raises client errors (retried) or TerminalError.

        With the cached ``stub`` the first attempt may skip the read: no stub means create
        (``EnforceIndex`` 0 refuses if the job exists after all, and we read then), and a
        stub carrying our ownership meta may be purged without reading it first.
        """
        name = job_id(user)
        for attempt in range(3):
            if attempt == 0 and stub is None and wanted.job is not None:
                current: dict[str, Any] | None = None
            elif attempt == 0 and stub is not None and wanted.job is None and owned(stub.meta):
                current = {"Meta": dict(stub.meta or {}), "JobModifyIndex": stub.job_modify_index}
            else:
                existing = await ctx.nomad.get_job(name)
                current = None if existing is None else existing.model_dump(by_alias=True)
            decision = decide(wanted.job, current)
            try:
                return await self._act(ctx, user, decision, wanted, current)
            except Conflict:
                # Changed between our read and our write (EnforceIndex): read again.
                JOB_CHANGES.labels(action=decision.action, outcome="conflict").inc()
                continue
        raise TemporaryError(f"{name}: changed by someone else on every attempt", delay=1.0)

    async def _act(
        self,
        ctx: Context,
        user: str,
        decision: Decision,
        wanted: Wanted,
        current: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        name = job_id(user)
        if decision.action == "none":
            if current is not None and wanted.hash is not None:
                self._verified[user] = (int(current.get("JobModifyIndex") or 0), wanted.hash)
            return current
        if decision.action == "foreign":
            ctx.status.set(
                "Conflict",
                f"Nomad job {name} exists without Meta.manticore_owner=manticore-reconciler; "
                "it is left alone (delete or rename it to let this user have a job)",
                key=user,
            )
            return None
        if decision.action == "purge":
            await ctx.nomad.deregister_job(name, purge=True)
            self._verified.pop(user, None)
            JOB_CHANGES.labels(action="purge", outcome="ok").inc()
            ctx.log.info("purged job", user=user, job=name)
            return None
        assert wanted.job is not None
        index = 0 if current is None else int(current.get("JobModifyIndex") or 0)
        try:
            written = await ctx.nomad.register_job(
                wanted.job, enforce_index=True, job_modify_index=index
            )
        except BadRequest as exc:
            JOB_CHANGES.labels(action=decision.action, outcome="refused").inc()
            raise TerminalError(f"Nomad refused job {name}: {exc}") from exc
        JOB_CHANGES.labels(action=decision.action, outcome="ok").inc()
        assert wanted.hash is not None
        self._verified[user] = (written.job_modify_index, wanted.hash)
        if decision.action == "update":
            reason = decision.reason.split(":", 1)[0]
            DRIFT.labels(reason=reason).inc()
        ctx.log.info(
            "registered job", user=user, job=name, action=decision.action, reason=decision.reason
        )
        return {**wanted.job, "Status": "pending", "JobModifyIndex": written.job_modify_index}

    # -- reconciles

    async def reconcile(self, ctx: Context, key: str) -> Result | None:
        if key == SWEEP:
            return await self.sweep(ctx)
        if not is_user_id(key):
            return None
        return await self.one(ctx, key)

    async def one(self, ctx: Context, user: str) -> Result | None:
        wanted = self.wanted(ctx, user, self.claimed(ctx))
        if wanted.problem is not None:
            ctx.status.set("Invalid", wanted.problem, key=user, observed_index=wanted.index)
            return None
        stub: JobStub | None = ctx.cache(JOBS_WATCH).get(job_id(user))
        if wanted.job is None and stub is None:
            self._unblock(user)
            return None
        if stub is not None and self._trusted(user, wanted, stub):
            job: dict[str, Any] | None = {"Status": stub.status}
        else:
            job = await self.converge(ctx, user, wanted, stub)
        if job is None or wanted.job is None:
            self._unblock(user)
            return None
        return await self._placement(ctx, user, str(job.get("Status") or ""))

    def _trusted(self, user: str, wanted: Wanted, stub: JobStub) -> bool:
        """The cached stub shows the job we registered or verified: no read needed."""
        if not fast_check(wanted.hash, stub.meta, stub.stop):
            return False
        return self._verified.get(user) == (stub.job_modify_index, wanted.hash)

    async def _placement(self, ctx: Context, user: str, status: str) -> Result | None:
        if status != "pending":
            self._unblock(user)
            return None
        evaluations = await ctx.nomad.job_evaluations(job_id(user))
        blocked = [e for e in evaluations if e.status == "blocked"]
        if not blocked:
            self._unblock(user)
            if all(e.status in ("complete", "failed", "canceled") for e in evaluations):
                # Scheduled: the allocation exists (the cached status may lag behind).
                return None
            return Result(requeue_after=PENDING_RECHECK)
        why = _why_blocked(blocked[0].failed_tg_allocs)
        ctx.status.set(
            "Blocked",
            f"Nomad cannot place job {job_id(user)} now ({why}); the user stays claimed and "
            "the job is placed when capacity frees",
            key=user,
        )
        if user not in self.blocked:
            ctx.log.warning("job cannot be placed", user=user, reason=why)
        self.blocked.add(user)
        BLOCKED.set(len(self.blocked))
        return Result(requeue_after=BLOCKED_RECHECK)

    def _unblock(self, user: str) -> None:
        if user in self.blocked:
            self.blocked.discard(user)
            BLOCKED.set(len(self.blocked))

    async def sweep(self, ctx: Context) -> Result | None:
        """Every user the list or Nomad mentions whose cached job is not what it should be."""
        claimed = self.claimed(ctx)
        stubs: Mapping[str, JobStub] = ctx.cache(JOBS_WATCH)
        requests: Mapping[str, KVEntry] = ctx.cache(REQUESTS_WATCH)
        todo: dict[str, Wanted] = {}
        ours = other = 0
        for stub in stubs.values():
            user = user_of_job(stub.id)
            if stub.meta is not None and not owned(stub.meta):
                other += 1
                # Someone else's job under a claimed user's name: say so (never touch it).
                if user is not None and self.wanted(ctx, user, claimed).job is not None:
                    todo[user] = self.wanted(ctx, user, claimed)
                continue
            ours += 1
            if user is None:
                continue
            wanted = self.wanted(ctx, user, claimed)
            # Departures are purged by the user's own key (its request or job changed);
            # the sweep is for claims and for jobs that are not what they should be.
            if wanted.job is not None and not self._trusted(user, wanted, stub):
                todo[user] = wanted
        for user in claimed:
            if user in todo or job_id(user) in stubs:
                continue
            if REQUESTS_PREFIX + user not in requests:
                continue
            wanted = self.wanted(ctx, user, claimed)
            if wanted.job is not None:
                todo[user] = wanted
        JOBS.labels(owner="manticore").set(ours)
        JOBS.labels(owner="other").set(other)
        departed = [u for u in list(self._memo.rendered) if REQUESTS_PREFIX + u not in requests]
        self.forget(departed)
        # Not pruned by the stub cache: a job just registered may not be in it yet.
        for user in [u for u in self._verified if REQUESTS_PREFIX + u not in requests]:
            del self._verified[user]
        if not todo:
            return None
        failures: list[str] = []
        limiter = anyio.CapacityLimiter(SWEEP_CONCURRENCY)
        started = time.perf_counter()

        async def run(user: str, wanted: Wanted) -> None:
            async with limiter:
                try:
                    await self.converge(ctx, user, wanted, stubs.get(job_id(user)))
                except TerminalError as exc:
                    # Reported by the user's own reconcile (the job watch brings it).
                    ctx.log.error("job refused", user=user, error=str(exc))
                except Exception as exc:
                    if isinstance(exc, anyio.get_cancelled_exc_class()):
                        raise
                    failures.append(f"{user}: {type(exc).__name__}: {exc}")

        async with anyio.create_task_group() as tg:
            for user, wanted in todo.items():
                tg.start_soon(run, user, wanted)
        ctx.log.info(
            "sweep converged users",
            users=len(todo),
            failed=len(failures),
            seconds=round(time.perf_counter() - started, 3),
        )
        if failures:
            raise TemporaryError(
                f"{len(failures)} of {len(todo)} users not converged yet; first: {failures[0]}"
            )
        return None


def _why_blocked(failed: Mapping[str, Any] | None) -> str:
    parts: list[str] = []
    for group, metric in (failed or {}).items():
        if not isinstance(metric, Mapping):
            continue
        exhausted = metric.get("DimensionExhausted") or {}
        filtered = metric.get("ConstraintFiltered") or {}
        detail = ", ".join(
            [f"{dim} exhausted on {n} node(s)" for dim, n in exhausted.items()]
            + [f"{c} filtered {n} node(s)" for c, n in filtered.items()]
        )
        nodes = metric.get("NodesEvaluated", 0)
        parts.append(f"group {group}: {detail or 'no feasible node'} ({nodes} evaluated)")
    return "; ".join(parts) or "no feasible node"


def _user_of_stub(stub: JobStub) -> Iterable[str]:
    user = user_of_job(stub.id)
    return (user,) if user is not None else ()


def _user_of_request(entry: KVEntry) -> Iterable[str]:
    rest = entry.key[len(REQUESTS_PREFIX) :]
    return (rest,) if is_user_id(rest) else ()


def build(settings: Settings | None = None) -> Controller:
    """The jobs controller (``settings`` None: read from the environment at start)."""
    state = Jobs(settings)
    return Controller(
        name=NAME,
        description="claimed users -> one Nomad job core-hmi-<id> each (EnforceIndex, purge)",
        reconcile=state.reconcile,
        startup=state.startup,
        watches=[
            watches.kv(REQUESTS_PREFIX, to_keys=_user_of_request, name=REQUESTS_WATCH),
            watches.kv(WAITING_KEY, recurse=True, to_keys=constant_key(SWEEP), name=PAGES_WATCH),
            watches.nomad("jobs", job_prefix=JOB_PREFIX, to_keys=_user_of_stub, name=JOBS_WATCH),
        ],
        writes=["nomad job core-hmi-<id>"],
        models={"manticore-request": UserRequest, "manticore-waiting-list": WaitingPage},
        needs=frozenset({"consul", "nomad"}),
        workers=8,
        resync_period=60,
        reconcile_timeout=120,
    )


controller = build()

__all__ = ["Jobs", "build", "controller"]
