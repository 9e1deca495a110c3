"""A Classic ELB endpoint on 127.0.0.1: moto's server mode with the Manticore load balancers in it.

The ELB controller drives AWS Classic ELBs through boto3. In development, in the demo and in the
end-to-end tests it talks real HTTP to this endpoint instead, by the standard AWS configuration
(``AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING`` and fake credentials), so the production code path
is the one exercised: no in-process patching of the client. On start the endpoint creates the
configured load balancers, since in production they exist before any controller runs.

moto's listener calls are not AWS's (several ports in one delete multiply listeners, there is no
listener quota, batches are not atomic, nothing is throttled): :mod:`devstack.elb_api` answers
those calls in front of moto the way AWS does, and adds throttling on demand or by rate.

moto keeps its state per process: two :class:`ELBEndpoint` objects in one process share their
load balancers. ``devstack up`` therefore runs the endpoint in a process of its own
(``devstack elb``), while tests use the in-process :class:`ELBEndpoint`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from devstack.elb_api import DEFAULT_LISTENER_QUOTA, ClassicELBGuard, GuardState, Throttle
from devstack.process import LOOPBACK, http_get, http_ok

if TYPE_CHECKING:
    from mypy_boto3_elb import ElasticLoadBalancingClient
    from werkzeug.serving import BaseWSGIServer

DEFAULT_PORT = 5000
DEFAULT_LOAD_BALANCER = "manticore"
DEFAULT_REGION = "us-east-1"
DEFAULT_ZONE = "us-east-1a"
# moto accepts any credentials; these only keep boto3 from looking for real ones.
FAKE_ACCESS_KEY_ID = "testing"
FAKE_SECRET_ACCESS_KEY = "testing"


@dataclass(frozen=True)
class Listener:
    """A Classic ELB listener: ``PROTOCOL:LB_PORT:INSTANCE_PORT`` on the command line."""

    protocol: str = "HTTP"
    load_balancer_port: int = 80
    instance_port: int = 80

    @classmethod
    def parse(cls, text: str) -> Listener:
        """``HTTP:80:8080``, ``TCP:30001:30001``, or ``80:8080`` (HTTP)."""
        parts = text.split(":")
        if len(parts) == 2:
            parts = ["HTTP", *parts]
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise ValueError(f"listener must be PROTOCOL:LB_PORT:INSTANCE_PORT, got {text!r}")
        protocol = parts[0].upper()
        if protocol not in ("HTTP", "HTTPS", "TCP", "SSL"):
            raise ValueError(f"listener protocol must be HTTP, HTTPS, TCP or SSL, got {parts[0]!r}")
        return cls(protocol, int(parts[1]), int(parts[2]))

    def to_api(self) -> dict[str, Any]:
        return {
            "Protocol": self.protocol,
            "LoadBalancerPort": self.load_balancer_port,
            "InstanceProtocol": self.protocol,
            "InstancePort": self.instance_port,
        }

    def __str__(self) -> str:
        return f"{self.protocol}:{self.load_balancer_port}:{self.instance_port}"


def aws_env(endpoint_url: str, region: str = DEFAULT_REGION) -> dict[str, str]:
    """The environment that points boto3 (and the AWS CLI) at ``endpoint_url`` for Classic ELB."""
    return {
        "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING": endpoint_url,
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
    }


def health_url(base_url: str) -> str:
    """A cheap moto endpoint that answers 200 once the server listens."""
    return f"{base_url}/moto-api/config"


def load_balancer_names(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"a,b"`` or ``["a", "b"]`` -> ``("a", "b")`` (the form ``ELB_MANTICORE_NAME`` takes)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not names:
        raise ValueError("at least one load balancer name is needed")
    return names


class ELBEndpoint:
    """moto's server on a loopback port, serving a Classic ELB API with the load balancers in it.

    ``port=0`` picks a free port; :attr:`url` and :attr:`env` tell clients where it is.
    ``load_balancer`` is one name or several (a sequence, or comma-separated); each is created
    with ``listeners``. ``listener_quota`` is the listeners-per-load-balancer quota enforced as
    AWS does; ``mutation_rate`` paces mutating calls (a token bucket, ``mutation_burst`` deep)
    and answers ``Throttling`` beyond it.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = LOOPBACK,
        load_balancer: str | Sequence[str] = DEFAULT_LOAD_BALANCER,
        listeners: Sequence[Listener] = (Listener(),),
        region: str = DEFAULT_REGION,
        zones: Sequence[str] = (DEFAULT_ZONE,),
        log_requests: bool = False,
        listener_quota: int = DEFAULT_LISTENER_QUOTA,
        mutation_rate: float | None = None,
        mutation_burst: int = 10,
    ) -> None:
        self.host = host
        self.port = port
        self.load_balancers = load_balancer_names(load_balancer)
        self.load_balancer = self.load_balancers[0]
        self.listeners = tuple(listeners)
        self.region = region
        self.zones = tuple(zones)
        self._log_requests = log_requests
        if listener_quota < 1:
            raise ValueError("listener_quota must be >= 1")
        if mutation_rate is not None and mutation_rate <= 0:
            raise ValueError("mutation_rate must be > 0")
        self._listener_quota = listener_quota
        self.state = GuardState(
            listener_quota=listener_quota,
            mutation_rate=mutation_rate,
            mutation_burst=mutation_burst,
        )
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return health_url(self.url)

    @property
    def env(self) -> dict[str, str]:
        """``AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING``, fake credentials and the region."""
        return aws_env(self.url, self.region)

    def start(self) -> ELBEndpoint:
        """Listen (bind errors surface here), serve from a daemon thread, create the LB."""
        # Imported here: moto is a devstack extra and pulls in much of the AWS surface.
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        if not self._log_requests:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        app = ClassicELBGuard(
            DomainDispatcherApplication(create_backend_app),
            self.state,
            default_region=self.region,
        )
        # Bound here rather than by werkzeug, which answers a busy port with sys.exit(1).
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            server = make_server(
                self.host,
                self.port,
                app,
                threaded=True,
                request_handler=MotoRequestHandler,
                fd=listener.fileno(),
            )
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, name="devstack-elb", daemon=True
        )
        self._thread.start()
        try:
            if not http_ok(self.health_url, timeout=5.0):
                raise RuntimeError(f"moto does not answer on {self.health_url}")
            self.create_load_balancer()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> ELBEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> ElasticLoadBalancingClient:
        """A boto3 Classic ELB client for this endpoint (fake credentials, no retries)."""
        return elb_client(self.url, self.region)

    def create_load_balancer(self) -> None:
        """Create the configured load balancers (idempotent: existing ones are left alone)."""
        client = self.client()
        existing = {
            lb["LoadBalancerName"]
            for lb in client.describe_load_balancers()["LoadBalancerDescriptions"]
        }
        for name in self.load_balancers:
            if name in existing:
                continue
            client.create_load_balancer(
                LoadBalancerName=name,
                Listeners=[listener.to_api() for listener in self.listeners],  # type: ignore[misc]
                AvailabilityZones=list(self.zones),
            )

    def reset(self) -> None:
        """Forget every AWS resource of this process's moto and every fault, then recreate the
        load balancers."""
        status, body = http_get(f"{self.url}/moto-api/reset", timeout=5.0, method="POST")
        if not 200 <= status < 300:
            raise RuntimeError(f"moto reset answered {status}: {body[:200]!r}")
        self.state.reset()
        self.state.listener_quota = self._listener_quota
        self.create_load_balancer()

    # -- faults and observations (also over HTTP under /_devstack/elb/) ---------------------------
    def throttle(self, count: int = 1, actions: Sequence[str] = ()) -> None:
        """The next ``count`` calls of ``actions`` (default: every mutating call) are throttled."""
        self.state.throttles.append(Throttle(count, frozenset(actions)))

    def set_listener_quota(self, quota: int) -> None:
        if quota < 1:
            raise ValueError("quota must be >= 1")
        self.state.listener_quota = quota

    def calls(self) -> dict[str, int]:
        """How many times each action was called since start (or the last reset)."""
        return dict(self.state.calls)

    def throttled(self) -> dict[str, int]:
        """How many calls of each action were answered ``Throttling``."""
        return dict(self.state.throttled)


