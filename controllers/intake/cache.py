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
"""

from __future__ import annotations

import functools
import logging
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
# Unknown users' (absent) statuses are remembered only this far: ids are the caller's choice.
MAX_ENCODED = 100_000


class Subscription:
    """One open event stream: the latest payload for its user, and a wake-up."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.latest: bytes | None = None
        self.ended = False
        self.closing = False
        self.pushed_at: float | None = None
        self._event = anyio.Event()

    def push(self, payload: bytes | None, *, at: float | None = None) -> None:
        """``payload`` None: the user's request is gone; the stream ends."""
        if payload is None:
            self.ended = True
        else:
            self.latest = payload
        self.pushed_at = at
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a push; True if one came (then re-armed)."""
        with anyio.move_on_after(timeout):
            await self._event.wait()
        if not self._event.is_set():
            return False
        self._event = anyio.Event()
        return True


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
        # Encoded statuses, kept until a change concerns their user: a GET is a dict lookup.
        self._encoded: dict[str, bytes | None] = {}
        self._timer = timer
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
        request = self.requests[user] or UserRequest()
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
        status = self.status(user, public)
        payload = None if status is None else status.model_dump_json().encode()
        if len(self._encoded) < MAX_ENCODED or user in self.requests:
            self._encoded[user] = payload
        return payload

    def first_payload(self, subscription: Subscription) -> bytes | None:
        payload = self.encoded(subscription.user)
        if payload is not None:
            self._last_sent[subscription.user] = payload
        return payload

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
            if payload is not None:
                self._last_sent[user] = payload
            for subscription in self._subscribers.get(user, ()):
                subscription.push(payload, at=at)
                pushed += 1
        metrics.EVENTS.inc(pushed)

    def close_streams(self) -> None:
        """Shutting down: wake every stream so it ends (its client reconnects elsewhere)."""
        for subs in self._subscribers.values():
            for subscription in subs:
                subscription.closing = True
                subscription.push(subscription.latest)
