"""The intake API's routes: requests, their status and events, activity, departure, options.

Every read is answered from :class:`~controllers.intake.cache.ClusterCache`; the only Consul
requests are the user's own writes (create with ``cas=0``, activity with CAS on the request's
index, delete). Anything malformed or hostile is refused with a 4xx and a sentence saying why,
counted in ``manticore_api_rejected_total{reason}``, before it can touch a key: ids are checked
against ``[A-Za-z0-9-]{1,64}`` (so a path segment cannot alias another key), bodies are bounded
and strict, versions must be offered, and with ``JWT_SECRET`` a token speaks for one user only.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import anyio
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controllers.api.ids import REQUESTS_PREFIX, USER_ID_PATTERN
from controllers.api.requests import UserRequest
from controllers.intake import metrics
from controllers.intake.auth import AuthError, Verifier, bearer
from controllers.intake.cache import ClusterCache, Subscription
from controllers.intake.models import (
    ActivityRecorded,
    CoreChoices,
    Health,
    HMIChoices,
    Links,
    NewRequest,
    Options,
    Problem,
    RequestAccepted,
    UsageLimits,
    UserStatus,
)
from controllers.intake.registration import Registration
from controllers.settings import Settings
from reconciler.clients.consul import ConsulClient
from reconciler.clients.errors import ClientError
from reconciler.kv import encode

log = logging.getLogger("controllers.intake")

Clock = Callable[[], dt.datetime]
UserPath = Annotated[
    str, Path(pattern=USER_ID_PATTERN, description="The user id ([A-Za-z0-9-]{1,64})")
]
AuthHeader = Annotated[
    str | None, Header(alias="Authorization", description="Bearer <JWT> when JWT_SECRET is set")
]
# A browser's EventSource cannot send headers: the events stream also takes the token here.
TokenQuery = Annotated[
    str | None,
    Query(alias="access_token", max_length=4096, description="The JWT, for EventSource"),
]

# Activity is recorded at most this often per user: a chatty page costs Consul little.
ACTIVITY_MIN_INTERVAL = 2.0
# How long a write waits for this instance's own watch to show it (read-your-writes).
OWN_WRITE_WAIT = 2.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class APIError(Exception):
    def __init__(self, status: int, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason


def _problems(*codes: int, explicit: bool = False) -> dict[int | str, dict[str, Any]]:
    """Documented error answers; ``explicit`` spells out their JSON content (a route whose own
    answer is not JSON would otherwise document them in its media type)."""
    texts = {
        400: "The request asks for something that cannot be given",
        401: "No valid token (JWT_SECRET is set)",
        403: "The token belongs to another user",
        404: "No request for this user",
        409: "A different request for this user exists",
        413: "The body is too large",
        429: "Too many open streams for this user",
        503: "Not ready, or Consul is unavailable; try again",
    }
    if explicit:
        json_body = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        return {code: {"description": texts[code], "content": json_body} for code in codes}
    return {code: {"model": Problem, "description": texts[code]} for code in codes}


class Frontdoor:
    """What the routes share: settings, the caches, the Consul writer, the clock."""

    def __init__(
        self,
        settings: Settings,
        cache: ClusterCache,
        consul: ConsulClient,
        *,
        clock: Clock = utcnow,
        stream_max_seconds: float = 3600.0,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.consul = consul
        self.clock = clock
        self.verifier = Verifier(settings.api.jwt_secret)
        self.registration: Registration | None = None
        self.registered: bool | None = None if not settings.api.register_service else False
        self.stream_max_seconds = stream_max_seconds
        self._own_writes = anyio.Event()
        cache.after_change.append(self.changed)

    # -- helpers

    def owner(self, header: str | None, user: str, token: str | None = None) -> None:
        self.verifier.check_owner(token or bearer(header), user)

    def require_ready(self) -> None:
        if not self.cache.ready:
            raise APIError(503, "not ready: still reading Consul", "not-ready")

    def key(self, user: str) -> str:
        return REQUESTS_PREFIX + user

    def changed(self) -> None:
        """Called by the cache after every request change: wakes writers waiting for it."""
        self._own_writes.set()
        self._own_writes = anyio.Event()

    async def wait_for(self, done: Callable[[], bool], timeout: float = OWN_WRITE_WAIT) -> bool:
        with anyio.move_on_after(timeout):
            while not done():
                await self._own_writes.wait()
            return True
        return done()

    def check_offered(self, body: NewRequest) -> None:
        jobs = self.settings.jobs
        offered = {
            "core.version": (body.core.version if body.core else None, jobs.core_versions),
            "core.build": (body.core.build if body.core else None, jobs.core_builds),
            "hmi.type": (body.hmi.type if body.hmi else None, jobs.hmi_types),
            "hmi.version": (body.hmi.version if body.hmi else None, jobs.hmi_versions),
        }
        for name, (value, choices) in offered.items():
            if value is not None and value not in choices:
                raise APIError(
                    400,
                    f"{name} {value!r} is not offered; choose one of {', '.join(choices)} "
                    "(GET /api/v1/options)",
                    "not-offered",
                )

    def accepted(self, user: str, request: UserRequest) -> RequestAccepted:
        base = f"/api/v1/requests/{user}"
        return RequestAccepted(
            id=user,
            core=request.core,
            hmi=request.hmi,
            requested_at=request.requested_at,
            links=Links(status=base, events=f"{base}/events", activity=f"{base}/activity"),
        )

    def options(self) -> Options:
        jobs, usage = self.settings.jobs, self.settings.usage
        return Options(
            core=CoreChoices(
                versions=list(jobs.core_versions),
                builds=list(jobs.core_builds),
                default_version=jobs.core_version,
                default_build=jobs.core_build,
            ),
            hmi=HMIChoices(
                types=list(jobs.hmi_types),
                versions=list(jobs.hmi_versions),
                default_type=jobs.hmi_type,
                default_version=jobs.hmi_version,
            ),
            usage=UsageLimits(
                usage_duration=usage.usage_duration,
                warning_duration=usage.warning_duration,
                reset_timer_allowed=usage.reset_timer_allowed,
            ),
            jwt=self.verifier.enabled,
        )

    # -- the operations

    async def create(self, body: NewRequest, header: str | None) -> RequestAccepted:
        token_user = self.verifier.user_of(bearer(header))
        if token_user is not None:
            if body.id is not None and body.id != token_user:
                raise AuthError("the body's id is not the token's user", status=403)
            user = token_user
        elif body.id is None:
            raise APIError(400, "id is required (no JWT_SECRET is configured)", "validation")
        else:
            user = body.id
        self.check_offered(body)
        self.require_ready()
        wanted = UserRequest(core=body.core, hmi=body.hmi, requested_at=self.clock())
        created = await self.consul.kv_put(self.key(user), encode(wanted), cas=0)
        metrics.CONSUL_WRITES.labels(kind="create", outcome="ok" if created else "conflict").inc()
        if created:
            log.info("request created for %s", user)
            await self.wait_for(lambda: self.cache.has_request(user))
            return self.accepted(user, wanted)
        _, entry = await self.consul.kv_get(self.key(user))
        if entry is None:
            # Deleted between our write and read: the caller may simply post again.
            raise APIError(409, "the request was just removed; post again", "conflict")
        try:
            stored = UserRequest.model_validate_json(entry.value or b"")
        except ValueError as exc:
            raise APIError(
                409, "a request for this user exists and is not valid", "conflict"
            ) from exc
        if stored.core != body.core or stored.hmi != body.hmi:
            raise APIError(
                409,
                "a request with other options exists for this user; DELETE it first",
                "conflict",
            )
        return self.accepted(user, stored)

    def status(self, user: str, header: str | None) -> bytes:
        """The user's status, encoded (the cache keeps it so until a change concerns it)."""
        self.owner(header, user)
        self.require_ready()
        payload = self.cache.encoded(user)
        if payload is None:
            raise APIError(404, f"no request for user {user}")
        return payload

    async def activity(self, user: str, header: str | None) -> ActivityRecorded:
        self.owner(header, user)
        self.require_ready()
        now = self.clock()
        reset = self.settings.usage.reset_timer_allowed
        for _ in range(4):
            if not self.cache.has_request(user):
                raise APIError(404, f"no request for user {user}")
            current = self.cache.requests.get(user) or UserRequest()
            index = self.cache.request_index.get(user, 0)
            last = current.last_activity
            if last is not None and (now - last).total_seconds() < ACTIVITY_MIN_INTERVAL:
                return ActivityRecorded(id=user, last_activity=last, reset_allowed=reset)
            updated = current.model_copy(update={"last_activity": now})
            if await self.consul.kv_put(self.key(user), encode(updated), cas=index):
                metrics.CONSUL_WRITES.labels(kind="activity", outcome="ok").inc()
                await self.wait_for(functools.partial(self._moved_on, user, index))
                return ActivityRecorded(id=user, last_activity=now, reset_allowed=reset)
            metrics.CONSUL_WRITES.labels(kind="activity", outcome="conflict").inc()
            # Our cache is behind the request: wait for it to catch up, then try again.
            await self.wait_for(functools.partial(self._moved_on, user, index), 0.5)
        raise APIError(503, "the request keeps changing; try again", "conflict")

    def _moved_on(self, user: str, index: int) -> bool:
        """The cache shows the user's request past ``index`` (or gone)."""
        return self.cache.request_index.get(user, index) != index or not self.cache.has_request(
            user
        )

    async def delete(self, user: str, header: str | None) -> None:
        self.owner(header, user)
        self.require_ready()
        await self.consul.kv_delete(self.key(user))
        metrics.CONSUL_WRITES.labels(kind="delete", outcome="ok").inc()
        log.info("request deleted for %s", user)
        await self.wait_for(lambda: not self.cache.has_request(user))

    def open_stream(self, user: str, header: str | None, token: str | None) -> EventStream:
        self.owner(header, user, token)
        self.require_ready()
        if not self.cache.has_request(user):
            raise APIError(404, f"no request for user {user}")
        api = self.settings.api
        if self.cache.streams >= api.max_streams:
            raise APIError(503, "this instance holds its maximum of event streams", "streams")
        if self.cache.streams_of(user) >= api.max_streams_per_user:
            raise APIError(429, "too many open event streams for this user", "streams")
        return EventStream(self, user)