def elb_client(endpoint_url: str, region: str = DEFAULT_REGION) -> ElasticLoadBalancingClient:
    """A boto3 Classic ELB client for a devstack endpoint."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "elb",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


# -- `devstack elb` -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"HTTP port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--load-balancer",
        default=DEFAULT_LOAD_BALANCER,
        help="name(s) of the Classic ELB(s) created on start, comma-separated "
        f"(default {DEFAULT_LOAD_BALANCER})",
    )
    parser.add_argument(
        "--listener-quota",
        type=int,
        default=DEFAULT_LISTENER_QUOTA,
        help="listeners per load balancer, enforced as AWS does "
        f"(default {DEFAULT_LISTENER_QUOTA})",
    )
    parser.add_argument(
        "--mutation-rate",
        type=float,
        default=None,
        help="mutating calls per second before answering Throttling (default: unlimited)",
    )
    parser.add_argument(
        "--listener",
        action="append",
        default=None,
        metavar="PROTOCOL:LB_PORT:INSTANCE_PORT",
        help="a listener of the load balancer (repeatable; default HTTP:80:80)",
    )
    parser.add_argument(
        "--zone",
        action="append",
        default=None,
        help=f"availability zone (repeatable; default {DEFAULT_ZONE})",
    )
    parser.add_argument("--region", default=DEFAULT_REGION, help=f"default {DEFAULT_REGION}")
    parser.add_argument(
        "--log-requests", action="store_true", help="log every API request (werkzeug)"
    )


def _listeners(values: Iterable[str] | None) -> list[Listener]:
    return [Listener.parse(value) for value in values] if values else [Listener()]


def run(args: argparse.Namespace) -> int:
    """Serve in the foreground until SIGTERM/SIGINT; print the ready line and the environment."""
    try:
        listeners = _listeners(args.listener)
    except ValueError as exc:
        print(f"devstack elb: {exc}", file=sys.stderr)
        return 2
    try:
        endpoint = ELBEndpoint(
            port=args.port,
            load_balancer=args.load_balancer,
            listeners=listeners,
            region=args.region,
            zones=args.zone or [DEFAULT_ZONE],
            log_requests=args.log_requests,
            listener_quota=args.listener_quota,
            mutation_rate=args.mutation_rate,
        )
    except ValueError as exc:
        print(f"devstack elb: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            endpoint.start()
        except OSError as exc:
            print(f"devstack elb: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
            return 1
        try:
            print(
                f"elb ready on {endpoint.url} (load balancer {','.join(endpoint.load_balancers)}, "
                f"listeners {', '.join(map(str, listeners))}, region {endpoint.region})",
                flush=True,
            )
            for name, value in endpoint.env.items():
                print(f"export {name}={value}", flush=True)
            stop.wait()
        finally:
            endpoint.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("elb stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack elb", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
