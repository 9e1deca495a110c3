"""The emulated agent's whole state: one raft-like index, the tables, and the watch sets.

Consul keeps its state in go-memdb: every write takes the next raft index, each table remembers
the last index that changed it, and blocking queries park on watch channels that close when the
data they read changes. This module reproduces that model in memory. Writers call
``notify_kv``/``notify`` after a change; a waiter registers a future under the topics (or KV
prefixes) it read and is woken only by writes that touch them, so thousands of parked queries cost
nothing until something they watch moves.
"""

from __future__ import annotations

import asyncio
import bisect
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Tables whose index Consul tracks separately (agent/consul/state "index" table).
TABLES = (
    "kvs",
    "tombstones",
    "sessions",
    "nodes",
    "services",
    "checks",
    "acl-tokens",
    "acl-policies",
)

SERF_CHECK_ID = "serfHealth"


@dataclass(slots=True)
class KVEntry:
    key: str
    value: bytes
    flags: int = 0
    session: str = ""
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0
    # The entry's JSON as a list answer carries it, and what it was encoded from (a prefix list
    # joins these instead of encoding every entry again per answer).
    encoded: bytes = field(default=b"", compare=False, repr=False)
    encoded_from: tuple[int, int, int, str, int] = field(
        default=(-1, 0, 0, "", 0), compare=False, repr=False
    )

    def copy(self) -> KVEntry:
        return KVEntry(
            self.key,
            self.value,
            self.flags,
            self.session,
            self.lock_index,
            self.create_index,
            self.modify_index,
        )


@dataclass(slots=True)
class Session:
    id: str
    name: str
    node: str
    node_checks: list[str]
    service_checks: list[dict[str, str]] | None
    lock_delay_ns: int
    behavior: str
    ttl: str
    create_index: int
    modify_index: int
    legacy_checks: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class Node:
    id: str
    name: str
    address: str
    datacenter: str
    tagged_addresses: dict[str, str]
    meta: dict[str, str]
    create_index: int
    modify_index: int


@dataclass(slots=True)
class ServiceInstance:
    node: str
    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    tagged_addresses: dict[str, dict[str, Any]]
    weights: dict[str, int]
    enable_tag_override: bool
    kind: str
    create_index: int
    modify_index: int


@dataclass(slots=True)
class Check:
    node: str
    id: str
    name: str
    status: str
    notes: str
    output: str
    service_id: str
    service_name: str
    service_tags: list[str]
    type: str
    interval: str
    timeout: str
    create_index: int
    modify_index: int
    definition: dict[str, Any] = field(default_factory=dict)
    # ``check_json`` of this check and its JSON, with what they were made from (a health list
    # joins these instead of encoding every check again per answer).
    encoded: tuple[dict[str, Any], bytes] | None = field(default=None, compare=False, repr=False)
    encoded_from: tuple[int, int, str] = field(default=(-1, 0, ""), compare=False, repr=False)