def _ended(user: str) -> bytes:
    body = json.dumps({"id": user, "state": "ended"}).encode()
    return b"event: ended\ndata: " + body + b"\n\n"


RETRY = b"retry: 3000\n\n"
KEEPALIVE = b": keepalive\n\n"


# One server-sent event of ``/api/v1/requests/{id}/events`` (the ``retry:`` hint and the
# keep-alive comments are not events).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["status", "ended"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
    },
    "required": ["event", "data"],
}


class EventStream(Response):
    """One user's server-sent events, written straight to the ASGI server.

    The stream's task sleeps on its :class:`~controllers.intake.cache.Subscription` and, when
    woken, writes the bytes the cache encoded once for the user: one ``http.response.body``
    message per event, nothing computed here. A second task only listens for the client going
    away. When the server's write buffer for a slow client is full, ``send`` waits for it (so
    only that stream waits) and the slot keeps just the latest state meanwhile.
    """

    media_type = "text/event-stream"

    def __init__(self, front: Frontdoor, user: str) -> None:
        self.front = front
        self.user = user
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        with self.front.cache.subscribe(self.user) as subscription:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_listen, receive, subscription)
                await self._stream(subscription, send)
                tg.cancel_scope.cancel()
            if not subscription.gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream(self, subscription: Subscription, send: Send) -> None:
        front = self.front
        keepalive = front.settings.api.keepalive
        deadline = time.monotonic() + front.stream_max_seconds
        first = front.cache.first_event(subscription)
        if first is None:
            await _write(send, RETRY + _ended(self.user))
            return
        await _write(send, RETRY + first)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return  # the client reconnects, maybe to another instance
            pushed = await subscription.wait(min(keepalive, left))
            if subscription.closing or subscription.gone:
                return
            if not pushed:
                await _write(send, KEEPALIVE)
            elif subscription.ended:
                await _write(send, _ended(self.user))
                return
            elif subscription.latest is not None:
                await _write(send, subscription.latest)


