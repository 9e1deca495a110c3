"""Leader election per controller through a Consul session and a lock key, with fencing.

One replica of a controller holds ``reconciler/leader/<controller>``; the others stand by with
their sources warm. The holder renews its session at TTL/2 and watches the lock key; the moment
either says the lock is gone (session invalidated, key taken or deleted, or no successful renew
within a TTL) the leader's work is cancelled in-process and the replica campaigns again.

A lost lock is only noticed after the fact, so leadership alone cannot keep a deposed leader from
writing. Every KV write made while leading therefore goes through :class:`FencedKV`: a
transaction whose first operation checks that our session still holds the lock. Consul applies
the check and the write atomically, so a write from a deposed leader is rejected by the server.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

import anyio
from pydantic import BaseModel, ConfigDict, Field

from reconciler import metrics
from reconciler.clients.consul import KVEntry, KVOp, TxnResult
from reconciler.clients.errors import (
    ClientError,
    FencingError,
    NotFound,
    TransactionRolledBack,
)
from reconciler.ratelimit import SYSTEM_CLOCK, Backoff, Clock, TokenBucket

log = logging.getLogger(__name__)

LEADER_PREFIX = "reconciler/leader/"


class LeaderRecord(BaseModel):
    """The value of ``reconciler/leader/<controller>``: who holds the lock, for humans and tools."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    controller: str = Field(description="Name of the leader-elected controller")
    holder: str = Field(description="Identity of the replica holding the lock (host:pid or set)")
    session: str = Field(description="Consul session ID that holds the lock")
    acquired_at: dt.datetime = Field(description="When this holder acquired the lock (UTC)")


class LockClient(Protocol):
    """What leader election needs from Consul."""

    async def session_create(
        self,
        name: str,
        *,
        ttl: int | None = None,
        lock_delay: int = 15,
        behavior: Literal["release", "delete"] = "release",
        node_checks: Sequence[str] | None = None,
    ) -> str: ...

    async def session_renew(self, session_id: str) -> object: ...

    async def session_destroy(self, session_id: str) -> bool: ...

    async def kv_get(self, key: str, *, consistent: bool = False) -> tuple[int, KVEntry | None]: ...

    async def kv_get_blocking(
        self, key: str, *, index: int, wait: float | None = None
    ) -> tuple[int, KVEntry | None]: ...

    async def kv_put(
        self,
        key: str,
        value: bytes | str | None,
        *,
        cas: int | None = None,
        flags: int | None = None,
        acquire: str | None = None,
        release: str | None = None,
    ) -> bool: ...

    async def txn(self, ops: Sequence[KVOp]) -> TxnResult: ...


def default_identity() -> str:
    return os.environ.get("RECONCILER_IDENTITY") or f"{socket.gethostname()}:{os.getpid()}"


