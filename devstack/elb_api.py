"""The parts of the Classic ELB API that moto gets wrong, answered the way AWS answers them.

The elb controller is only as well tested as the endpoint it runs against. moto's server mode
speaks the Classic ELB Query API over real HTTP, but its listener calls differ from AWS in ways
that hide exactly the bugs the controller must not have:

- ``DeleteLoadBalancerListeners`` with several ports keeps a copy of every other listener per
  port given, so the listeners multiply instead of going away;
- there is no listener quota (AWS: 100 listeners per Classic load balancer by default, adjustable);
- ``CreateLoadBalancerListeners`` is not atomic (a ``DuplicateListener`` in the middle of a batch
  leaves the first half created), answers success for a load balancer that does not exist, and
  forgets a listener's ``InstanceProtocol`` (``HTTPS -> HTTP`` reads back as ``HTTPS -> HTTPS``,
  so a controller comparing against ``describe_load_balancers`` would replace it forever);
- nothing is ever throttled, while AWS throttles mutating calls at a few per second.

:class:`ClassicELBGuard` is a WSGI middleware in front of moto's application. It answers the
listener mutations itself, against moto's own backend objects (so ``DescribeLoadBalancers`` and
everything else stays moto's), with AWS's documented error codes and HTTP statuses:
``DuplicateListener`` (400), ``LoadBalancerNotFound`` (400), ``TooManyListeners`` (400),
``Throttling`` (400, "Rate exceeded"), ``ValidationError`` (400). The Classic ELB reference does
not list an error for the listener quota; ``TooManyListeners`` is the code the ELB family uses
for it (ELBv2) and the one ``reconciler.clients.elb`` maps to ``QuotaExceeded``.

Faults on demand, for tests and demos (``POST /_devstack/elb/throttle`` with
``{"count": n, "actions": [...]}``), a paced mode (``mutation_rate``: a token bucket over the
mutating calls, as AWS paces them), and a count of the calls made (``GET /_devstack/elb/calls``)
let tests check batching and backoff against the state of the endpoint, over HTTP.
"""

from __future__ import annotations

import functools
import io
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

API_VERSION = "2012-06-01"
XMLNS = f"http://elasticloadbalancing.amazonaws.com/doc/{API_VERSION}/"
DEFAULT_LISTENER_QUOTA = 100
ADMIN_PREFIX = "/_devstack/elb/"
PROTOCOLS = ("HTTP", "HTTPS", "TCP", "SSL")
# The protocol layer of each listener protocol: front and back end must share it.
_LAYER = {"HTTP": 7, "HTTPS": 7, "TCP": 4, "SSL": 4}
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/([^/]+)/")
_MUTATING = re.compile(r"^(Create|Delete|Set|Modify|Register|Deregister|Apply|Attach|Detach|"
                       r"Enable|Disable|Configure|Add|Remove)")  # fmt: skip


class ELBError(Exception):
    """An AWS error answer: HTTP status, error code, message."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class ListenerSpec:
    """One listener as a request names it, normalised (protocols upper case)."""

    protocol: str
    load_balancer_port: int
    instance_protocol: str
    instance_port: int
    ssl_certificate_id: str | None = None

    def same_as(self, other: Any) -> bool:
        """True when an existing moto listener is this very listener (AWS's idempotence rule)."""
        return (
            str(other.protocol).upper() == self.protocol
            and int(other.instance_port) == self.instance_port
            and str(getattr(other, "instance_protocol", other.protocol)).upper()
            == self.instance_protocol
            and (other.ssl_certificate_id or None) == self.ssl_certificate_id
        )


def _members(params: Mapping[str, str], prefix: str) -> list[dict[str, str]]:
    """``Prefix.member.N.Field=value`` query parameters -> one dict per N, in N order."""
    found: dict[int, dict[str, str]] = {}
    pattern = re.compile(rf"^{re.escape(prefix)}\.member\.(\d+)(?:\.(\w+))?$")
    for name, value in params.items():
        match = pattern.match(name)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2) or ""] = value
    return [found[n] for n in sorted(found)]


