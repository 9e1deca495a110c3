"""The machinery every watch shares: readiness, metrics, and the blocking-query loop.

Consul and Nomad long polls follow the same client rules (Consul's ``features/blocking.mdx``):
the same index means nothing changed; an index that goes backwards resets to 0; an index is
never used below 1; the loop is rate-limited because a return is no guarantee of change; errors
back off exponentially with jitter and never end the watch. :func:`poll_forever` implements them
once, so a source only says how to fetch and how to fold a result into its cache.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

import anyio
import anyio.lowlevel

from reconciler import metrics
from reconciler.clients.errors import ClientError
from reconciler.ratelimit import SYSTEM_CLOCK, Backoff, Clock, TokenBucket
from reconciler.sources.base import Change, Emit

log = logging.getLogger("reconciler.sources")

T = TypeVar("T")
V = TypeVar("V")

DEFAULT_WAIT = 300.0


@dataclass
class PollSettings:
    """How a watch polls: the server-side ``wait``, the client-side rate limit and backoff."""

    wait: float = DEFAULT_WAIT
    rate: float = 10.0
    burst: int = 10
    backoff_base: float = 0.2
    backoff_cap: float = 30.0
    clock: Clock = field(default=SYSTEM_CLOCK)

    def bucket(self) -> TokenBucket:
        return TokenBucket(rate=self.rate, burst=self.burst, clock=self.clock)

    def backoff(self) -> Backoff:
        return Backoff(base=self.backoff_base, cap=self.backoff_cap)


class WatchBase:
    """Readiness and the item cache; subclasses implement ``run``.

    The ready event is created lazily: a source may be built before an event loop runs.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._ready = False
        self._ready_event: anyio.Event | None = None
        self._items: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def ready(self) -> bool:
        return self._ready

    async def wait_ready(self) -> None:
        if self._ready:
            return
        if self._ready_event is None:
            self._ready_event = anyio.Event()
        await self._ready_event.wait()

    def items(self) -> Mapping[str, Any]:
        return MappingProxyType(self._items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r}, ready={self._ready})"

    def _set_ready(self, controller: str) -> None:
        if self._ready:
            return
        self._ready = True
        metrics.SOURCE_READY.labels(controller=controller, source=self._name).set(1)
        if self._ready_event is not None:
            self._ready_event.set()
        log.info(
            "%s: source %s ready (%d items)",
            controller,
            self._name,
            len(self._items),
            extra={"controller": controller, "source": self._name},
        )

    def _emit(self, emit: Emit, controller: str, changes: Sequence[Change]) -> None:
        """Hand changed items to the controller; a failing callback is logged, never fatal."""
        if not changes:
            return
        metrics.WATCH_EVENTS.labels(controller=controller, source=self._name).inc(len(changes))
        try:
            emit(changes)
        except Exception:
            log.exception(
                "%s: emit from source %s failed",
                controller,
                self._name,
                extra={"controller": controller, "source": self._name},
            )


def replace_items(
    cache: dict[str, V],
    new: Mapping[str, V],
    same: Callable[[V, V], bool] | None = None,
) -> list[Change]:
    """Make ``cache`` equal to ``new`` in place; return what changed, in id order.

    ``same(old, new)`` decides whether an item changed (default ``==``). An item that is "the
    same" is still replaced in the cache (its indexes move on) but is not reported.
    """
    changes: list[Change] = []
    for key, item in new.items():
        old = cache.get(key, _MISSING)
        cache[key] = item
        if old is _MISSING:
            changes.append(Change(key, item))
        elif not (same(old, item) if same is not None else old == item):
            changes.append(Change(key, item, old=old))
    if len(cache) != len(new):
        for key in [k for k in cache if k not in new]:
            changes.append(Change(key, cache.pop(key), deleted=True))
    changes.sort(key=lambda c: c.id)
    return changes


_MISSING: Any = object()


@dataclass
class PollState:
    """The index of one blocking query, kept by Consul's rules."""

    index: int = 0
    resets: int = 0

    def advance(self, returned: int) -> bool:
        """Fold in a returned index; ``True`` when the data may have changed.

        Same index: nothing changed. Lower index: reset to 0 (the data is still processed, and
        the next request is a plain read). Otherwise keep it, clamped to >= 1.
        """
        previous = self.index
        if previous and returned == previous:
            return False
        if previous and returned < previous:
            self.index = 0
            self.resets += 1
            return True
        self.index = max(1, returned)
        return True


