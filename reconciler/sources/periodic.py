"""Emit a fixed set of keys (or whatever a callable returns) on a timer.

Some reconciles have no natural watch: the waiting list re-checks capacity, the elb controller
re-reads AWS (nobody tells us when someone edits a listener in the console). The controller's
resync re-queues every cached item; this source is for singleton keys that no other source
produces. It is ready at once and emits immediately, then every ``every`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from inspect import isawaitable

from reconciler import metrics
from reconciler.ratelimit import SYSTEM_CLOCK, Clock
from reconciler.sources._watch import WatchBase
from reconciler.sources.base import Change, Emit

log = logging.getLogger(__name__)

KeysFn = Callable[[], Iterable[str] | Awaitable[Iterable[str]]]


class PeriodicSource(WatchBase):
    """Emits ``keys`` (an iterable, or a sync or async callable returning one) periodically.

    ``items()`` maps each key of the last round to itself (the item a key mapper gets). A failing
    callable is logged and counted as a watch error; the timer keeps going.
    """

    def __init__(
        self,
        keys: Iterable[str] | KeysFn,
        every: float,
        *,
        name: str | None = None,
        emit_at_start: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if every <= 0:
            raise ValueError("every must be > 0")
        super().__init__(name or f"periodic:{every:g}s")
        self._keys: KeysFn | None = keys if callable(keys) else None
        if self._keys is None:
            self._items = {k: k for k in keys}  # type: ignore[union-attr]
        self.every = every
        self.emit_at_start = emit_at_start
        self._clock = clock

    async def _current(self) -> list[str]:
        if self._keys is None:
            return list(self._items)
        result = self._keys()
        if isawaitable(result):
            result = await result
        keys = [str(k) for k in result]
        self._items = {k: k for k in keys}
        return keys

    async def run(self, emit: Emit, *, controller: str) -> None:
        metrics.init_source(controller, self.name)
        labels = {"controller": controller, "source": self.name}
        self._set_ready(controller)
        if not self.emit_at_start:
            await self._clock.sleep(self.every)
        while True:
            metrics.WATCH_REQUESTS.labels(**labels).inc()
            try:
                keys = await self._current()
            except Exception:
                metrics.WATCH_ERRORS.labels(**labels).inc()
                log.exception(
                    "%s: periodic source %s failed to list its keys",
                    controller,
                    self.name,
                    extra=labels,
                )
            else:
                metrics.WATCH_LAST_SUCCESS.labels(**labels).set(time.time())
                self._emit(emit, controller, [Change(k, k) for k in keys])
            await self._clock.sleep(self.every)