class Watches:
    """Futures parked by blocking queries, keyed by topic or by KV prefix.

    A wake-up resolves and forgets every future of a topic at once, so a write costs one loop over
    the distinct watched prefixes plus one ``set_result`` per parked query that it concerns.
    """

    def __init__(self) -> None:
        self.topics: dict[str, set[asyncio.Future[None]]] = {}
        self.kv_prefixes: dict[str, set[asyncio.Future[None]]] = {}
        # Futures that stand for a group of queries sharing one answer, and how many queries
        # those groups hold (the HTTP layer's ``api.parking``), so ``count`` counts queries.
        self.group_futures: set[asyncio.Future[None]] = set()
        self.shared_waiters = 0

    def add(
        self, fut: asyncio.Future[None], topics: Iterable[str], prefixes: Iterable[str]
    ) -> None:
        for topic in topics:
            self.topics.setdefault(topic, set()).add(fut)
        for prefix in prefixes:
            self.kv_prefixes.setdefault(prefix, set()).add(fut)

    def remove(
        self, fut: asyncio.Future[None], topics: Iterable[str], prefixes: Iterable[str]
    ) -> None:
        for topic in topics:
            waiters = self.topics.get(topic)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self.topics[topic]
        for prefix in prefixes:
            waiters = self.kv_prefixes.get(prefix)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self.kv_prefixes[prefix]

    @staticmethod
    def _wake(waiters: set[asyncio.Future[None]]) -> None:
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def notify(self, *topics: str) -> None:
        for topic in topics:
            waiters = self.topics.pop(topic, None)
            if waiters:
                self._wake(waiters)

    def notify_kv(self, key: str) -> None:
        """Wake queries whose prefix covers ``key`` (an exact-key query watches its key)."""
        hit = [p for p in self.kv_prefixes if key.startswith(p)]
        for prefix in hit:
            self._wake(self.kv_prefixes.pop(prefix))

    def notify_kv_tree(self, prefix: str) -> None:
        """Wake queries overlapping a deleted subtree (watched prefix inside it, or above it)."""
        hit = [p for p in self.kv_prefixes if p.startswith(prefix) or prefix.startswith(p)]
        for p in hit:
            self._wake(self.kv_prefixes.pop(p))

    def notify_all(self) -> None:
        for waiters in self.topics.values():
            self._wake(waiters)
        for waiters in self.kv_prefixes.values():
            self._wake(waiters)
        self.topics.clear()
        self.kv_prefixes.clear()

    def count(self) -> int:
        seen: set[asyncio.Future[None]] = set()
        for waiters in (*self.topics.values(), *self.kv_prefixes.values()):
            seen.update(waiters)
        return len(seen - self.group_futures) + self.shared_waiters


class SortedKeys:
    """Keys kept in byte order so a prefix scan is a bisect plus a slice (memdb's radix tree)."""

    def __init__(self) -> None:
        self._keys: list[str] = []

    def add(self, key: str) -> None:
        i = bisect.bisect_left(self._keys, key)
        if i == len(self._keys) or self._keys[i] != key:
            self._keys.insert(i, key)

    def discard(self, key: str) -> None:
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            del self._keys[i]

    def with_prefix(self, prefix: str) -> list[str]:
        if not prefix:
            return list(self._keys)
        lo = bisect.bisect_left(self._keys, prefix)
        hi = lo
        n = len(self._keys)
        while hi < n and self._keys[hi].startswith(prefix):
            hi += 1
        return self._keys[lo:hi]

    def clear(self) -> None:
        self._keys.clear()

    def __len__(self) -> int:
        return len(self._keys)


