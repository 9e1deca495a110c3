"""The front door's view of Consul: one blocking query per prefix, shared by everyone.

Five :class:`~reconciler.sources.kv.KVSource` watches (requests, the waiting-list pages,
``haproxy/``, ELB records, expiry records) keep warm caches. Every ``GET`` is answered from them
(no Consul request), and every open event stream is fed from them: when a watch reports a
change, the users it concerns are worked out once (a user's own keys; everyone for the waiting
list, whose positions all shift, and for ``haproxy/domainName``/``mainPort``), each such user's
status is computed and encoded once, and handed to that user's open streams, skipping users
whose status did not change. 1,000 open streams cost the same five long polls as one.

A stream keeps only the latest status (a slot, not a queue): a slow client skips intermediate
states rather than make the process buffer them.

The fan-out is built to cost one loop pass per change: the ``status`` event is encoded once per
user (a waiting user's by splicing position and line length into a template made once per
request, since moving the line changes nothing else of theirs), every stream of the user gets
the same bytes, and a push only resolves the stream's future; each stream's task then writes
its bytes with one ``send``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from controllers.api.elb import ListenerRecord
from controllers.api.expiry import EXPIRY_PREFIX, ExpiryRecord
from controllers.api.haproxy import UserRoutes
from controllers.api.ids import (
    ELB_PREFIX,
    HAPROXY_DATA_PREFIX,
    HAPROXY_DOMAIN_KEY,
    HAPROXY_MAIN_PORT_KEY,
    HAPROXY_PREFIX,
    REQUESTS_PREFIX,
    WAITING_KEY,
    user_of_key,
)
from controllers.api.requests import UserRequest
from controllers.api.view import PublicEndpoints, UserStatus, positions, user_status
from controllers.api.waiting import WaitingList, decode_pages
from controllers.intake import metrics
from controllers.settings import Settings
from reconciler.clients.consul import KVEntry
from reconciler.kv import decode
from reconciler.result import InvalidValue
from reconciler.sources.base import Change
from reconciler.sources.kv import KVReader, KVSource

log = logging.getLogger("controllers.intake")

M = TypeVar("M", bound=BaseModel)
COMPONENT = "manticore-api"
EMPTY_REQUEST = UserRequest()
# Unknown users' (absent) statuses are remembered only this far: ids are the caller's choice.
MAX_ENCODED = 100_000


class Subscription:
    """One open event stream: the latest event for its user (a slot), and a wake-up.

    The cache hands it the event's finished bytes (encoded once per user and change, shared by
    all of the user's streams); the stream's task only writes them. The wake-up is a bare
    future on the running loop, so a push costs a ``set_result`` and nothing else. The timeout
    (the keep-alive) is one timer per stream moved forward lazily: a wait only records its
    deadline, and the timer, when it fires early, re-arms itself for the latest deadline; a busy
    stream touches no timer per event.
    """

    __slots__ = (
        "_due",
        "_pending",
        "_timer",
        "_timer_at",
        "_waiter",
        "closing",
        "ended",
        "gone",
        "latest",
        "pushed_at",
        "user",
    )

    def __init__(self, user: str) -> None:
        self.user = user
        self.latest: bytes | None = None
        self.ended = False
        self.closing = False
        self.gone = False
        self.pushed_at: float | None = None
        self._pending = False
        self._waiter: asyncio.Future[None] | None = None
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def push(self, event: bytes | None, *, at: float | None = None) -> None:
        """``event`` None: the user's request is gone; the stream ends."""
        if event is None:
            self.ended = True
        else:
            self.latest = event
        self.pushed_at = at
        self._pending = True
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a push; True if one came since the last call."""
        if not self._pending and not self.closing and not self.gone:
            loop = asyncio.get_running_loop()
            self._due = due = loop.time() + timeout
            if self._timer is None or self._timer_at > due:
                if self._timer is not None:
                    self._timer.cancel()
                self._arm(loop, due)
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        pushed = self._pending
        self._pending = False
        return pushed

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        self._timer_at = at
        self._timer = loop.call_at(at, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        # The loop's clock may round (uvloop: milliseconds): "due" within a millisecond.
        if loop.time() >= self._due - 0.001:
            self.wake()
        else:
            self._arm(loop, self._due)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def status_event(payload: bytes) -> bytes:
    return b"event: status\ndata: " + payload + b"\n\n"


# Stand-ins for a waiting user's position and line length in a template (see _WaitingTemplate).
_POSITION_MARK = b"1000000007"
_WAITING_MARK = b"1000000009"


@dataclass(frozen=True)
class _WaitingTemplate:
    """A waiting user's encoded status with holes for ``position`` and ``waiting``.

    Moving the line changes every waiting user's position and nothing else of theirs, so the
    status is encoded once (by the view's own model, with marker numbers) per request and then
    spliced per change: the same bytes as encoding it afresh, for a fraction of the cost.
    """

    request: UserRequest
    public: PublicEndpoints
    head: bytes
    middle: bytes
    tail: bytes

    def render(self, position: int, waiting: int) -> bytes:
        return b"%b%d%b%d%b" % (self.head, position, self.middle, waiting, self.tail)


@dataclass(frozen=True)
class _Watch:
    name: str
    key: str
    recurse: bool


WATCHES = (
    _Watch("requests", REQUESTS_PREFIX, True),
    _Watch("waiting", WAITING_KEY, True),
    _Watch("haproxy", HAPROXY_PREFIX, True),
    _Watch("elb", ELB_PREFIX, True),
    _Watch("expiry", EXPIRY_PREFIX, True),
)


class ClusterCache:
    """Decoded caches of every prefix the API reads, and the open streams to tell."""

    def __init__(
        self,
        consul: KVReader,
        settings: Settings,
        *,
        wait: float = 300.0,
        timer: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self.sources = {
            w.name: KVSource(consul, w.key, recurse=w.recurse, name=f"kv:{w.key}", wait=wait)
            for w in WATCHES
        }
        self.requests: dict[str, UserRequest | None] = {}
        self.request_index: dict[str, int] = {}
        self.routes: dict[str, UserRoutes] = {}
        self.listeners: dict[str, ListenerRecord] = {}
        self.expiry: dict[str, ExpiryRecord] = {}
        self.waiting = WaitingList()
        self._positions: dict[str, int] | None = None
        self.domain: str | None = None
        self.main_port: int | None = None
        self._subscribers: dict[str, set[Subscription]] = {}
        self._last_sent: dict[str, bytes] = {}
        self._templates: dict[str, _WaitingTemplate | None] = {}
        self._public: PublicEndpoints | None = None
        # Encoded statuses, kept until a change concerns their user: a GET is a dict lookup.
        self._encoded: dict[str, bytes | None] = {}
        self._timer = timer
        self._last_change = time.monotonic()
        self.streams = 0
        # Called after every change is folded in (writers waiting to see their own write).
        self.after_change: list[Callable[[], None]] = []

    # ------------------------------------------------------------------------ running

    @property
    def ready(self) -> bool:
        return all(source.ready for source in self.sources.values())

    def readiness(self) -> dict[str, bool]:
        return {name: source.ready for name, source in self.sources.items()}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            for name, source in self.sources.items():
                tg.start_soon(
                    functools.partial(source.run, self._handler(name), controller=COMPONENT)
                )
            task_status.started()

    async def wait_ready(self) -> None:
        for source in self.sources.values():
            await source.wait_ready()

    def _handler(self, name: str) -> Callable[[Sequence[Change]], None]:
        apply = getattr(self, f"_apply_{name}")

        def handle(changes: Sequence[Change]) -> None:
            self._last_change = time.monotonic()
            affected: set[str] | None = apply(changes)
            if affected is None:
                self._encoded.clear()
            else:
                for user in affected:
                    self._encoded.pop(user, None)
            self._notify(affected)
            for callback in self.after_change:
                callback()

        return handle

    def quiet_for(self) -> float:
        """Seconds since the last change was handled (and its events handed out)."""
        return time.monotonic() - self._last_change

    # ------------------------------------------------------------------------ folding changes

    def _decode(self, model: type[M], entry: KVEntry, kind: str) -> M | None:
        try:
            return decode(model, entry.value, key=entry.key)
        except InvalidValue as exc:
            metrics.INVALID.labels(kind=kind).inc()
            log.warning("ignoring invalid %s at %s: %s", kind, entry.key, exc)
            return None

    def _apply_requests(self, changes: Sequence[Change]) -> set[str]:
        users = set()
        for change in changes:
            user = user_of_key(REQUESTS_PREFIX, change.id)
            if user is None:
                continue
            users.add(user)
            self._templates.pop(user, None)
            if change.deleted:
                self.requests.pop(user, None)
                self.request_index.pop(user, None)
            else:
                self.requests[user] = self._decode(UserRequest, change.item, "request")
                self.request_index[user] = change.item.modify_index
        return users

    def _apply_waiting(self, changes: Sequence[Change]) -> None:
        self.waiting = decode_pages(self.sources["waiting"].items().values())
        self._positions = None
        return  # positions of everyone may have moved

    def _apply_haproxy(self, changes: Sequence[Change]) -> set[str] | None:
        users: set[str] = set()
        everyone = False
        for change in changes:
            if change.id in (HAPROXY_DOMAIN_KEY, HAPROXY_MAIN_PORT_KEY):
                everyone = True
                self._globals()
                continue
            user = user_of_key(HAPROXY_DATA_PREFIX, change.id)
            if user is None:
                continue
            users.add(user)
            routes = None if change.deleted else self._decode(UserRoutes, change.item, "routes")
            self._set(self.routes, user, routes)
        return None if everyone else users

    def _globals(self) -> None:
        self._public = None
        items = self.sources["haproxy"].items()
        domain = items.get(HAPROXY_DOMAIN_KEY)
        port = items.get(HAPROXY_MAIN_PORT_KEY)
        self.domain = (
            domain.value.decode(errors="replace").strip() if domain and domain.value else None
        )
        text = port.value.decode(errors="replace").strip() if port and port.value else ""
        self.main_port = int(text) if text.isdigit() and 0 < int(text) < 65536 else None

    def _apply_elb(self, changes: Sequence[Change]) -> set[str]:
        return self._apply_per_user(changes, ELB_PREFIX, ListenerRecord, self.listeners, "elb")

    def _apply_expiry(self, changes: Sequence[Change]) -> set[str]:
        return self._apply_per_user(changes, EXPIRY_PREFIX, ExpiryRecord, self.expiry, "expiry")

    def _apply_per_user(
        self,
        changes: Sequence[Change],
        prefix: str,
        model: type[M],
        into: dict[str, M],
        kind: str,
    ) -> set[str]:
        users = set()
        for change in changes:
            user = user_of_key(prefix, change.id)
            if user is None:
                continue
            users.add(user)
            value = None if change.deleted else self._decode(model, change.item, kind)
            self._set(into, user, value)
        return users

    @staticmethod
    def _set(into: dict[str, Any], user: str, value: Any) -> None:
        if value is None:
            into.pop(user, None)
        else:
            into[user] = value

    # ------------------------------------------------------------------------ reading

    def public(self) -> PublicEndpoints:
        """How users reach us; the same object until ``haproxy/`` globals change."""
        if self._public is None:
            self._public = self._make_public()
        return self._public

    def _make_public(self) -> PublicEndpoints:
        api = self.settings.api
        elb = self.settings.elb.enabled
        port = api.public_http_port
        if port is None:
            port = self.settings.elb.http_port if elb else self.main_port
        if port is None:
            port = self.settings.haproxy.main_port
        return PublicEndpoints(
            domain=self.domain or self.settings.haproxy.domain_name,
            http_scheme=api.public_scheme,
            http_port=port,
            tcp_host=api.public_tcp_host,
            elb=elb,
            reset_allowed=self.settings.usage.reset_timer_allowed,
        )

    def positions(self) -> Mapping[str, int]:
        if self._positions is None:
            self._positions = positions(self.waiting)
        return self._positions

    def status(self, user: str, public: PublicEndpoints | None = None) -> UserStatus | None:
        """The user's status from the caches; None when there is no request."""
        if user not in self.requests:
            return None
        request = self.requests[user] or EMPTY_REQUEST
        ahead = self.positions()
        return user_status(
            user,
            request,
            entry=self.waiting.entries.get(user),
            position=ahead.get(user),
            waiting=len(ahead),
            routes=self.routes.get(user),
            listener=self.listeners.get(user),
            expiry=self.expiry.get(user),
            public=public or self.public(),
        )

    def _encode(self, user: str, public: PublicEndpoints) -> bytes | None:
        """The user's status as JSON; a waiting user's is spliced into its template."""
        request = self.requests.get(user, EMPTY_REQUEST) or EMPTY_REQUEST
        ahead = self.positions()
        position = ahead.get(user)
        if position is not None and user in self.requests:
            template = self._templates.get(user)
            if (
                template is None
                or template.request is not request
                or (template.public is not public and template.public != public)
            ):
                template = self._template(user, request, public)
            if template is not None:
                return template.render(position, len(ahead))
        status = self.status(user, public)
        return None if status is None else status.model_dump_json().encode()

    def _template(
        self, user: str, request: UserRequest, public: PublicEndpoints
    ) -> _WaitingTemplate | None:
        status = user_status(
            user,
            request,
            entry=self.waiting.entries.get(user),
            position=int(_POSITION_MARK),
            waiting=int(_WAITING_MARK),
            routes=None,  # not read for a waiting user
            listener=None,
            expiry=None,
            public=public,
        )
        encoded = status.model_dump_json().encode()
        template = None
        if encoded.count(_POSITION_MARK) == 1 and encoded.count(_WAITING_MARK) == 1:
            head, rest = encoded.split(_POSITION_MARK)
            middle, tail = rest.split(_WAITING_MARK)
            if head.endswith(b'"position":') and middle.endswith(b'"waiting":'):
                template = _WaitingTemplate(request, public, head, middle, tail)
        self._templates[user] = template
        return template

    def has_request(self, user: str) -> bool:
        return user in self.requests

    # ------------------------------------------------------------------------ streams

    @contextmanager
    def subscribe(self, user: str) -> Iterator[Subscription]:
        subscription = Subscription(user)
        self._subscribers.setdefault(user, set()).add(subscription)
        self.streams += 1
        metrics.STREAMS.inc()
        try:
            yield subscription
        finally:
            subscription.close()
            self.streams -= 1
            metrics.STREAMS.dec()
            subs = self._subscribers.get(user)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._subscribers[user]
                    self._last_sent.pop(user, None)

    def streams_of(self, user: str) -> int:
        return len(self._subscribers.get(user, ()))

    def encoded(self, user: str, public: PublicEndpoints | None = None) -> bytes | None:
        """The user's status as JSON bytes (None: no request), computed once per change."""
        if user in self._encoded:
            return self._encoded[user]
        payload = self._encode(user, public or self.public())
        if len(self._encoded) < MAX_ENCODED or user in self.requests:
            self._encoded[user] = payload
        return payload

    def first_event(self, subscription: Subscription) -> bytes | None:
        """The stream's first ``status`` event (None: no request any more)."""
        payload = self.encoded(subscription.user)
        if payload is None:
            return None
        self._last_sent[subscription.user] = payload
        return status_event(payload)

    def _notify(self, users: set[str] | None) -> None:
        """Push the new status of ``users`` (None: everyone with a stream) to their streams."""
        targets = self._subscribers.keys() if users is None else users & self._subscribers.keys()
        if not targets:
            return
        public = self.public()
        at = self._timer() if self._timer else None
        pushed = 0
        for user in list(targets):
            payload = self.encoded(user, public)
            if payload is not None and self._last_sent.get(user) == payload:
                continue
            event = None
            if payload is not None:
                self._last_sent[user] = payload
                event = status_event(payload)  # once, for all of the user's streams
            for subscription in self._subscribers.get(user, ()):
                subscription.push(event, at=at)
                pushed += 1
        metrics.EVENTS.inc(pushed)

    def close_streams(self) -> None:
        """Shutting down: wake every stream so it ends (its client reconnects elsewhere)."""
        for subs in self._subscribers.values():
            for subscription in subs:
                subscription.closing = True
                subscription.wake()
