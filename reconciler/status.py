"""``reconciler/status/<controller>/<key>``: what a controller says about a key it cannot converge.

Kubernetes objects carry a ``status``; our inputs are plain KV values written by someone else,
so a controller reports on a key of its own instead: phase, message, when, and the index of the
input it looked at. Operators (``consul kv get -recurse reconciler/status/``, the status CLI)
see at once why a user is stuck, without reading logs.

Entries clean up after themselves. During a reconcile, ``ctx.status.set()`` records what the
reconcile wants to say; the runner adds ``Error``/``Retrying`` for failures, and after the
reconcile writes only what changed (phase, message or index; the time alone never causes a
write). Every entry records the work key whose reconcile wrote it (``owner``): when that key's
next reconcile does not say it again, the entry is deleted. So a key that converges, an input
that is fixed, and an input that disappears (its key is reconciled once more) all leave no
status behind; an aggregate controller (one work key for all users) reports per user and its
stale entries go the same way. When a replica becomes leader it reads the controller's entries
once; those whose owner is no longer known to any watch are deleted after the first resync.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from reconciler import metrics
from reconciler.clients.consul import KVEntry, KVOp
from reconciler.clients.errors import ClientError, FencingError
from reconciler.kv import KVReader, KVWriter, decode, encode
from reconciler.result import InvalidValue

log = logging.getLogger(__name__)

STATUS_PREFIX = "reconciler/status/"
MAX_MESSAGE = 1024


class StatusEntry(BaseModel):
    """The value of ``reconciler/status/<controller>/<key>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phase: str = Field(max_length=64, description="Error, Retrying, Invalid, Blocked, ...")
    message: str = Field(max_length=MAX_MESSAGE, description="What is wrong, for a human")
    time: dt.datetime = Field(description="When this phase and message were first reported")
    observed_index: int | None = Field(
        default=None, description="ModifyIndex of the input looked at"
    )
    owner: str = Field(description="The work key whose reconcile reported it")

    def same_report(self, other: StatusEntry) -> bool:
        return (self.phase, self.message, self.observed_index, self.owner) == (
            other.phase,
            other.message,
            other.observed_index,
            other.owner,
        )


def status_key(controller: str, key: str) -> str:
    return f"{STATUS_PREFIX}{controller}/{key}"


def _addressable(key: str) -> bool:
    return bool(key) and all(seg not in ("", ".", "..") for seg in key.split("/"))


@dataclass
class StatusReport:
    """What one reconcile said: key -> (phase, message, observed index); None clears."""

    owner: str
    said: dict[str, tuple[str, str, int | None] | None] = field(default_factory=dict)

    def set(
        self, phase: str, message: str, *, key: str | None = None, observed_index: int | None = None
    ) -> None:
        target = self.owner if key is None else key
        text = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
        self.said[target] = (phase, text, observed_index)

    def clear(self, key: str | None = None) -> None:
        self.said[self.owner if key is None else key] = None


class StatusWriter:
    """Keeps ``reconciler/status/<controller>/`` equal to what reconciles last reported."""

    MAX_OPS = 64

    def __init__(
        self, controller: str, reader: KVReader, writer: KVWriter, *, enabled: bool = True
    ) -> None:
        self.controller = controller
        self.enabled = enabled
        self._reader = reader
        self._writer = writer
        self._prefix = f"{STATUS_PREFIX}{controller}/"
        self._known: dict[str, StatusEntry] = {}
        self._by_owner: dict[str, set[str]] = {}
        self._outcomes = {
            o: metrics.STATUS_WRITES.labels(controller=controller, outcome=o)
            for o in metrics.STATUS_OUTCOMES
        }

    @property
    def known(self) -> dict[str, StatusEntry]:
        return dict(self._known)

    def report(self, owner: str) -> StatusReport:
        return StatusReport(owner)

    async def load(self) -> None:
        """Read the controller's entries (on becoming leader: we are their only writer)."""
        self._known.clear()
        self._by_owner.clear()
        if not self.enabled:
            return
        _, entries = await self._reader.kv_list(self._prefix)
        for entry in entries:
            self._adopt(entry)

    def _adopt(self, entry: KVEntry) -> None:
        key = entry.key[len(self._prefix) :]
        try:
            status = decode(StatusEntry, entry.value, key=entry.key)
        except InvalidValue:
            # Not ours to keep: written by hand or by an older version; replaced or removed.
            status = StatusEntry(phase="Unknown", message="", time=_now(), owner=key)
        self._known[key] = status
        self._by_owner.setdefault(status.owner, set()).add(key)

    async def prune(self, live_owners: Iterable[str]) -> None:
        """Delete entries whose owner key no watch knows any more (after a leader's resync)."""
        live = set(live_owners)
        stale = [k for k, s in self._known.items() if s.owner not in live]
        if stale:
            await self._write([], stale)

    async def apply(self, report: StatusReport, *, complete: bool = True) -> None:
        """Write what ``report`` says, and clear what its owner said last time but not now
        (only when the reconcile completed: a failed one may have stopped before saying it)."""
        if not self.enabled:
            return
        owner = report.owner
        said = report.said
        previous = self._by_owner.get(owner, set())
        puts: list[tuple[str, StatusEntry]] = []
        deletes: list[str] = []
        for key, what in said.items():
            if not _addressable(key):
                continue
            if what is None:
                if key in self._known:
                    deletes.append(key)
                continue
            phase, message, index = what
            old = self._known.get(key)
            new = StatusEntry(
                phase=phase,
                message=message,
                time=_now(),
                observed_index=index,
                owner=owner,
            )
            if old is not None and old.same_report(new):
                continue
            if old is not None and (old.phase, old.message) == (phase, message):
                new = new.model_copy(update={"time": old.time})
            puts.append((key, new))
        if complete:
            deletes.extend(k for k in previous if k not in said and k in self._known)
        if puts or deletes:
            await self._write(puts, deletes)

    async def _write(self, puts: Sequence[tuple[str, StatusEntry]], deletes: Sequence[str]) -> None:
        ops = [KVOp.set(status_key(self.controller, k), encode(v)) for k, v in puts]
        ops += [KVOp.delete(status_key(self.controller, k)) for k in deletes]
        try:
            for start in range(0, len(ops), self.MAX_OPS):
                await self._writer.apply(ops[start : start + self.MAX_OPS])
        except (ClientError, FencingError) as exc:
            # A status is advice for operators: never fail a reconcile over it. Forget what we
            # believed so the next report rewrites it.
            self._outcomes["failed"].inc()
            log.warning(
                "could not write status entries",
                extra={"controller": self.controller, "error": str(exc)},
            )
            # Deletes stay known, so the next report retries them.
            for key, _ in puts:
                self._forget(key)
            return
        for key, value in puts:
            self._forget(key)
            self._known[key] = value
            self._by_owner.setdefault(value.owner, set()).add(key)
        for key in deletes:
            self._forget(key)
        if puts:
            self._outcomes["written"].inc(len(puts))
        if deletes:
            self._outcomes["cleared"].inc(len(deletes))

    def _forget(self, key: str) -> None:
        old = self._known.pop(key, None)
        if old is not None:
            owned = self._by_owner.get(old.owner)
            if owned is not None:
                owned.discard(key)
                if not owned:
                    del self._by_owner[old.owner]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


KV_MODELS = {"reconciler-status": StatusEntry}