def _port(raw: str | None, what: str) -> int:
    if raw is None or not raw.strip().isdigit() or not 1 <= int(raw) <= 65535:
        raise ELBError("ValidationError", f"{what} must be an integer from 1 to 65535, got {raw!r}")
    return int(raw)


def parse_listeners(params: Mapping[str, str]) -> list[ListenerSpec]:
    """The ``Listeners.member.N`` of a request, validated as AWS validates them."""
    out: list[ListenerSpec] = []
    for member in _members(params, "Listeners"):
        protocol = member.get("Protocol", "").upper()
        if protocol not in PROTOCOLS:
            raise ELBError("UnsupportedProtocol", f"Protocol must be one of {', '.join(PROTOCOLS)}")
        instance_protocol = (member.get("InstanceProtocol") or protocol).upper()
        if instance_protocol not in PROTOCOLS:
            raise ELBError(
                "UnsupportedProtocol", f"InstanceProtocol must be one of {', '.join(PROTOCOLS)}"
            )
        if _LAYER[protocol] != _LAYER[instance_protocol]:
            raise ELBError(
                "InvalidConfigurationRequest",
                f"InstanceProtocol {instance_protocol} is not compatible with Protocol {protocol}",
                status=409,
            )
        certificate = member.get("SSLCertificateId") or None
        if protocol in ("HTTPS", "SSL") and certificate is None:
            raise ELBError("ValidationError", f"{protocol} listeners need an SSLCertificateId")
        out.append(
            ListenerSpec(
                protocol=protocol,
                load_balancer_port=_port(member.get("LoadBalancerPort"), "LoadBalancerPort"),
                instance_protocol=instance_protocol,
                instance_port=_port(member.get("InstancePort"), "InstancePort"),
                ssl_certificate_id=certificate,
            )
        )
    if not out:
        raise ELBError("ValidationError", "Listeners cannot be empty")
    return out


@functools.cache
def _listener_class() -> type:
    """moto's listener, remembering its instance protocol (moto's reads back the front one)."""
    from moto.elb.models import FakeListener

    class Listener(FakeListener):
        _instance_protocol: str = ""

        @property
        def instance_protocol(self) -> str:
            return self._instance_protocol or str(self.protocol)

    return Listener


def _moto_listener(spec: ListenerSpec) -> Any:
    listener = _listener_class()(
        load_balancer_port=spec.load_balancer_port,
        instance_port=spec.instance_port,
        protocol=spec.protocol,
        ssl_certificate_id=spec.ssl_certificate_id,
    )
    listener._instance_protocol = spec.instance_protocol
    return listener


@dataclass
class Throttle:
    """``count`` more calls of ``actions`` (all mutating calls when empty) answer Throttling."""

    count: int
    actions: frozenset[str] = frozenset()


@dataclass
class GuardState:
    """What the guard adds to moto: the quota, faults, pacing, and a count of calls made."""

    listener_quota: int = DEFAULT_LISTENER_QUOTA
    mutation_rate: float | None = None
    mutation_burst: int = 10
    throttles: list[Throttle] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    _tokens: float = 0.0
    _last: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._tokens = float(self.mutation_burst)

    def take_token(self) -> bool:
        if self.mutation_rate is None:
            return True
        now = time.monotonic()
        self._tokens = min(
            float(self.mutation_burst), self._tokens + (now - self._last) * self.mutation_rate
        )
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def take_fault(self, action: str, mutating: bool) -> bool:
        for throttle in self.throttles:
            applies = action in throttle.actions if throttle.actions else mutating
            if applies and throttle.count > 0:
                throttle.count -= 1
                return True
        return False

    def reset(self) -> None:
        self.throttles.clear()
        self.calls.clear()
        self.throttled.clear()
        self._tokens = float(self.mutation_burst)


