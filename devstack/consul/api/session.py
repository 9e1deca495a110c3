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
from devstack.consul.api.reads import Result, blocking, respond
from devstack.consul.errors import ConsulError
from devstack.consul.sessions import (
    arm_ttl,
    create_session,
    invalidate_session,
    session_json,
    validate_uuid,
)
from devstack.consul.state import Session

# -- handlers -----------------------------------------------------------------------------------


async def create(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    parse_query_options(request, core)
    body = await read_object(request)
    node = body.text("Node") or core.node_name
    require(request, "session", node, WRITE)
    core.require_leader()
    session = create_session(core.state, body)
    return ok_json({"ID": session.id})


async def destroy(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    parse_query_options(request, core)
    sid = request.match_info["id"]
    session = core.state.sessions.get(sid)
    if session is not None:
        require(request, "session", session.node, WRITE)
    core.require_leader()
    invalidate_session(core.state, sid)
    return ok_json(True)


async def renew(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    parse_query_options(request, core)
    sid = request.match_info["id"]
    validate_uuid(sid)
    session = core.state.sessions.get(sid)
    if session is None:
        raise ConsulError(404, f"Session id '{sid}' not found")
    require(request, "session", session.node, WRITE)
    core.require_leader()
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
    sid = request.match_info["id"]
    validate_uuid(sid)
    st = core.state

    def run() -> Result:
        found = [st.sessions[sid]] if sid in st.sessions else []
        visible, filtered = _visible(request, found)
        return Result(
            st.table_index["sessions"], [session_json(s) for s in visible], filtered=filtered
        )

    result = await blocking(core, opts, run, topics=("sessions",))
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

    result = await blocking(core, opts, run, topics=("sessions",))
    return respond(core, result, opts, token_sent=token_sent(request))


async def list_node(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    opts = parse_query_options(request, core)
    node = request.match_info["node"]
    st = core.state

    def run() -> Result:
        found = sorted((s for s in st.sessions.values() if s.node == node), key=lambda s: s.id)
        visible, filtered = _visible(request, found)
        return Result(
            st.table_index["sessions"], [session_json(s) for s in visible], filtered=filtered
        )

    result = await blocking(core, opts, run, topics=("sessions",))
    return respond(core, result, opts, token_sent=token_sent(request))
