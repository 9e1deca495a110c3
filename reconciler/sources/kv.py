"""Watch one Consul KV key or every key under a prefix, and say which keys changed.

Every Manticore controller watches a KV prefix (``manticore/requests/data/``, ``haproxy/``...),
and the waiting list is a single key. A blocking query returns the whole current state, so the
source keeps a cache and emits only the keys that were added, changed (value, flags or lock
holder) or removed: a return with nothing different, which Consul does often (tombstone reaps,
wait timeouts, writes elsewhere under a missing key), emits nothing, and neither does a value
rewritten with identical bytes (its ModifyIndex moves, nothing a reconcile reads does).

A missing single key is watched by blocking on the index of its 404, which current Consul holds
until that key is written; an older server that returns early finds the key still absent, which
is no event, and the token bucket keeps that from becoming a hot loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from reconciler import metrics
from reconciler.clients.consul import KVEntry
from reconciler.ratelimit import SYSTEM_CLOCK, Clock
from reconciler.sources._watch import (
    DEFAULT_WAIT,
    PollSettings,
    WatchBase,
    index_resets,
    poll_forever,
    replace_items,
)
from reconciler.sources.base import Emit


class KVReader(Protocol):
    """What :class:`KVSource` needs of a Consul client (``ConsulClient`` provides it)."""

    async def kv_get_blocking(
        self, key: str, *, index: int, wait: float | None = None
    ) -> tuple[int, KVEntry | None]: ...

    async def kv_list(
        self,
        prefix: str,
        *,
        index: int = 0,
        wait: float | None = None,
        known: Mapping[str, KVEntry] | None = None,
    ) -> tuple[int, list[KVEntry]]: ...


def same_entry(old: KVEntry, new: KVEntry) -> bool:
    """Equal for a reconcile: same bytes, flags and lock holder (indexes aside)."""
    if old is new:  # reused by the client: its ModifyIndex did not move
        return True
    return old.value == new.value and old.flags == new.flags and old.session == new.session


class KVSource(WatchBase):
    """A watch of one key (``recurse=False``) or a prefix (``recurse=True``).

    ``recurse`` defaults to whether ``key_or_prefix`` ends with ``/``. ``items()`` maps each full
    key to its :class:`KVEntry`; changes carry the full key and the entry. ``wait`` is the
    server-side long-poll duration (Consul's default, 5 min); ``rate``/``burst`` bound requests
    per second.
    """

    def __init__(
        self,
        client: KVReader,
        key_or_prefix: str,
        *,
        recurse: bool | None = None,
        name: str | None = None,
        wait: float = DEFAULT_WAIT,
        rate: float = 10.0,
        burst: int = 10,
        backoff_base: float = 0.2,
        backoff_cap: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.key = key_or_prefix
        self.recurse = key_or_prefix.endswith("/") if recurse is None else recurse
        super().__init__(name or f"kv:{key_or_prefix}{'*' if self.recurse else ''}")
        self._client = client
        self.settings = PollSettings(
            wait=wait,
            rate=rate,
            burst=burst,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            clock=clock,
        )

    async def _fetch(self, index: int) -> tuple[int, dict[str, KVEntry]]:
        wait = self.settings.wait
        if self.recurse:
            got, entries = await self._client.kv_list(
                self.key, index=index, wait=wait, known=self._items
            )
            return got, {e.key: e for e in entries}
        got, entry = await self._client.kv_get_blocking(self.key, index=index, wait=wait)
        return got, ({entry.key: entry} if entry is not None else {})

    async def run(self, emit: Emit, *, controller: str) -> None:
        metrics.init_source(controller, self.name)

        def apply(new: dict[str, KVEntry]) -> None:
            changed = replace_items(self._items, new, same_entry)
            self._set_ready(controller)
            self._emit(emit, controller, changed)

        await poll_forever(
            source=self.name,
            controller=controller,
            fetch=self._fetch,
            apply=apply,
            settings=self.settings,
            what=f"kv {self.key}",
            resets_of=index_resets(self._client),
        )