class ClassicELBGuard:
    """WSGI middleware: AWS's listener semantics, quota and throttling in front of moto."""

    def __init__(
        self, app: WSGIApp, state: GuardState | None = None, *, default_region: str
    ) -> None:
        self.app = app
        self.state = state or GuardState()
        self.default_region = default_region
        # Listener mutations are validated and applied under one lock: werkzeug serves requests
        # on several threads, and a batch must be atomic as it is on AWS.
        self._lock = threading.Lock()

    # -- WSGI ----------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = str(environ.get("PATH_INFO", ""))
        if path.startswith(ADMIN_PREFIX):
            return self._admin(environ, start_response, path[len(ADMIN_PREFIX) :])
        if environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        body = _read_body(environ)
        params = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        action = params.get("Action", "")
        auth = str(environ.get("HTTP_AUTHORIZATION", ""))
        match = _CREDENTIAL.search(auth)
        service = match.group(3) if match else ""
        if service != "elasticloadbalancing" or params.get("Version") != API_VERSION:
            return self.app(environ, start_response)
        region = match.group(2) if match else self.default_region
        access_key = match.group(1) if match else ""
        try:
            answer = self._handle(action, params, region, access_key)
        except ELBError as err:
            return _respond(start_response, err.status, _error_xml(err))
        if answer is None:
            return self.app(environ, start_response)
        return _respond(start_response, 200, answer)

    def _handle(
        self, action: str, params: Mapping[str, str], region: str, access_key: str
    ) -> bytes | None:
        """The answer to give ourselves, or None to let moto answer."""
        state = self.state
        mutating = _MUTATING.match(action) is not None
        with self._lock:
            state.calls[action] += 1
            if state.take_fault(action, mutating) or (mutating and not state.take_token()):
                state.throttled[action] += 1
                raise ELBError("Throttling", "Rate exceeded")
            if action == "CreateLoadBalancerListeners":
                return self._create_listeners(params, region, access_key)
            if action == "DeleteLoadBalancerListeners":
                return self._delete_listeners(params, region, access_key)
            if action == "CreateLoadBalancer":
                self._check_new_load_balancer(params)
        return None

    # -- the listener calls ----------------------------------------------------------------------
    def _balancer(self, params: Mapping[str, str], region: str, access_key: str) -> Any:
        name = params.get("LoadBalancerName") or ""
        balancer = _backend(region, access_key).get_load_balancer(name)
        if balancer is None:
            raise ELBError(
                "LoadBalancerNotFound",
                f"There is no ACTIVE Load Balancer named '{name}'",
            )
        return balancer

    def _create_listeners(self, params: Mapping[str, str], region: str, access_key: str) -> bytes:
        balancer = self._balancer(params, region, access_key)
        wanted = parse_listeners(params)
        existing = {int(lst.load_balancer_port): lst for lst in balancer.listeners}
        new: dict[int, ListenerSpec] = {}
        for spec in wanted:
            port = spec.load_balancer_port
            other = existing.get(port)
            earlier = new.get(port)
            if (other is not None and not spec.same_as(other)) or (
                earlier is not None and earlier != spec
            ):
                raise ELBError(
                    "DuplicateListener",
                    f"A listener already exists for {balancer.name} with LoadBalancerPort "
                    f"{port}, but with a different InstancePort, Protocol, or SSLCertificateId",
                )
            if other is None:
                new[port] = spec
        total = len(existing) + len(new)
        if total > self.state.listener_quota:
            raise ELBError(
                "TooManyListeners",
                f"Load balancer {balancer.name} would have {total} listeners; the quota of "
                f"listeners per load balancer is {self.state.listener_quota}",
            )
        # Validated as a whole: apply all, or (above) nothing.
        for spec in new.values():
            balancer.listeners.append(_moto_listener(spec))
        return _empty_xml("CreateLoadBalancerListeners")

    def _delete_listeners(self, params: Mapping[str, str], region: str, access_key: str) -> bytes:
        balancer = self._balancer(params, region, access_key)
        members = _members(params, "LoadBalancerPorts")
        if not members:
            raise ELBError("ValidationError", "LoadBalancerPorts cannot be empty")
        ports = {_port(m.get(""), "LoadBalancerPorts.member") for m in members}
        # AWS ignores ports without a listener; each listener is removed exactly once.
        balancer.listeners = [
            lst for lst in balancer.listeners if int(lst.load_balancer_port) not in ports
        ]
        return _empty_xml("DeleteLoadBalancerListeners")

    def _check_new_load_balancer(self, params: Mapping[str, str]) -> None:
        specs = parse_listeners(params)
        ports = {spec.load_balancer_port for spec in specs}
        if len(ports) > self.state.listener_quota:
            raise ELBError(
                "TooManyListeners",
                f"{len(ports)} listeners; the quota of listeners per load balancer is "
                f"{self.state.listener_quota}",
            )
        if len(ports) != len(specs):
            raise ELBError("DuplicateListener", "two listeners share a LoadBalancerPort")

    # -- admin ---------------------------------------------------------------------------------
    def _admin(self, environ: dict[str, Any], start_response: Callable[..., Any], what: str) -> Any:
        method = environ.get("REQUEST_METHOD")
        state = self.state
        if what == "calls" and method == "GET":
            with self._lock:
                body = {"calls": dict(state.calls), "throttled": dict(state.throttled)}
            return _respond_json(start_response, 200, body)
        if what == "throttle" and method == "POST":
            try:
                raw = json.loads(_read_body(environ) or b"{}")
                throttle = Throttle(int(raw.get("count", 1)), frozenset(raw.get("actions", ())))
            except (ValueError, TypeError, AttributeError) as exc:
                return _respond_json(start_response, 400, {"error": str(exc)})
            with self._lock:
                state.throttles.append(throttle)
            return _respond_json(start_response, 200, {"ok": True})
        if what == "throttle" and method == "DELETE":
            with self._lock:
                state.throttles.clear()
            return _respond_json(start_response, 200, {"ok": True})
        if what == "quota" and method == "PUT":
            try:
                quota = int(json.loads(_read_body(environ) or b"{}")["listener_quota"])
                if quota < 1:
                    raise ValueError("listener_quota must be >= 1")
            except (ValueError, TypeError, KeyError) as exc:
                return _respond_json(start_response, 400, {"error": str(exc)})
            with self._lock:
                state.listener_quota = quota
            return _respond_json(start_response, 200, {"ok": True})
        return _respond_json(start_response, 404, {"error": f"no admin endpoint {what!r}"})


