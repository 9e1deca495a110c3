"""A Classic ELB endpoint on 127.0.0.1: moto's server mode with the Manticore load balancer in it.

The ELB controller drives an AWS Classic ELB through boto3. In development, in the demo and in the
end-to-end tests it talks real HTTP to this endpoint instead, by the standard AWS configuration
(``AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING`` and fake credentials), so the production code path
is the one exercised: no in-process patching. On start the endpoint creates the configured load
balancer, since in production it exists before any controller runs.

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


class ELBEndpoint:
    """moto's server on a loopback port, serving a Classic ELB API with one load balancer in it.

    ``port=0`` picks a free port; :attr:`url` and :attr:`env` tell clients where it is.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = LOOPBACK,
        load_balancer: str = DEFAULT_LOAD_BALANCER,
        listeners: Sequence[Listener] = (Listener(),),
        region: str = DEFAULT_REGION,
        zones: Sequence[str] = (DEFAULT_ZONE,),
        log_requests: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.load_balancer = load_balancer
        self.listeners = tuple(listeners)
        self.region = region
        self.zones = tuple(zones)
        self._log_requests = log_requests
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
        app = DomainDispatcherApplication(create_backend_app)
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
        """Create the configured load balancer (idempotent: an existing one is left alone)."""
        client = self.client()
        existing = {
            lb["LoadBalancerName"]
            for lb in client.describe_load_balancers()["LoadBalancerDescriptions"]
        }
        if self.load_balancer in existing:
            return
        client.create_load_balancer(
            LoadBalancerName=self.load_balancer,
            Listeners=[listener.to_api() for listener in self.listeners],  # type: ignore[misc]
            AvailabilityZones=list(self.zones),
        )

    def reset(self) -> None:
        """Forget every AWS resource of this process's moto, then recreate the load balancer."""
        status, body = http_get(f"{self.url}/moto-api/reset", timeout=5.0, method="POST")
        if not 200 <= status < 300:
            raise RuntimeError(f"moto reset answered {status}: {body[:200]!r}")
        self.create_load_balancer()


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
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
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
        help=f"name of the Classic ELB created on start (default {DEFAULT_LOAD_BALANCER})",
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
    endpoint = ELBEndpoint(
        port=args.port,
        load_balancer=args.load_balancer,
        listeners=listeners,
        region=args.region,
        zones=args.zone or [DEFAULT_ZONE],
        log_requests=args.log_requests,
    )
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
                f"elb ready on {endpoint.url} (load balancer {endpoint.load_balancer}, "
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
