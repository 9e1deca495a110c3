"""User events (``consul event``): fired through the agent, kept in its recent-events buffer.

A real agent gossips an event to the cluster and every agent whose node, services and tags match
the event's filters records it in a ring of the last 256 events, with a Lamport time. With one
agent, firing is receiving: the event is recorded here when its filters match this agent.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from typing import Any

from devstack.consul.errors import ConsulError
from devstack.consul.state import State

# The agent's recent-events ring (agent.go: eventBuf).
EVENT_BUFFER = 256
EVENT_VERSION = 1


@dataclass(slots=True)
class UserEvent:
    id: str
    name: str
    payload: bytes | None
    node_filter: str
    service_filter: str
    tag_filter: str
    ltime: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Payload": base64.b64encode(self.payload).decode() if self.payload else None,
            "NodeFilter": self.node_filter,
            "ServiceFilter": self.service_filter,
            "TagFilter": self.tag_filter,
            "Version": EVENT_VERSION,
            "LTime": self.ltime,
        }


def _compile(pattern: str, what: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConsulError(500, f"Invalid {what} filter: {exc}") from exc


def _matches(st: State, event: UserEvent) -> bool:
    """``shouldProcessUserEvent``: this node, then one of its services, then one of its tags."""
    node_re = _compile(event.node_filter, "node")
    if node_re is not None and not node_re.search(st.node_name):
        return False
    service_re = _compile(event.service_filter, "service")
    if service_re is None:
        return True
    tag_re = _compile(event.tag_filter, "tag")
    for svc in st.services.get(st.node_name, {}).values():
        if not service_re.search(svc.name):
            continue
        if tag_re is None or any(tag_re.search(t) for t in svc.tags):
            return True
    return False


def fire(
    st: State, name: str, payload: bytes | None, node: str, service: str, tag: str
) -> UserEvent:
    """Validate and fire an event; record it when this agent is one of its targets."""
    if tag and not service:
        raise ConsulError(500, "Cannot provide tag filter without service filter")
    event = UserEvent(str(uuid.uuid4()), name, payload or None, node, service, tag)
    _compile(node, "node")
    _compile(service, "service")
    _compile(tag, "tag")
    if _matches(st, event):
        st.event_ltime += 1
        recorded = UserEvent(
            event.id, name, event.payload, node, service, tag, ltime=st.event_ltime
        )
        st.events.append(recorded)
        del st.events[:-EVENT_BUFFER]
        st.watches.notify("events")
    return event


def event_index(event_id: str) -> int:
    """``uuidToUint64``: the two 64-bit halves of the event's UUID, XORed."""
    hexed = event_id.replace("-", "")
    return int(hexed[:16], 16) ^ int(hexed[16:], 16)