class IndexResets:
    """The blocking queries one process holds on one server, told when any of them went back.

    A snapshot restore moves every index of a server backwards. A query parked before it is
    answered at once with the lower index (memdb's abandon channel), but one sent just after it
    with the old, higher index blocks for its whole ``wait`` (5 minutes by default), changes or
    not, because the server waits for an index above it. So the first watch of a process that
    sees its index go backwards cancels the others' parked queries, and they re-read (index 0).
    The price of a false alarm (a tombstone reap moves one prefix's index back) is one plain
    read per watch of that server.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self._parked: set[anyio.CancelScope] = set()

    def park(self, scope: anyio.CancelScope) -> None:
        self._parked.add(scope)

    def unpark(self, scope: anyio.CancelScope) -> None:
        self._parked.discard(scope)

    def went_back(self) -> int:
        """Every index read before now is suspect: cancel the parked queries (returns how
        many); the others see the epoch move before they send theirs."""
        self.epoch += 1
        parked, self._parked = self._parked, set()
        for scope in parked:
            scope.cancel()
        return len(parked)


_RESETS: weakref.WeakKeyDictionary[object, IndexResets] = weakref.WeakKeyDictionary()


def index_resets(client: object) -> IndexResets:
    """The :class:`IndexResets` of everything that watches through ``client``."""
    try:
        return _RESETS[client]
    except KeyError:
        resets = _RESETS[client] = IndexResets()
        return resets
    except TypeError:  # not weak-referenceable: a group of its own
        return IndexResets()


async def poll_forever(
    *,
    source: str,
    controller: str,
    fetch: Callable[[int], Awaitable[tuple[int, T]]],
    apply: Callable[[T], None],
    settings: PollSettings,
    what: str,
    on_success: Callable[[], None] | None = None,
    resets_of: IndexResets | None = None,
) -> NoReturn:
    """Run a blocking query forever: ``fetch(index)``, then ``apply(data)`` when it may have
    changed. Errors (of ``fetch`` and ``apply``) are logged and retried with backoff.

    ``resets_of`` (see :class:`IndexResets`) is shared by the watches of one server: when this
    one sees its index go backwards, the others re-read, and the other way round."""
    labels = {"controller": controller, "source": source}
    extra = {"controller": controller, "source": source, "watch": what}
    requests = metrics.WATCH_REQUESTS.labels(**labels)
    errors = metrics.WATCH_ERRORS.labels(**labels)
    resets = metrics.WATCH_INDEX_RESETS.labels(**labels)
    last_success = metrics.WATCH_LAST_SUCCESS.labels(**labels)
    bucket = settings.bucket()
    backoff = settings.backoff()
    state = PollState()
    # The resets epoch when the request that gave ``state.index`` was sent.
    epoch = resets_of.epoch if resets_of is not None else 0
    while True:
        await bucket.acquire()
        if resets_of is not None and state.index and resets_of.epoch != epoch:
            # Another watch of this server saw its index go backwards since this index was
            # read: it may be from before that too, and would block for the whole wait.
            state.index = 0
            state.resets += 1
            resets.inc()
            log.info(
                "%s: another watch of this server went backwards; %s reads again",
                controller,
                what,
                extra=extra,
            )
        requests.inc()
        fetched = False
        try:
            sent = resets_of.epoch if resets_of is not None else 0
            if resets_of is None or not state.index:
                returned, data = await fetch(state.index)
            else:
                with anyio.CancelScope() as parked:
                    resets_of.park(parked)
                    try:
                        returned, data = await fetch(state.index)
                    finally:
                        resets_of.unpark(parked)
                if parked.cancelled_caught:
                    continue  # read again, from 0 (the epoch moved)
            fetched = True
            epoch = sent
            before = state.resets
            changed = state.advance(returned)
            if state.resets != before:
                resets.inc()
                others = resets_of.went_back() if resets_of is not None else 0
                log.info(
                    "%s: %s index went backwards to %d; reset to 0 (%d other watches read again)",
                    controller,
                    what,
                    returned,
                    others,
                    extra=extra,
                )
            if changed:
                apply(data)
        except Exception as exc:
            errors.inc()
            if fetched:
                # ``apply`` failed: re-read everything next time rather than skip this change.
                state.index = 0
            delay = backoff.next_delay()
            log.warning(
                "%s: watch %s of source %s failed: %s; retrying in %.2fs",
                controller,
                what,
                source,
                exc,
                delay,
                extra=extra,
                exc_info=not _expected(exc),
            )
            await settings.clock.sleep(delay)
            continue
        backoff.reset()
        last_success.set(time.time())
        if on_success is not None:
            on_success()
        if changed:
            # Let the workers this change woke run before the next long poll is built and sent
            # (it costs the loop about half a millisecond): dispatch latency, not throughput.
            await anyio.lowlevel.checkpoint()


def _expected(exc: BaseException) -> bool:
    return isinstance(exc, ClientError)
