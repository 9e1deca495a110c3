"""An in-process source: items set from Python, for tests and in-process wiring.

It behaves like every other source (warm cache, ready flag, emits the items that changed) but its
data comes from :meth:`MemorySource.set` / :meth:`MemorySource.delete` instead of a remote watch,
so a controller's wiring and result handling can be tested without any server. Its items are
:class:`MemoryItem` (``id``/``key`` and ``value``), so the default key mappers apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import anyio

from reconciler import metrics
from reconciler.sources.base import Change, Emit


class MemoryItem(NamedTuple):
    id: str
    value: Any

    @property
    def key(self) -> str:
        return self.id


class MemorySource:
    def __init__(self, name: str = "memory", items: Mapping[str, Any] | None = None) -> None:
        self._name = name
        self._items: dict[str, MemoryItem] = {k: MemoryItem(k, v) for k, v in (items or {}).items()}
        self._emit: Emit | None = None
        self._ready = anyio.Event()
        self._pending: dict[str, Change] = {k: Change(k, v) for k, v in self._items.items()}

    @property
    def name(self) -> str:
        return self._name

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def items(self) -> Mapping[str, MemoryItem]:
        return self._items

    def set(self, item: str, value: Any) -> None:
        old = self._items.get(item)
        if old is not None and old.value == value:
            return  # same data, no event: the rule every source follows
        new = MemoryItem(item, value)
        self._items[item] = new
        self._changed(Change(item, new, old=old))

    def delete(self, item: str) -> None:
        old = self._items.pop(item, None)
        if old is not None:
            self._changed(Change(item, old, deleted=True))

    def _changed(self, change: Change) -> None:
        if self._emit is None:
            self._pending[change.id] = change
        else:
            self._emit((change,))

    async def run(self, emit: Emit, *, controller: str) -> None:
        self._emit = emit
        if self._pending:
            emit([self._pending[k] for k in sorted(self._pending)])
            self._pending.clear()
        metrics.SOURCE_READY.labels(controller=controller, source=self._name).set(1)
        self._ready.set()
        try:
            await anyio.sleep_forever()
        finally:
            self._emit = None
