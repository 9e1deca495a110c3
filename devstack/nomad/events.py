"""The event stream: Nomad's ``/v1/event/stream`` topics, keys, replay buffer and subscribers.

Every state write publishes its events here under the write's raft index. Subscribers get the
events of the topics (and keys) they asked for, first replayed from a bounded buffer when they
passed ``index``, then live; a slow subscriber is dropped rather than slowing the server.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

TOPICS = ("Job", "Allocation", "Evaluation", "Node", "Deployment", "Service", "NodePool", "*")
BUFFER_SIZE = 4096
SUBSCRIBER_QUEUE = 10_000


class TopicError(ValueError):
    """A malformed ``topic`` query parameter."""


def parse_topics(values: list[str]) -> dict[str, set[str]]:
    """``["Job:web", "Allocation"]`` -> ``{"Job": {"web"}, "Allocation": {"*"}}``."""
    topics: dict[str, set[str]] = {}
    for raw in values:
        topic, sep, key = raw.partition(":")
        if not sep:
            key = "*"
        if not topic or (sep and not key) or ":" in key:
            raise TopicError(f"Invalid topic query: {raw}")
        topics.setdefault(topic, set()).add(key)
    return topics


@dataclass
class Event:
    topic: str
    type: str
    key: str
    namespace: str
    payload: dict[str, Any]
    filter_keys: list[str] | None = None
    index: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "Topic": self.topic,
            "Type": self.type,
            "Key": self.key,
            "Namespace": self.namespace,
            "FilterKeys": self.filter_keys,
            "Index": self.index,
            "Payload": self.payload,
        }


@dataclass(eq=False)
class Subscription:
    topics: dict[str, set[str]]
    namespace: str
    queue: asyncio.Queue[tuple[int, list[Event]] | None] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE)
    )
    closed: bool = False

    def matches(self, event: Event) -> bool:
        if self.namespace != "*" and event.namespace not in ("", self.namespace):
            return False
        for topic in (event.topic, "*"):
            keys = self.topics.get(topic)
            if keys is None:
                continue
            if "*" in keys or event.key in keys:
                return True
            if event.filter_keys and any(k in keys for k in event.filter_keys):
                return True
        return False

    def select(self, events: list[Event]) -> list[Event]:
        return [e for e in events if self.matches(e)]


class EventBroker:
    """Keeps the last :data:`BUFFER_SIZE` writes' events and fans new ones out."""

    def __init__(self, size: int = BUFFER_SIZE) -> None:
        self._buffer: deque[tuple[int, list[Event]]] = deque(maxlen=size)
        self._subs: set[Subscription] = set()

    def publish(self, index: int, events: list[Event]) -> None:
        if not events:
            return
        for e in events:
            e.index = index
        self._buffer.append((index, events))
        for sub in list(self._subs):
            selected = sub.select(events)
            if not selected:
                continue
            try:
                sub.queue.put_nowait((index, selected))
            except asyncio.QueueFull:
                self.unsubscribe(sub)

    def subscribe(self, topics: dict[str, set[str]], namespace: str, index: int) -> Subscription:
        sub = Subscription(topics=topics, namespace=namespace)
        for idx, events in self._buffer:
            if idx > index:
                selected = sub.select(events)
                if selected:
                    sub.queue.put_nowait((idx, selected))
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.discard(sub)
            sub.closed = True
            # Wake the reader so it notices the close.
            while True:
                try:
                    sub.queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    sub.queue.get_nowait()

    def close(self) -> None:
        for sub in list(self._subs):
            self.unsubscribe(sub)
