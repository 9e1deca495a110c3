"""waitlist: requests + Nomad's free capacity -> ``manticore/waiting/data`` (FIFO, paged, CAS).

One aggregate key (``waitlist``): every request, every page of the list, every Nomad node and
allocation maps to it, so a burst of changes collapses into one pass. A pass takes the pages
(their ModifyIndexes are the CAS indexes) from the page watch once it shows this process's last
writes, or reads them from Consul until then, takes requests, nodes and allocations from the
warm caches, asks :func:`.plan.plan` what the list should be, lays it out with
:func:`controllers.api.waiting.plan_pages` and writes only the pages that change, each
transaction fenced and CAS-checked on the pages it writes. Running it twice writes nothing the
second time.

Capacity is free Nomad resources (:mod:`.capacity`) in units of what one user's task group asks
for in the job template; ``MAX_USERS`` caps it. A user leaving, an allocation stopping, a node
joining or becoming eligible all change the caches, so the next users are claimed with no new
request.

Bad input is reported and skipped, one user at a time: an invalid request (or an id too long
for Nomad's service names) gets an ``Invalid`` status entry under
``reconciler/status/waitlist/<id>`` and the metric ``reconciler_invalid_input_total``, keeps
whatever entry it had, and is never claimed; an invalid page or entry of the list is reported
under ``reconciler/status/waitlist/pages/<key>`` and rewritten without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from controllers.api.ids import (
    JOB_PREFIX,
    REQUESTS_PREFIX,
    WAITING_KEY,
    user_of_job,
    user_of_key,
)
from controllers.api.requests import UserRequest
from controllers.api.waiting import (
    DEFAULT_MAX_USERS,
    PAGE_BUDGET,
    VALUE_LIMIT,
    PageWrite,
    WaitingEntry,
    WaitingList,
    WaitingPage,
    decode_pages,
    merge_pages,
    plan_pages,
    transactions,
)
from controllers.settings import Settings
from controllers.templates import JobTemplate, NotOffered, values_for
from controllers.waitlist.capacity import (
    AllocInfo,
    NodeInfo,
    Placement,
    free_resources,
    users_that_fit,
)
from controllers.waitlist.plan import Observed, Plan, plan
from reconciler import watches
from reconciler.clients.consul import KVEntry, KVOp
from reconciler.clients.nomad import Allocation, Node
from reconciler.controller import Context, Controller, Dependencies, constant_key
from reconciler.kv import decode
from reconciler.logging import get_logger
from reconciler.metrics import INVALID_INPUT
from reconciler.result import InvalidValue, Result, TemporaryError

log = get_logger("controllers.waitlist")

NAME = "waitlist"
KEY = "waitlist"
REQUESTS_WATCH = f"kv:{REQUESTS_PREFIX}"
PAGES_WATCH = "kv:waiting-pages"
NODES_WATCH = "nomad:nodes"
ALLOCATIONS_WATCH = "nomad:allocations"
# Warn when the list is this full (of MANTICORE_WAITING_LIST_MAX_USERS), well before refusing.
WARN_FILL = 0.8

# ----------------------------------------------------------------------------- metrics

USERS = Gauge("manticore_users", "Users in the waiting list by state", ["state"])
CAPACITY = Gauge(
    "manticore_capacity_users",
    "Users the cluster holds now: claimed users plus the users that could still be claimed",
)
CAPACITY_FREE = Gauge(
    "manticore_capacity_free_users",
    "Users that could be claimed right now (free Nomad resources / per-user resources, "
    "capped by MAX_USERS, minus claimed users not placed yet)",
)
UNPLACED = Gauge(
    "manticore_claimed_unplaced_users",
    "Claimed users whose job holds no resources yet (being placed, or blocked)",
)
QUEUE_WAIT = Histogram(
    "manticore_queue_wait_seconds",
    "Time from joining the waiting list to being claimed",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)
LIST_BYTES = Gauge("manticore_waiting_list_bytes", "Encoded size of the whole waiting list")
PAGE_BYTES = Gauge(
    "manticore_waiting_list_largest_page_bytes",
    "Encoded size of the largest waiting-list page (compare manticore_kv_value_limit_bytes)",
)
PAGES = Gauge("manticore_waiting_list_pages", "Number of waiting-list pages in Consul")
VALUE_LIMIT_BYTES = Gauge(
    "manticore_kv_value_limit_bytes", "Consul's KV value size limit (512 KiB)"
)
PAGE_BUDGET_BYTES = Gauge(
    "manticore_waiting_list_page_budget_bytes", "Size a waiting-list page is kept under"
)
LIST_LIMIT = Gauge("manticore_waiting_list_max_users", "Users the waiting list accepts at most")
REFUSED = Gauge(
    "manticore_waiting_list_refused_users",
    "Users with a request that the full waiting list refused for now",
)
LIST_WRITES = Counter(
    "manticore_waiting_list_writes_total",
    "Waiting-list page writes by outcome",
    ["outcome"],
)
PAGE_READS = Counter(
    "manticore_waiting_list_page_reads_total",
    "Waiting-list passes by where they took the pages from (the watch, or a read of Consul)",
    ["source"],
)
VALUE_LIMIT_BYTES.set(VALUE_LIMIT)
PAGE_BUDGET_BYTES.set(PAGE_BUDGET)
for _state in ("waiting", "claimed"):
    USERS.labels(state=_state)
for _outcome in ("committed", "conflict"):
    LIST_WRITES.labels(outcome=_outcome)
for _source in ("watch", "consul"):
    PAGE_READS.labels(source=_source)


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    """What a waitlist pass needs from the settings, checked once at start."""

    settings: Settings
    template: JobTemplate
    placement: Placement
    max_users: int | None
    list_limit: int

    @classmethod
    def of(cls, settings: Settings) -> Config:
        template = JobTemplate.load(settings.jobs.template, variables=settings.jobs.variables)
        return cls(
            settings=settings,
            template=template,
            placement=Placement.of(template, settings.jobs.datacenters),
            max_users=settings.capacity.max_users,
            list_limit=settings.capacity.waiting_list_max_users,
        )


# ----------------------------------------------------------------------------- decoded input


@dataclass
class _Memo:
    """Decoded inputs by ModifyIndex, so a pass decodes only what changed since the last one."""

    pages: dict[str, tuple[int, WaitingList]] = field(default_factory=dict)
    requests: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    nodes: dict[str, tuple[int, NodeInfo]] = field(default_factory=dict)
    allocs: dict[str, tuple[int, AllocInfo]] = field(default_factory=dict)


def node_info(node: Node) -> NodeInfo:
    allocatable = node.allocatable
    drivers = (node.model_extra or {}).get("Drivers") or {}
    healthy = frozenset(
        name
        for name, info in drivers.items()
        if isinstance(info, Mapping) and info.get("Detected") and info.get("Healthy")
    )
    return NodeInfo(
        id=node.id,
        status=node.status,
        eligible=node.scheduling_eligibility == "eligible",
        draining=node.draining,
        datacenter=node.datacenter,
        node_pool=node.node_pool,
        drivers=healthy,
        cpu=allocatable.cpu if allocatable else 0,
        memory_mb=allocatable.memory_mb if allocatable else 0,
        disk_mb=allocatable.disk_mb if allocatable else 0,
    )


def alloc_info(alloc: Allocation) -> AllocInfo:
    held = alloc.resources
    return AllocInfo(
        id=alloc.id,
        node_id=alloc.node_id,
        job_id=alloc.job_id,
        terminal=alloc.terminal,
        cpu=held.cpu,
        memory_mb=held.memory_mb,
        disk_mb=held.disk_mb,
    )


def _memoized(
    memo: dict[str, tuple[int, Any]],
    items: Mapping[str, Any],
    index: Callable[[Any], int],
    make: Callable[[Any], Any],
) -> list[Any]:
    out = []
    for key, item in items.items():
        got = memo.get(key)
        if got is None or got[0] != index(item):
            got = (index(item), make(item))
            memo[key] = got
        out.append(got[1])
    for gone in [k for k in memo if k not in items]:
        del memo[gone]
    return out


# ----------------------------------------------------------------------------- the controller


class Waitlist:
    """The waitlist controller's state: its configuration and the decoded-input memo."""

    def __init__(
        self, settings: Settings | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._settings = settings
        self._config: Config | None = None
        self._clock = clock
        self._memo = _Memo()
        self._warned_full = False
        # Pages this process wrote, with the index each had before (0: created) and whether
        # the write deleted it: until the page watch shows every one of them moved, a pass
        # reads the pages from Consul; after, it takes them from the watch.
        self._behind: dict[str, tuple[int, bool]] = {}
        self._read_fresh = True

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = Config.of(self._settings or Settings.from_env())
        return self._config

    async def startup(self, deps: Dependencies) -> None:
        """Read and check the settings and the job template once, before anything runs."""
        _ = self.config
        LIST_LIMIT.set(self.config.list_limit)
        log.info(
            "waitlist configured",
            template=self.config.template.source,
            per_user=str(self.config.template.resources),
            max_users=self.config.max_users,
            list_limit=self.config.list_limit,
        )

    # -- reading

    def _pages(self, ctx: Context, stored: list[KVEntry]) -> WaitingList:
        """All pages -> one list; each page decoded once per ModifyIndex."""
        fresh = False
        for entry in stored:
            got = self._memo.pages.get(entry.key)
            if got is None or got[0] != entry.modify_index:
                self._memo.pages[entry.key] = (entry.modify_index, decode_pages([entry]))
                fresh = True
        keys = {e.key for e in stored}
        for gone in [k for k in self._memo.pages if k not in keys]:
            del self._memo.pages[gone]
        whole = merge_pages(part for _, part in self._memo.pages.values())
        for problem in whole.problems:
            ctx.status.set(
                "Invalid",
                f"{problem.key}: {problem.message}",
                key=f"pages/{problem.key.rsplit('/', 1)[-1]}",
            )
        if whole.problems and fresh:
            ctx.log.warning(
                "waiting list holds values it cannot use; they are rewritten without them",
                problems=[f"{p.key}: {p.message}" for p in whole.problems[:10]],
            )
        return whole

    def _requests(self, ctx: Context) -> tuple[dict[str, int], frozenset[str]]:
        """Valid requests (user -> arrival order) and every user with a request key."""
        cache: Mapping[str, KVEntry] = ctx.cache(REQUESTS_WATCH)
        max_len = self.config.template.max_user_id_length
        valid: dict[str, int] = {}
        present: set[str] = set()
        memo = self._memo.requests
        for key, entry in cache.items():
            user = user_of_key(REQUESTS_PREFIX, key)
            if user is None:
                continue
            present.add(user)
            got = memo.get(user)
            if got is None or got[0] != entry.modify_index:
                got = (entry.modify_index, self._check(ctx, user, entry, max_len))
                memo[user] = got
            elif got[1] is not None:
                # Still invalid: say so again (status entries not repeated are cleared).
                ctx.status.set("Invalid", got[1], key=user, observed_index=got[0])
            if got[1] is None:
                valid[user] = entry.create_index
        for gone in [u for u in memo if u not in present]:
            del memo[gone]
        return valid, frozenset(present)

    def _check(self, ctx: Context, user: str, entry: KVEntry, max_len: int) -> str | None:
        """Why this request cannot be served (reported), or None when it is fine."""
        try:
            request = decode(UserRequest, entry.value, key=entry.key)
        except InvalidValue as exc:
            # ctx.parse does the reporting (log, metric, status) for a bad value.
            ctx.parse(UserRequest, entry, key=entry.key, report_as=user)
            return str(exc)
        problem: str | None = None
        if len(user) > max_len:
            problem = (
                f"user id is {len(user)} characters; the job template's service names allow "
                f"at most {max_len}"
            )
        else:
            try:
                values_for(user, request, self.config.settings)
            except NotOffered as exc:
                problem = str(exc)
        if problem is not None:
            INVALID_INPUT.labels(controller=NAME, kind="unservable").inc()
            ctx.log.warning("skipping request", user=user, error=problem)
            ctx.status.set("Invalid", problem, key=user, observed_index=entry.modify_index)
        return problem

    def _capacity(self, ctx: Context) -> tuple[int, frozenset[str]]:
        """(users that fit in free resources now, users whose job holds resources)."""
        nodes = _memoized(
            self._memo.nodes, ctx.cache(NODES_WATCH), lambda n: n.modify_index, node_info
        )
        allocs = _memoized(
            self._memo.allocs,
            ctx.cache(ALLOCATIONS_WATCH),
            lambda a: a.modify_index,
            alloc_info,
        )
        free = free_resources(nodes, allocs, self.config.placement)
        fit = users_that_fit(free, self.config.template.resources)
        placed = frozenset(
            user
            for a in allocs
            if not a.terminal and a.job_id.startswith(JOB_PREFIX)
            if (user := user_of_job(a.job_id)) is not None
        )
        return fit, placed

    # -- the pass

    async def _stored(self, ctx: Context) -> list[KVEntry]:
        """The pages with the ModifyIndexes to CAS on.

        From the page watch when it has seen every write of this process (one read less per
        pass, and the waiting list is not encoded by Consul once more per change); from Consul
        on the first pass, after a conflict, and while the watch lags behind our own writes.
        A page someone else changed meanwhile fails the CAS, and the next pass reads afresh.
        """
        cache: Mapping[str, KVEntry] = ctx.cache(PAGES_WATCH)
        if not self._read_fresh and all(
            _moved(cache.get(k), index, deleted) for k, (index, deleted) in self._behind.items()
        ):
            self._behind.clear()
            PAGE_READS.labels(source="watch").inc()
            return list(cache.values())
        self._read_fresh = False
        self._behind.clear()
        PAGE_READS.labels(source="consul").inc()
        return await ctx.kv.list(WAITING_KEY)

    async def reconcile(self, ctx: Context, key: str) -> Result | None:
        config = self.config
        stored = await self._stored(ctx)
        current = self._pages(ctx, stored)
        requests, present = self._requests(ctx)
        fit, placed = self._capacity(ctx)
        now = self._clock()
        observed = Observed(
            current=current.entries,
            requests=requests,
            present=present,
            fit=fit,
            placed=placed,
            max_users=config.max_users,
            list_limit=config.list_limit,
            now=int(now),
        )
        result = plan(observed)
        layout = plan_pages(result.desired, current)
        for group in transactions(layout.writes):
            if not await ctx.kv.apply([_op(w) for w in group]):
                LIST_WRITES.labels(outcome="conflict").inc()
                self._read_fresh = True
                # Someone wrote a page since we read it (a previous leader): read again.
                raise TemporaryError("a waiting-list page changed while writing; re-reading")
            LIST_WRITES.labels(outcome="committed").inc()
            for w in group:
                self._behind[w.key] = (w.index, w.value is None)
        self._report(ctx, result, layout.pages, layout.writes, current, now)
        return None

    def _report(
        self,
        ctx: Context,
        result: Plan,
        pages: Mapping[int, Mapping[str, WaitingEntry]],
        writes: Iterable[PageWrite],
        before: WaitingList,
        now: float,
    ) -> None:
        claimed = sum(1 for e in result.desired.values() if e.claimed)
        USERS.labels(state="claimed").set(claimed)
        USERS.labels(state="waiting").set(len(result.desired) - claimed)
        CAPACITY_FREE.set(result.free)
        CAPACITY.set(claimed + result.free)
        UNPLACED.set(len(result.unplaced))
        REFUSED.set(len(result.refused))
        written = {w.number: w.size for w in writes}
        sizes = [
            written[n] if n in written else len(before.pages[n].raw) if n in before.pages else 2
            for n in pages
        ]
        LIST_BYTES.set(sum(sizes))
        PAGE_BYTES.set(max(sizes, default=0))
        PAGES.set(len(pages))
        for user in result.claimed:
            since = result.desired[user].since
            if since is not None:
                QUEUE_WAIT.observe(max(0.0, now - since))
        if result.joined or result.left or result.claimed:
            ctx.log.info(
                "waiting list updated",
                joined=len(result.joined),
                left=len(result.left),
                claimed=len(result.claimed),
                waiting=len(result.desired) - claimed,
                free=result.free,
            )
        limit = self.config.list_limit
        if result.refused:
            ctx.log.error(
                "waiting list full: refusing new users until others leave",
                refused=len(result.refused),
                limit=limit,
            )
            for user in result.refused:
                ctx.status.set(
                    "Refused",
                    f"the waiting list is full ({limit} users, MANTICORE_WAITING_LIST_MAX_USERS);"
                    " this user joins when others leave",
                    key=user,
                )
        elif len(result.desired) >= WARN_FILL * limit:
            if not self._warned_full:
                ctx.log.error(
                    "waiting list nearly full",
                    users=len(result.desired),
                    limit=limit,
                )
                self._warned_full = True
        else:
            self._warned_full = False


def _moved(entry: KVEntry | None, index: int, deleted: bool) -> bool:
    """Whether a watched page shows our write over ``index`` (or something newer)."""
    if entry is None:
        return deleted
    return entry.modify_index != index


def _op(write: PageWrite) -> KVOp:
    if write.value is None:
        return KVOp.delete_cas(write.key, index=write.index)
    return KVOp.cas(write.key, write.value, index=write.index)


def build(settings: Settings | None = None, **options: Any) -> Controller:
    """The waitlist controller (``settings`` None: read from the environment at start)."""
    state = Waitlist(settings, **options)
    everything = constant_key(KEY)
    return Controller(
        name=NAME,
        description="requests + Nomad capacity -> manticore/waiting/data (FIFO, paged, CAS)",
        reconcile=state.reconcile,
        startup=state.startup,
        watches=[
            watches.kv(REQUESTS_PREFIX, to_keys=everything, name=REQUESTS_WATCH),
            watches.kv(WAITING_KEY, recurse=True, to_keys=everything, name=PAGES_WATCH),
            watches.nomad("nodes", to_keys=everything, name=NODES_WATCH),
            # Every namespace: other teams' allocations use the same nodes.
            watches.nomad("allocations", to_keys=everything, name=ALLOCATIONS_WATCH, namespace="*"),
        ],
        writes=[f"{WAITING_KEY} (+ {WAITING_KEY}-<n> pages)"],
        models={"manticore-request": UserRequest, "manticore-waiting-list": WaitingPage},
        needs=frozenset({"consul", "nomad"}),
        workers=1,
        resync_period=30,
        reconcile_timeout=60,
    )


controller = build()

__all__ = ["DEFAULT_MAX_USERS", "Waitlist", "build", "controller"]
