"""Sessions: the lease behind every Consul lock and leader election.

A session ties locks to a node and its health checks. It dies on destroy, on TTL expiry (the
server's timer is twice the TTL, as ``SessionTTLMultiplier`` makes it), when its node goes away,
or when a linked check turns critical; its keys are then released or deleted and each gets a
lock-delay, during which nobody may acquire it.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from devstack.consul.encoding import CI, format_duration, parse_duration
from devstack.consul.errors import ConsulError, server_error
from devstack.consul.kv import release_session_locks
from devstack.consul.state import SERF_CHECK_ID, Session, State

DEFAULT_LOCK_DELAY_NS = 15_000_000_000
MAX_LOCK_DELAY = 60.0
MIN_TTL = 10.0
MAX_TTL = 86400.0
TTL_MULTIPLIER = 2
_HEX = re.compile(r"^[0-9a-fA-F]*$")


def session_json(s: Session) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": s.lock_delay_ns,
        "Behavior": s.behavior,
        "TTL": s.ttl,
        "NodeChecks": s.node_checks,
        "ServiceChecks": s.service_checks,
    }
    legacy = list(s.node_checks) + [c["ID"] for c in s.service_checks or []]
    if legacy and legacy != [SERF_CHECK_ID]:
        out["Checks"] = legacy
    out["CreateIndex"] = s.create_index
    out["ModifyIndex"] = s.modify_index
    return out


def validate_uuid(value: str) -> None:
    """memdb's UUID index parsing: 36 characters, at most 4 hyphens, hex digits otherwise."""
    if len(value) != 36:
        raise server_error("UUID must be 36 characters")
    hyphens = value.count("-")
    if hyphens > 4:
        raise server_error(f'UUID should have maximum of 4 "-"; got {hyphens}')
    digits = value.replace("-", "")
    if len(digits) % 2:
        raise server_error("Input (without hyphens) must be even length")
    if not _HEX.match(digits):
        raise server_error("Invalid UUID: encoding/hex: invalid byte")


def _lock_delay(value: Any) -> int:
    if isinstance(value, bool):
        raise server_error(f"Request decode failed: invalid LockDelay {value!r}")
    if isinstance(value, (int, float)):
        ns = int(value)
        # Consul reads small numbers as seconds (``lockDelayMinThreshold``).
        return ns * 1_000_000_000 if ns < 1000 else ns
    if isinstance(value, str):
        try:
            return round(parse_duration(value) * 1e9)
        except ValueError as exc:
            raise ConsulError(400, f"Request decode failed: {exc}") from exc
    raise ConsulError(400, f"Request decode failed: invalid LockDelay {value!r}")


def _string_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConsulError(400, f"Request decode failed: {field} must be a list of strings")
    return list(value)


def create_session(st: State, body: CI) -> Session:
    node = body.text("Node") or st.node_name
    if node not in st.nodes:
        raise server_error("Missing node registration")
    legacy = False
    if body.has("NodeChecks"):
        node_checks = _string_list(body.get("NodeChecks"), "NodeChecks")
    elif body.has("Checks"):
        node_checks = _string_list(body.get("Checks"), "Checks")
        legacy = True
    else:
        node_checks = [SERF_CHECK_ID]
    service_checks: list[dict[str, str]] | None = None
    raw_sc = body.get("ServiceChecks")
    if raw_sc is not None:
        if not isinstance(raw_sc, list):
            raise ConsulError(400, "Request decode failed: ServiceChecks must be a list")
        service_checks = []
        for item in raw_sc:
            if not isinstance(item, dict):
                raise ConsulError(400, "Request decode failed: invalid ServiceChecks entry")
            ci = CI(item)
            service_checks.append({"ID": ci.text("ID"), "Namespace": ci.text("Namespace")})
    node_check_table = st.checks.get(node, {})
    for cid in [*node_checks, *(c["ID"] for c in service_checks or [])]:
        check = node_check_table.get(cid)
        if check is None:
            raise server_error(f"Missing check '{cid}' registration")
        if check.status == "critical":
            raise server_error(f"Check '{cid}' is in critical state")
    lock_delay = DEFAULT_LOCK_DELAY_NS
    if body.has("LockDelay"):
        lock_delay = _lock_delay(body.get("LockDelay", default=0))
    behavior = body.text("Behavior") or "release"
    if behavior not in ("release", "delete"):
        raise server_error(f"Invalid Behavior setting '{behavior}'")
    ttl = body.text("TTL")
    if ttl:
        try:
            ttl_s = parse_duration(ttl)
        except ValueError as exc:
            raise server_error(f"Session TTL '{ttl}' invalid: {exc}") from exc
        if ttl_s != 0 and not MIN_TTL <= ttl_s <= MAX_TTL:
            raise server_error(
                f"Invalid Session TTL '{round(ttl_s * 1e9)}', must be between "
                f"[{format_duration(MIN_TTL)}={format_duration(MAX_TTL)}]"
            )
    idx = st.next_index()
    session = Session(
        id=str(uuid.uuid4()),
        name=body.text("Name"),
        node=node,
        node_checks=node_checks,
        service_checks=service_checks,
        lock_delay_ns=lock_delay,
        behavior=behavior,
        ttl=ttl,
        create_index=idx,
        modify_index=idx,
        legacy_checks=legacy,
    )
    st.sessions[session.id] = session
    st.bump("sessions", idx)
    arm_ttl(st, session)
    return session


def arm_ttl(st: State, session: Session) -> None:
    """(Re)start the expiry timer: the session dies 2 x TTL after its last create/renew."""
    if session.timer is not None:
        session.timer.cancel()
        session.timer = None
    if not session.ttl:
        return
    ttl = parse_duration(session.ttl)
    if ttl <= 0:
        return
    loop = asyncio.get_running_loop()
    session.timer = loop.call_later(ttl * TTL_MULTIPLIER, invalidate_session, st, session.id)


def invalidate_session(st: State, session_id: str) -> bool:
    session = st.sessions.pop(session_id, None)
    if session is None:
        return False
    if session.timer is not None:
        session.timer.cancel()
        session.timer = None
    idx = st.next_index()
    delay = min(session.lock_delay_ns / 1e9, MAX_LOCK_DELAY)
    release_session_locks(st, session_id, session.behavior, delay, idx)
    st.bump("sessions", idx)
    return True


def invalidate_for_check(st: State, node: str, check_id: str) -> None:
    """A linked check went critical or was deregistered: its sessions are destroyed."""
    doomed = [
        s.id
        for s in st.sessions.values()
        if s.node == node
        and (check_id in s.node_checks or any(c["ID"] == check_id for c in s.service_checks or []))
    ]
    for sid in doomed:
        invalidate_session(st, sid)


def invalidate_for_node(st: State, node: str) -> None:
    for sid in [s.id for s in st.sessions.values() if s.node == node]:
        invalidate_session(st, sid)
