"""The Classic ELB client: listener management for the elb controller, boto3 in worker threads.

boto3 is synchronous, so every call runs in a worker thread (``anyio.to_thread.run_sync``) and
the event loop never blocks on AWS. Credentials, profiles and endpoints come from boto3's
standard chain (``AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING`` points it at the devstack's moto
server); only the region is passed explicitly (see :class:`~reconciler.clients.config.AWSConfig`).

Every Classic ELB call the controller makes is idempotent (creating an identical listener again
succeeds, deleting an absent one is a no-op), so botocore's own "standard" retry mode, which
retries throttling and transient errors, is safe here. What it gives up on is translated into
our error tree: throttling -> :class:`Throttled`, a missing load balancer -> :class:`NotFound`,
a port taken by a different listener -> :class:`Conflict`, a quota -> :class:`QuotaExceeded`.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import boto3
import botocore.config
import botocore.exceptions

from reconciler.clients.config import AWSConfig
from reconciler.clients.errors import (
    BadRequest,
    ClientError,
    ConfigError,
    Conflict,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Throttled,
    Timeout,
    Unavailable,
)

if TYPE_CHECKING:
    from mypy_boto3_elb import ElasticLoadBalancingClient

log = logging.getLogger(__name__)

T = TypeVar("T")

_THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
    }
)
_NOT_FOUND = frozenset(
    {"LoadBalancerNotFound", "AccessPointNotFound", "ListenerNotFound", "CertificateNotFound"}
)
_CONFLICT = frozenset(
    {"DuplicateListener", "DuplicateLoadBalancerName", "DuplicateAccessPointName"}
)
_QUOTA = frozenset(
    {
        "TooManyListeners",
        "TooManyLoadBalancers",
        "TooManyAccessPoints",
        "TooManyPolicies",
        "TooManyTags",
        "LimitExceeded",
    }
)
_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "UnrecognizedClientException",
    }
)
_BAD_REQUEST = frozenset(
    {
        "ValidationError",
        "InvalidConfigurationRequest",
        "UnsupportedProtocol",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "MissingParameter",
    }
)


def translate_botocore_error(exc: Exception, *, what: str) -> Exception:
    """The error of our tree for a botocore exception (anything else is returned unchanged)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        msg = f"{what}: {code}: {message}"
        kind: type[ClientError]
        if code in _THROTTLED or status == 429:
            kind = Throttled
        elif code in _NOT_FOUND:
            kind = NotFound
        elif code in _CONFLICT:
            kind = Conflict
        elif code in _QUOTA:
            kind = QuotaExceeded
        elif code in _DENIED or status == 403:
            kind = PermissionDenied
        elif code in _BAD_REQUEST:
            kind = BadRequest
        elif status is not None and 400 <= int(status) < 500:
            kind = ClientError
        else:
            kind = Unavailable
        return kind(msg, status=status, body=message)
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.NoRegionError):
        return ConfigError(f"{what}: {exc}")
    if isinstance(
        exc, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.ReadTimeoutError
    ):
        return Timeout(f"{what}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return Unavailable(f"{what}: {type(exc).__name__}: {exc}")
    return exc


@dataclass(frozen=True, order=True)
class Listener:
    """A Classic ELB listener. One per ``load_balancer_port``: the port is its identity."""

    load_balancer_port: int
    instance_port: int
    protocol: str = "TCP"
    instance_protocol: str = "TCP"
    ssl_certificate_id: str | None = None

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Protocol": self.protocol,
            "LoadBalancerPort": self.load_balancer_port,
            "InstanceProtocol": self.instance_protocol,
            "InstancePort": self.instance_port,
        }
        if self.ssl_certificate_id:
            out["SSLCertificateId"] = self.ssl_certificate_id
        return out

    @classmethod
    def from_api(cls, raw: Any) -> Listener:
        return cls(
            load_balancer_port=int(raw["LoadBalancerPort"]),
            instance_port=int(raw["InstancePort"]),
            protocol=str(raw.get("Protocol", "TCP")).upper(),
            instance_protocol=str(
                raw.get("InstanceProtocol") or raw.get("Protocol", "TCP")
            ).upper(),
            ssl_certificate_id=raw.get("SSLCertificateId") or None,
        )