class LeaderElector:
    """Campaigns for, holds, and gives up one controller's lock.

    ``run(lead)`` loops for the life of the controller: it creates a session, campaigns, and
    while leading runs ``lead()`` inside a cancel scope that is cancelled the moment the lock is
    lost. ``release()`` gives the lock up (SIGTERM path) so a standby takes over at once.
    """

    def __init__(
        self,
        client: LockClient,
        controller: str,
        *,
        identity: str | None = None,
        ttl: int = 10,
        lock_delay: int = 1,
        prefix: str = LEADER_PREFIX,
        clock: Clock = SYSTEM_CLOCK,
        watch_rate: float = 10.0,
        watch_burst: int = 10,
    ) -> None:
        if ttl < 10:
            # Consul refuses session TTLs under 10 s.
            raise ValueError("session TTL must be at least 10 s")
        self._client = client
        self.controller = controller
        self.identity = identity or default_identity()
        self.ttl = ttl
        self.lock_delay = lock_delay
        self.lock_key = f"{prefix}{controller}"
        self._clock = clock
        self._session: str | None = None
        self._leading = False
        self._known = anyio.Event()
        self._stopping = False
        self._run_scope: anyio.CancelScope | None = None
        self._terms = 0
        # Only leader-elected controllers have this series, so a "no leader" alert
        # (max by (name) (leader_election_master_status) == 0) cannot fire for the others.
        self._status = metrics.init_leader(controller)
        # The lock-key long polls follow the same client-side rate limit as every other watch:
        # a server that returns early (or a flapping key) must not turn them into a hot loop.
        self._bucket = TokenBucket(rate=watch_rate, burst=watch_burst, clock=clock)

    # -- state -----------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def state_known(self) -> bool:
        """True once the first campaign has said whether we lead or stand by."""
        return self._known.is_set()

    @property
    def terms(self) -> int:
        """How many times this replica has become leader."""
        return self._terms

    @property
    def session(self) -> str | None:
        return self._session

    async def wait_state_known(self) -> None:
        await self._known.wait()

    def fence(self) -> tuple[str, str]:
        """The (lock key, session) a write must be checked against; FencingError if not leading."""
        if not self._leading or self._session is None:
            raise FencingError(f"{self.controller}: not the leader, write refused")
        return self.lock_key, self._session

    def _set_leading(self, leading: bool) -> None:
        self._leading = leading
        self._status.set(1 if leading else 0)
        self._known.set()

    # -- the loop ----------------------------------------------------------------------------
    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(base=0.5, cap=max(self.ttl, 5.0))
        with anyio.CancelScope() as scope:
            self._run_scope = scope
            while not self._stopping:
                # _term runs a task group, so its errors arrive as exception groups. A Consul
                # error, or any bug, ends this term only: back off and campaign again.
                failure: BaseException | None = None
                try:
                    await self._term(lead)
                    backoff.reset()
                except* Exception as group:
                    failure = _first_leaf(group)
                if failure is None:
                    continue
                # Not "standby": a replica that cannot reach Consul does not know who leads.
                self._leading = False
                self._status.set(0)
                delay = backoff.next_delay()
                if isinstance(failure, ClientError):
                    log.warning(
                        "leader election failed, retrying",
                        extra={
                            "controller": self.controller,
                            "error": str(failure),
                            "retry_in": delay,
                        },
                    )
                else:
                    log.error(
                        "leader election raised unexpectedly, retrying",
                        exc_info=failure,
                        extra={"controller": self.controller, "retry_in": delay},
                    )
                await self._clock.sleep(delay)

    async def _term(self, lead: Callable[[], Awaitable[None]]) -> None:
        session = await self._client.session_create(
            f"reconciler-{self.controller}",
            ttl=self.ttl,
            lock_delay=self.lock_delay,
            behavior="release",
            node_checks=[],
        )
        self._session = session
        lost: list[str] = []
        acquired = False
        try:
            async with anyio.create_task_group() as tg:

                def lose(reason: str) -> None:
                    # Stop claiming leadership now, not once the cancelled work has unwound:
                    # fence() must refuse writes from this instant.
                    self._set_leading(False)
                    lost.append(reason)
                    tg.cancel_scope.cancel()

                tg.start_soon(self._renew_loop, session, lose)
                await self._campaign(session)
                acquired = True
                self._terms += 1
                self._set_leading(True)
                log.info(
                    "became leader",
                    extra={"controller": self.controller, "session": session, "term": self._terms},
                )
                tg.start_soon(self._watch_lock, session, lose)
                await lead()
                # lead() returning means the controller is stopping; give the lock back.
                tg.cancel_scope.cancel()
        finally:
            # Released by release() already, or lost: only a term that ends while still holding
            # the lock (lead() returned, or cancellation from outside) must release it here.
            was_leading = self._leading
            self._set_leading(False)
            self._session = None
            if lost and acquired:
                log.warning(
                    "lost leadership", extra={"controller": self.controller, "reason": lost[0]}
                )
            with anyio.move_on_after(5, shield=True):
                await self._give_up(session, held=was_leading)

    async def _campaign(self, session: str) -> None:
        record = LeaderRecord(
            controller=self.controller,
            holder=self.identity,
            session=session,
            acquired_at=dt.datetime.now(dt.UTC),
        )
        value = record.model_dump_json().encode()
        held_back = False
        while True:
            if held_back:
                # The key was free yet the acquire failed: lock-delay after the previous
                # holder's session was invalidated. Retry a few times per lock-delay.
                await self._clock.sleep(max(0.05, min(self.lock_delay, 1.0) / 4))
            if await self._client.kv_put(self.lock_key, value, acquire=session):
                return
            self._set_leading(False)
            # Wait until the lock is free. The first read does not block (the key may be free
            # already, held back only by lock-delay); then block on the key itself: a held key
            # only changes when its holder writes it, releases it or loses its session.
            index = 0
            held_back = True
            while True:
                await self._bucket.acquire()
                new_index, entry = await self._client.kv_get_blocking(
                    self.lock_key, index=index, wait=self.ttl
                )
                if entry is None or entry.session is None:
                    break
                held_back = False
                index = max(new_index if new_index >= index else 0, 1)

    async def _renew_loop(self, session: str, lose: Callable[[str], None]) -> None:
        last_ok = self._clock.monotonic()
        while True:
            await self._clock.sleep(self.ttl / 2)
            try:
                await self._client.session_renew(session)
                last_ok = self._clock.monotonic()
            except NotFound:
                lose("session invalidated")
                return
            except ClientError as exc:
                if self._clock.monotonic() - last_ok >= self.ttl:
                    lose(f"could not renew session within its TTL: {exc}")
                    return
                log.warning(
                    "session renew failed", extra={"controller": self.controller, "error": str(exc)}
                )
                await self._clock.sleep(self.ttl / 10)

    async def _watch_lock(self, session: str, lose: Callable[[str], None]) -> None:
        index = 0
        backoff = Backoff(base=0.2, cap=self.ttl / 2)
        while True:
            await self._bucket.acquire()
            try:
                new_index, entry = await self._client.kv_get_blocking(
                    self.lock_key, index=index, wait=60.0
                )
            except ClientError:
                # The renew loop decides when an unreachable Consul means the lock is lost.
                await self._clock.sleep(backoff.next_delay())
                continue
            backoff.reset()
            if entry is None or entry.session != session:
                lose("lock key no longer held by our session")
                return
            index = max(new_index if new_index >= index else 0, 1)

    async def _give_up(self, session: str, *, held: bool) -> None:
        try:
            if held:
                # Releasing (rather than letting the session expire) skips lock-delay, so a
                # standby can take over at once.
                await self._client.kv_put(self.lock_key, b"", release=session)
            await self._client.session_destroy(session)
        except ClientError as exc:
            log.warning(
                "could not release leadership cleanly; it will expire with the session TTL",
                extra={"controller": self.controller, "error": str(exc)},
            )

    async def release(self) -> None:
        """Stop campaigning and give the lock up now (idempotent).

        The key is released explicitly *before* the session is destroyed: destroying a session
        that holds a lock counts as invalidation and would make the key unacquirable for
        lock-delay, while a release frees it for a standby at once.
        """
        self._stopping = True
        session = self._session
        if session is not None and self._leading:
            self._set_leading(False)
            with anyio.move_on_after(5, shield=True):
                try:
                    await self._client.kv_put(self.lock_key, b"", release=session)
                except ClientError as exc:
                    log.warning(
                        "could not release the lock; it expires with the session",
                        extra={"controller": self.controller, "error": str(exc)},
                    )
        if self._run_scope is not None:
            self._run_scope.cancel()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