class State:
    """All tables of one emulated single-node cluster, plus its index and watch sets."""

    def __init__(self, node_name: str, datacenter: str = "dc1") -> None:
        self.node_name = node_name
        self.datacenter = datacenter
        self.node_id = str(uuid.uuid4())
        self.index = 0
        self.table_index: dict[str, int] = dict.fromkeys(TABLES, 0)
        self.watches = Watches()
        # Bumped by every KV change so cached KV responses know when they went stale.
        self.kv_generation = 0
        # Encoded KV read results, valid while ``kv_generation`` does not move.
        self.kv_cache: dict[tuple[Any, ...], Any] = {}
        self.kv_cache_generation = -1

        self.kv: dict[str, KVEntry] = {}
        self.kv_keys = SortedKeys()
        self.tombstones: dict[str, int] = {}
        self.tomb_keys = SortedKeys()
        self.lock_delays: dict[str, float] = {}

        self.sessions: dict[str, Session] = {}

        self.nodes: dict[str, Node] = {}
        self.services: dict[str, dict[str, ServiceInstance]] = {}
        self.checks: dict[str, dict[str, Check]] = {}
        # Per-service index ("service.<name>" in Consul's index table).
        self.service_index: dict[str, int] = {}
        # The agent's recent user events (``events.py``) and their Lamport clock.
        self.events: list[Any] = []
        self.event_ltime = 0
        # Told ``(node, check_id)`` when a check leaves the catalog, so whoever runs its probe
        # (the agent's check runner) stops it, whichever endpoint removed it.
        self.check_removed: list[Callable[[str, str], None]] = []

    # -- index ---------------------------------------------------------------------------------

    def next_index(self) -> int:
        self.index += 1
        return self.index

    def bump(self, table: str, idx: int) -> None:
        self.table_index[table] = idx
        self.watches.notify(table)

    def max_index(self, *tables: str) -> int:
        return max(self.table_index[t] for t in tables)

    # -- KV ------------------------------------------------------------------------------------

    def kv_put_entry(self, entry: KVEntry, idx: int) -> None:
        """Store ``entry`` (indexes already set by the caller) and record the write at ``idx``."""
        if entry.key not in self.kv:
            self.kv_keys.add(entry.key)
        self.kv[entry.key] = entry
        self.table_index["kvs"] = idx
        self.kv_generation += 1
        self.watches.notify_kv(entry.key)
        self.watches.notify("kvs")

    def kv_delete_key(self, key: str, idx: int) -> bool:
        if key not in self.kv:
            return False
        del self.kv[key]
        self.kv_keys.discard(key)
        self.tombstones[key] = idx
        self.tomb_keys.add(key)
        self.table_index["kvs"] = idx
        self.table_index["tombstones"] = idx
        self.kv_generation += 1
        self.watches.notify_kv(key)
        self.watches.notify("kvs")
        return True

    def kv_entries(self, prefix: str) -> Iterator[KVEntry]:
        for key in self.kv_keys.with_prefix(prefix):
            yield self.kv[key]

    def kv_prefix_index(self, prefix: str) -> tuple[int, bool]:
        """X-Consul-Index of a prefix read (live entries and tombstones under it).

        The flag tells whether nothing was under the prefix and the whole-table index was used,
        in which case any KV write moves the result.
        """
        if not prefix:
            return self.max_index("kvs", "tombstones"), True
        best = 0
        for key in self.kv_keys.with_prefix(prefix):
            best = max(best, self.kv[key].modify_index)
        for key in self.tomb_keys.with_prefix(prefix):
            best = max(best, self.tombstones[key])
        if best:
            return best, False
        return self.max_index("kvs", "tombstones"), True

    def lock_delay_active(self, key: str) -> bool:
        until = self.lock_delays.get(key)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self.lock_delays[key]
            return False
        return True

    # -- catalog ------------------------------------------------------------------------------

    def bump_service(self, name: str, idx: int) -> None:
        self.service_index[name] = idx
        self.watches.notify("svc:" + name)

    def service_names_on(self, node: str) -> set[str]:
        return {s.name for s in self.services.get(node, {}).values()}

    def find_check(self, check_id: str, node: str | None = None) -> Check | None:
        if node is not None:
            return self.checks.get(node, {}).get(check_id)
        local = self.checks.get(self.node_name, {}).get(check_id)
        if local is not None:
            return local
        for checks in self.checks.values():
            if check_id in checks:
                return checks[check_id]
        return None

    def all_checks(self) -> Iterator[Check]:
        for node in sorted(self.checks):
            checks = self.checks[node]
            for cid in sorted(checks):
                yield checks[cid]

    def health_service_index(self, name: str) -> int:
        idx = self.service_index.get(name)
        if idx is None:
            return self.max_index("services")
        return idx

    # -- snapshot restore ----------------------------------------------------------------------

    def reset_index(self, to: int) -> None:
        """Act as a snapshot restore to an older index: every index is clamped to ``to``.

        Tombstones are reaped (as a restore or reap does) and every parked query is woken, like
        memdb's abandon channel, so clients observe the index going backwards.
        """
        to = max(1, to)
        self.index = to
        for entry in self.kv.values():
            entry.create_index = min(entry.create_index, to)
            entry.modify_index = min(entry.modify_index, to)
        self.tombstones.clear()
        self.tomb_keys.clear()
        for sess in self.sessions.values():
            sess.create_index = min(sess.create_index, to)
            sess.modify_index = min(sess.modify_index, to)
        for node in self.nodes.values():
            node.create_index = min(node.create_index, to)
            node.modify_index = min(node.modify_index, to)
        for svcs in self.services.values():
            for svc in svcs.values():
                svc.create_index = min(svc.create_index, to)
                svc.modify_index = min(svc.modify_index, to)
        for checks in self.checks.values():
            for chk in checks.values():
                chk.create_index = min(chk.create_index, to)
                chk.modify_index = min(chk.modify_index, to)
        for table in self.table_index:
            self.table_index[table] = min(self.table_index[table], to)
        for name in self.service_index:
            self.service_index[name] = min(self.service_index[name], to)
        self.kv_generation += 1
        self.watches.notify_all()
