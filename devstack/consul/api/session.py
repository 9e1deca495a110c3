"""``/v1/session/*``: create, destroy, renew, and the blocking reads of sessions."""

from __future__ import annotations

from aiohttp import web

from devstack.consul.acl import READ, WRITE
from devstack.consul.api.common import (
    authorizer,
    core_of,
    ok_json,
    parse_query_options,
    read_object,
    require,
    token_sent,
)
from devstack.consul.api.mux import tail
from devstack.consul.api.reads import Result, blocking, forward, respond
from devstack.consul.encoding import CI
from devstack.consul.errors import ConsulError, bad_request
from devstack.consul.sessions import (
    arm_ttl,
    create_session,
    invalidate_session,
    session_json,
    validate_uuid,
)
from devstack.consul.state import Session

# -- handlers -----------------------------------------------------------------------------------


def _session_id(request: web.Request) -> str:
    sid = tail(request)
    if not sid:
        raise bad_request("Missing session")
    return sid


async def create(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    # Only ?dc and the token are read here; the body is optional.
    length = request.content_length or 0
    body = await read_object(request, "structs.Session") if length > 0 else CI({})
    node = body.text("Node") or core.node_name
    forward(core, request.query.get("dc", ""))
    require(request, "session", node, WRITE)
    session = create_session(core.state, body)
    return ok_json({"ID": session.id})


async def destroy(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    sid = _session_id(request)
    forward(core, request.query.get("dc", ""))
    session = core.state.sessions.get(sid)
    if session is not None:
        require(request, "session", session.node, WRITE)
    invalidate_session(core.state, sid)
    return ok_json(True)


async def renew(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    sid = _session_id(request)
    forward(core, opts.datacenter)
    validate_uuid(sid)
    session = core.state.sessions.get(sid)
    if session is None:
        raise ConsulError(404, f"Session id '{sid}' not found")
    require(request, "session", session.node, WRITE)
    arm_ttl(core.state, session)
    return ok_json([session_json(session)])


def _visible(request: web.Request, sessions: list[Session]) -> tuple[list[Session], bool]:
    authz = authorizer(request)
    if authz is None or authz.management:
        return sessions, False
    keep = [s for s in sessions if authz.allowed("session", s.node, READ)]
    return keep, len(keep) != len(sessions)


async def info(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    sid = _session_id(request)
    forward(core, opts.datacenter, opts.stale)
    validate_uuid(sid)
    st = core.state

    def run() -> Result:
        found = [st.sessions[sid]] if sid in st.sessions else []
        visible, filtered = _visible(request, found)
        return Result(
            st.table_index["sessions"], [session_json(s) for s in visible], filtered=filtered
        )

    result = await blocking(core, opts, run, topics=("sessions",), meta_on_error=True)
    return respond(core, result, opts, token_sent=token_sent(request))


async def list_all(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    st = core.state

    def run() -> Result:
        found = sorted(st.sessions.values(), key=lambda s: s.id)
        visible, filtered = _visible(request, found)
        return Result(
            st.table_index["sessions"], [session_json(s) for s in visible], filtered=filtered
        )

    result = await blocking(core, opts, run, topics=("sessions",), meta_on_error=True)
    return respond(core, result, opts, token_sent=token_sent(request))


async def list_node(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    node = tail(request)
    if not node:
        raise bad_request("Missing node name")
    st = core.state

    def run() -> Result:
        found = sorted((s for s in st.sessions.values() if s.node == node), key=lambda s: s.id)
        visible, filtered = _visible(request, found)
        return Result(
            st.table_index["sessions"], [session_json(s) for s in visible], filtered=filtered
        )

    result = await blocking(core, opts, run, topics=("sessions",), meta_on_error=True)
    return respond(core, result, opts, token_sent=token_sent(request))