class FencedKV:
    """The KV writer handed to reconciles: every write is checked against the leader lock.

    Without an elector (controllers that do not need leadership) writes go straight through.
    Values are bytes; ``put_model`` / ``decode`` in :mod:`reconciler.kv` handle JSON models.
    """

    MAX_OPS = 128

    def __init__(
        self, client: LockClient, controller: str, elector: LeaderElector | None = None
    ) -> None:
        self._client = client
        self.controller = controller
        self._elector = elector
        self._outcomes = {
            outcome: metrics.FENCED_WRITES.labels(controller=controller, outcome=outcome)
            for outcome in metrics.FENCING_OUTCOMES
        }

    @property
    def fenced(self) -> bool:
        return self._elector is not None

    async def get(self, key: str) -> KVEntry | None:
        return (await self._client.kv_get(key))[1]

    async def put(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        """Write ``key``; with ``cas``, only if its ModifyIndex still is ``cas`` (0 = absent)."""
        op: KVOp = KVOp.set(key, value) if cas is None else KVOp.cas(key, value, index=cas)
        return await self.apply([op])

    async def delete(self, key: str, *, cas: int | None = None) -> bool:
        op = KVOp.delete(key) if cas is None else KVOp.delete_cas(key, index=cas)
        return await self.apply([op])

    async def delete_tree(self, prefix: str) -> bool:
        return await self.apply([KVOp.delete_tree(prefix)])

    async def apply(self, ops: Sequence[KVOp]) -> bool:
        """Apply ``ops`` atomically. False when a cas/check op failed; FencingError if deposed."""
        if not ops:
            return True
        if self._elector is None:
            if len(ops) == 1 and ops[0].verb in ("set", "cas"):
                return await self._direct(ops[0])
            return await self._txn(list(ops), fenced=False)
        try:
            lock_key, session = self._elector.fence()
        except FencingError:
            self._outcomes["rejected"].inc()
            raise
        if len(ops) + 1 > self.MAX_OPS:
            raise ValueError(f"at most {self.MAX_OPS - 1} operations per fenced write")
        return await self._txn([KVOp.check_session(lock_key, session), *ops], fenced=True)

    async def _direct(self, op: KVOp) -> bool:
        # A plain PUT is one round trip and no transaction: the common unfenced case.
        return await self._client.kv_put(op.key, op.value or b"", cas=op.index, flags=op.flags)

    async def _txn(self, ops: list[KVOp], *, fenced: bool) -> bool:
        try:
            await self._client.txn(ops)
        except TransactionRolledBack as exc:
            failed = {index for index, _ in exc.errors}
            if fenced and 0 in failed:
                self._outcomes["rejected"].inc()
                raise FencingError(
                    f"{self.controller}: write rejected, this replica no longer holds the lock"
                ) from exc
            self._outcomes["conflict"].inc()
            return False
        if fenced:
            self._outcomes["committed"].inc()
        return True


KV_MODELS = {"reconciler-leader-record": LeaderRecord}