async def _write(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _listen(receive: Receive, subscription: Subscription) -> None:
    """Until the client disconnects (then the stream's task is woken to end)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            subscription.gone = True
            subscription.wake()
            return


# ----------------------------------------------------------------------------- ASGI middleware


class BodyLimit:
    """Refuses bodies over ``limit`` bytes with a 413 before the app reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(scope, send)
                return
        await self.app(scope, _replay([{"type": "http.request", "body": body}], receive), send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        metrics.REJECTED.labels(reason="too-large").inc()
        response = JSONResponse(
            {"detail": f"the body is larger than {self.limit} bytes"}, status_code=413
        )
        await response(scope, _replay([]), send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


class Measure:
    """Counts and times every response by route template (never by raw path: ids stay out)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                metrics.LATENCY.labels(route=_route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            metrics.REQUESTS.labels(
                route=_route(scope), method=scope.get("method", ""), status=str(status["code"])
            ).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


STATUS_ROUTE = "/api/v1/requests/{user_id}"
EVENTS_ROUTE = "/api/v1/requests/{user_id}/events"
_STATUS_PATH = re.compile(r"/api/v1/requests/([A-Za-z0-9-]{1,64})")
_EVENTS_PATH = re.compile(r"/api/v1/requests/([A-Za-z0-9-]{1,64})/events")
_TOKEN_MAX = 4096


class HotPaths:
    """The two routes every waiting user hits, answered before the framework's routing.

    ``GET /api/v1/requests/<id>`` (a dictionary lookup) and opening its event stream cost far
    more in routing, parameter validation and the layers around them than in their own work.
    When a request is one the declared route accepts as is (a valid id, no body, at most one
    ``Authorization`` header and ``access_token``) and the answer is a success, it is answered
    here with the same bytes, headers and metrics. Anything else, every refusal included, goes
    on to the declared routes, which answer it as documented: the routes' behaviour and their
    OpenAPI document stay the single description of the API.
    """

    def __init__(self, app: ASGIApp, front: Frontdoor) -> None:
        self.app = app
        self.front = front
        self._status_latency = metrics.LATENCY.labels(route=STATUS_ROUTE)
        self._status_ok = metrics.REQUESTS.labels(route=STATUS_ROUTE, method="GET", status="200")
        self._events_latency = metrics.LATENCY.labels(route=EVENTS_ROUTE)
        self._events_ok = metrics.REQUESTS.labels(route=EVENTS_ROUTE, method="GET", status="200")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"].startswith("/api/v1/requests/")
            and not scope.get("root_path")
        ):
            started = time.perf_counter()
            authorization = _plain_get(scope)
            if authorization is not False:
                path = scope["path"]
                match = _STATUS_PATH.fullmatch(path)
                if match is not None:
                    payload = self._status(match.group(1), authorization)
                    if payload is not None:
                        await self._answer(payload, send, started)
                        return
                match = _EVENTS_PATH.fullmatch(path)
                if match is not None:
                    stream = self._stream(match.group(1), authorization, scope)
                    if stream is not None:
                        await self._run(stream, scope, receive, send, started)
                        return
        await self.app(scope, receive, send)

    def _status(self, user: str, authorization: str | None) -> bytes | None:
        try:
            return self.front.status(user, authorization)
        except (APIError, AuthError):
            return None  # the declared route says why

    def _stream(self, user: str, authorization: str | None, scope: Scope) -> EventStream | None:
        token: str | None = None
        query = scope.get("query_string") or b""
        if query:
            found = [v for k, v in parse_qsl(query.decode("latin-1"), True) if k == "access_token"]
            if len(found) > 1 or (found and len(found[0]) > _TOKEN_MAX):
                return None
            token = found[0] if found else None
        try:
            return self.front.open_stream(user, authorization, token)
        except (APIError, AuthError):
            return None

    async def _answer(self, payload: bytes, send: Send, started: float) -> None:
        headers = [
            (b"content-length", str(len(payload)).encode()),
            (b"content-type", b"application/json"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self._status_latency.observe(time.perf_counter() - started)
        await send({"type": "http.response.body", "body": payload})
        self._status_ok.inc()

    async def _run(
        self, stream: EventStream, scope: Scope, receive: Receive, send: Send, started: float
    ) -> None:
        observe = self._events_latency.observe
        answered = False

        async def sending(message: Message) -> None:
            nonlocal answered
            if not answered:
                answered = True
                observe(time.perf_counter() - started)
                await send(message)
                return
            await send(message)

        try:
            await stream(scope, receive, sending)
        finally:
            if answered:
                self._events_ok.inc()
            else:
                metrics.REQUESTS.labels(route=EVENTS_ROUTE, method="GET", status="500").inc()


def _plain_get(scope: Scope) -> str | Literal[False] | None:
    """The request's one ``Authorization`` header (None: none); False: not a plain GET."""
    authorization: str | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorization is not None:
                return False
            authorization = value.decode("latin-1")
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return False
    return authorization


# ----------------------------------------------------------------------------- the app


def create_app(front: Frontdoor) -> FastAPI:
    app = FastAPI(
        title="Manticore intake API",
        version="1",
        description="Ask for an SDL core + HMI pair, wait in line, get its addresses, leave.",
        docs_url="/docs",
        redoc_url=None,
    )

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        if exc.reason:
            metrics.REJECTED.labels(reason=exc.reason).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        metrics.REJECTED.labels(reason="auth" if exc.status == 401 else "forbidden").inc()
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(ClientError)
    async def consul_error(request: Request, exc: ClientError) -> JSONResponse:
        log.warning("Consul request failed: %s", exc)
        return JSONResponse({"detail": "Consul is unavailable; try again"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.REJECTED.labels(reason="validation").inc()
        return await request_validation_exception_handler(request, exc)

    @app.post(
        "/api/v1/requests",
        response_model=RequestAccepted,
        summary="Ask for a core + HMI pair (idempotent)",
        responses=_problems(400, 401, 403, 409, 413, 503),
        tags=["requests"],
    )
    async def post_request(body: NewRequest, authorization: AuthHeader = None) -> RequestAccepted:
        return await front.create(body, authorization)

    @app.get(
        "/api/v1/requests/{user_id}",
        response_model=UserStatus,
        summary="Where the user's request stands, and their addresses once ready",
        responses=_problems(401, 403, 404, 503),
        tags=["requests"],
    )
    async def get_request(user_id: UserPath, authorization: AuthHeader = None) -> Response:
        return Response(front.status(user_id, authorization), media_type="application/json")

    @app.get(
        "/api/v1/requests/{user_id}/events",
        response_class=EventStream,
        status_code=200,
        summary="Server-sent events: `status` on every change, `ended` when the request goes",
        responses={
            200: {
                # The schema of one event, as OpenAPI describes a server-sent event stream:
                # ``status`` with the UserStatus JSON in ``data``, ``ended`` when it goes.
                "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
                "description": "An event stream",
            },
            **_problems(401, 403, 404, 429, 503, explicit=True),
        },
        tags=["requests"],
    )
    async def get_events(
        user_id: UserPath, authorization: AuthHeader = None, access_token: TokenQuery = None
    ) -> EventStream:
        return front.open_stream(user_id, authorization, access_token)

    @app.post(
        "/api/v1/requests/{user_id}/activity",
        response_model=ActivityRecorded,
        summary="The user is active (restarts the usage clock when RESET_TIMER_ALLOWED)",
        responses=_problems(401, 403, 404, 413, 503),
        tags=["requests"],
    )
    async def post_activity(
        user_id: UserPath, authorization: AuthHeader = None
    ) -> ActivityRecorded:
        return await front.activity(user_id, authorization)

    @app.delete(
        "/api/v1/requests/{user_id}",
        status_code=204,
        response_class=Response,
        summary="Leave: the pair and everything of the user goes away (idempotent)",
        responses=_problems(401, 403, 503),
        tags=["requests"],
    )
    async def delete_request(user_id: UserPath, authorization: AuthHeader = None) -> Response:
        await front.delete(user_id, authorization)
        return Response(status_code=204)

    @app.get("/api/v1/options", response_model=Options, tags=["options"])
    async def get_options() -> Options:
        return front.options()

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        return Health(ok=True, streams=front.cache.streams)

    @app.get(
        "/readyz",
        response_model=Health,
        responses={503: {"model": Health, "description": "Not ready"}},
        tags=["health"],
    )
    async def readyz() -> JSONResponse:
        sources = front.cache.readiness()
        ok = all(sources.values()) and front.registered is not False
        body = Health(
            ok=ok, sources=sources, registered=front.registered, streams=front.cache.streams
        )
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    static = resources.files("controllers.intake") / "static"
    if not front.settings.api.webpage_disabled:

        @app.get("/", include_in_schema=False)
        async def page() -> FileResponse:
            return FileResponse(str(static / "index.html"), media_type="text/html")

        app.mount("/static", StaticFiles(directory=str(static)), name="static")

    app.add_middleware(BodyLimit, limit=front.settings.api.max_body_bytes)
    # Added after the body limit, so outside it: it sees every response, the 413s included.
    app.add_middleware(Measure)
    # Outermost: the two hot routes' successes, with their own metrics (see HotPaths).
    app.add_middleware(HotPaths, front=front)
    return app