@dataclass(frozen=True)
class LoadBalancer:
    name: str
    dns_name: str
    scheme: str
    listeners: tuple[Listener, ...]
    instances: tuple[str, ...]

    @classmethod
    def from_api(cls, raw: Any) -> LoadBalancer:
        listeners = [Listener.from_api(d["Listener"]) for d in raw.get("ListenerDescriptions", ())]
        # One listener per port: collapse any duplicate a (fake) backend might report.
        by_port = {lst.load_balancer_port: lst for lst in listeners}
        return cls(
            name=str(raw["LoadBalancerName"]),
            dns_name=str(raw.get("DNSName", "")),
            scheme=str(raw.get("Scheme", "")),
            listeners=tuple(sorted(by_port.values())),
            instances=tuple(str(i["InstanceId"]) for i in raw.get("Instances", ())),
        )


class ELBClient:
    """Classic ELB listener operations, async, translated into our error tree.

    Batches are the caller's business (one call creates or deletes many listeners); so is the
    order (add before remove) and pacing under the ~10/s mutation throttle.
    """

    def __init__(
        self,
        config: AWSConfig | None = None,
        *,
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        client: ElasticLoadBalancingClient | None = None,
    ) -> None:
        self.config = config or AWSConfig.from_env()
        self._botocore_config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._client = client
        self._lock = anyio.Lock()
        self._guard: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"ELBClient(region={self.config.region!r})"

    def guarded(self, guard: Callable[[], None]) -> ELBClient:
        """This client with ``guard()`` called before every mutating call (leadership check)."""
        view = copy.copy(self)
        view._guard = guard
        return view

    def _check_mutation(self) -> None:
        """Every mutating method calls this first."""
        if self._guard is not None:
            self._guard()

    def _make_client(self) -> ElasticLoadBalancingClient:
        session = boto3.session.Session(profile_name=self.config.profile)
        return session.client("elb", region_name=self.config.region, config=self._botocore_config)

    async def _boto(self) -> ElasticLoadBalancingClient:
        # Building a boto3 client reads JSON models from disk: do it once, off the loop.
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await anyio.to_thread.run_sync(self._make_client)
                except Exception as exc:
                    # A bad profile is a ProfileNotFound, i.e. a BotoCoreError.
                    raise translate_botocore_error(exc, what="elb client") from exc
            return self._client

    async def _run(self, what: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, **kwargs))
        except Exception as exc:
            translated = translate_botocore_error(exc, what=what)
            if translated is exc:
                raise
            raise translated from exc

    async def describe_load_balancers(
        self, names: Sequence[str] | None = None
    ) -> list[LoadBalancer]:
        """The load balancers named (all when ``None``); :class:`NotFound` if one is missing."""
        client = await self._boto()

        def describe() -> list[LoadBalancer]:
            paginator = client.get_paginator("describe_load_balancers")
            kwargs: dict[str, Any] = {"LoadBalancerNames": list(names)} if names else {}
            out: list[LoadBalancer] = []
            for page in paginator.paginate(**kwargs):
                out.extend(LoadBalancer.from_api(d) for d in page["LoadBalancerDescriptions"])
            return out

        return await self._run("DescribeLoadBalancers", describe)

    async def describe_load_balancer(self, name: str) -> LoadBalancer:
        found = await self.describe_load_balancers([name])
        if not found:
            raise NotFound(f"DescribeLoadBalancers: load balancer {name!r} not found")
        return found[0]

    async def describe_listeners(self, name: str) -> list[Listener]:
        """The listeners of one load balancer, sorted by port."""
        return list((await self.describe_load_balancer(name)).listeners)

    async def create_listeners(self, name: str, listeners: Sequence[Listener]) -> None:
        """Add listeners in one call. An identical existing listener is fine; a port held by a
        different listener raises :class:`Conflict`."""
        if not listeners:
            return
        self._check_mutation()
        client = await self._boto()
        await self._run(
            f"CreateLoadBalancerListeners({name})",
            client.create_load_balancer_listeners,
            LoadBalancerName=name,
            Listeners=[lst.to_api() for lst in listeners],
        )

    async def delete_listeners(self, name: str, ports: Sequence[int]) -> None:
        """Remove the listeners on ``ports`` in one call (absent ports are ignored by AWS)."""
        if not ports:
            return
        self._check_mutation()
        client = await self._boto()
        await self._run(
            f"DeleteLoadBalancerListeners({name})",
            client.delete_load_balancer_listeners,
            LoadBalancerName=name,
            LoadBalancerPorts=[int(p) for p in ports],
        )

    # The names of the underlying API, for callers who think in them.
    create_load_balancer_listeners = create_listeners
    delete_load_balancer_listeners = delete_listeners