def _backend(region: str, access_key: str) -> Any:
    import os

    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.elb.models import elb_backends
    from moto.iam.models import get_account_id_from

    account = os.environ.get("MOTO_ACCOUNT_ID") or (
        get_account_id_from(access_key) if access_key else DEFAULT_ACCOUNT_ID
    )
    return elb_backends[account][region]


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body: bytes = environ["wsgi.input"].read(length) if length > 0 else b""
    # moto reads the body again when the request is passed on.
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def _request_id() -> str:
    return str(uuid.uuid4())


def _empty_xml(action: str) -> bytes:
    return (
        f'<{action}Response xmlns="{XMLNS}"><{action}Result/>'
        f"<ResponseMetadata><RequestId>{_request_id()}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    ).encode()


def _error_xml(err: ELBError) -> bytes:
    kind = "Sender" if err.status < 500 else "Receiver"
    return (
        f'<ErrorResponse xmlns="{XMLNS}"><Error><Type>{kind}</Type>'
        f"<Code>{escape(err.code)}</Code><Message>{escape(err.message)}</Message></Error>"
        f"<RequestId>{_request_id()}</RequestId></ErrorResponse>"
    ).encode()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 409: "Conflict"}


def _respond(start_response: Callable[..., Any], status: int, body: bytes) -> list[bytes]:
    start_response(
        f"{status} {_REASONS.get(status, 'Error')}",
        [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _respond_json(start_response: Callable[..., Any], status: int, data: Any) -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(
        f"{status} {_REASONS.get(status, 'Error')}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]
