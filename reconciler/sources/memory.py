"""An in-process source: items set from Python, for tests and in-process wiring.

It behaves like every other source (warm cache, ready flag, emits the ids that changed) but its
data comes from :meth:`MemorySource.set` / :meth:`MemorySource.delete` instead of a remote watch,
so a controller's wiring and result handling can be tested without any server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from reconciler import metrics
from reconciler.sources.base import Emit


class MemorySource:
    def __init__(self, name: str = "memory", items: Mapping[str, Any] | None = None) -> None:
        self._name = name
        self._items: dict[str, Any] = dict(items or {})
        self._emit: Emit | None = None
        self._ready = anyio.Event()
        self._pending: set[str] = set(self._items)

    @property
    def name(self) -> str:
        return self._name

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def items(self) -> Mapping[str, Any]:
        return self._items

    def set(self, item: str, value: Any) -> None:
        if self._items.get(item, _MISSING) == value:
            return  # same data, no event: the rule every source follows
        self._items[item] = value
        self._changed(item)

    def delete(self, item: str) -> None:
        if self._items.pop(item, _MISSING) is not _MISSING:
            self._changed(item)

    def _changed(self, item: str) -> None:
        if self._emit is None:
            self._pending.add(item)
        else:
            self._emit((item,))

    async def run(self, emit: Emit, *, controller: str) -> None:
        self._emit = emit
        if self._pending:
            emit(sorted(self._pending))
            self._pending.clear()
        metrics.SOURCE_READY.labels(controller=controller, source=self._name).set(1)
        self._ready.set()
        try:
            await anyio.sleep_forever()
        finally:
            self._emit = None


_MISSING = object()
