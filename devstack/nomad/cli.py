"""``devstack nomad``: the embedded Nomad in the foreground, for development and demos."""

from __future__ import annotations

import argparse

from devstack._server import run_foreground

from .cluster import app_factory
from .config import NomadConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=4646, help="HTTP port on 127.0.0.1")
    parser.add_argument(
        "--consul-addr",
        default=None,
        help="Consul agent to register services with, e.g. http://127.0.0.1:8500",
    )
    parser.add_argument("--consul-token", default=None, help="token for the Consul agent API")
    parser.add_argument(
        "--consul-auto-advertise",
        action="store_true",
        help="register the agent's own nomad and nomad-client services in Consul",
    )
    parser.add_argument("--nodes", type=int, default=3, help="simulated client nodes")
    parser.add_argument("--node-cpu", type=int, default=4000, help="CPU shares (MHz) per node")
    parser.add_argument("--node-memory", type=int, default=8192, help="memory (MB) per node")
    parser.add_argument("--node-disk", type=int, default=51200, help="disk (MB) per node")
    parser.add_argument(
        "--node-meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="node meta on every node (repeatable)",
    )
    parser.add_argument("--datacenter", default="dc1")
    parser.add_argument("--region", default="global")
    parser.add_argument(
        "--acl-master-token", default=None, help="enable ACLs with this management token"
    )
    parser.add_argument(
        "--acl-enabled",
        action="store_true",
        help="enable ACLs, un-bootstrapped (POST /v1/acl/bootstrap creates the first token)",
    )
    parser.add_argument(
        "--docker-start-delay",
        type=float,
        default=0.5,
        help="seconds a simulated docker task takes to start",
    )
    parser.add_argument(
        "--event-heartbeat", type=float, default=10.0, help="event stream heartbeat (s)"
    )


def config_from_args(args: argparse.Namespace) -> NomadConfig:
    meta = {}
    for item in args.node_meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--node-meta expects KEY=VALUE, got {item!r}")
        meta[key] = value
    return NomadConfig(
        region=args.region,
        datacenter=args.datacenter,
        nodes=args.nodes,
        node_cpu=args.node_cpu,
        node_memory=args.node_memory,
        node_disk=args.node_disk,
        node_meta=meta,
        consul_addr=args.consul_addr,
        consul_token=args.consul_token,
        consul_auto_advertise=args.consul_auto_advertise,
        acl_master_token=args.acl_master_token,
        acl_enabled=args.acl_enabled,
        docker_start_delay=args.docker_start_delay,
        event_heartbeat=args.event_heartbeat,
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        if args.port:
            config.advertise_http = f"127.0.0.1:{args.port}"
    except ValueError as exc:
        print(f"devstack nomad: {exc}")
        return 2
    return run_foreground(app_factory(config), host="127.0.0.1", port=args.port, name="nomad")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack nomad", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
