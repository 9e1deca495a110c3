"""``devstack consul``: run the embedded Consul in the foreground, like ``consul agent -dev``."""

from __future__ import annotations

import argparse
import ipaddress

from devstack._server import run_foreground
from devstack.consul.app import create_app
from devstack.consul.core import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8500, help="HTTP port (0 picks a free one)")
    parser.add_argument("--bind", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--node", default="", help="node name (default: the hostname)")
    parser.add_argument("--datacenter", default="dc1", help="datacenter name")
    parser.add_argument(
        "--acl-master-token",
        default=None,
        help="enable ACLs with this management token (default policy: deny)",
    )
    parser.add_argument(
        "--acl-default-policy", choices=("allow", "deny"), default=None, help="ACL default policy"
    )
    parser.add_argument(
        "--acl-enabled",
        action="store_true",
        help="enable ACLs without a management token (get one with PUT /v1/acl/bootstrap)",
    )


def _loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise SystemExit(f"--bind must be a loopback address, got {host!r}")


def run(args: argparse.Namespace) -> int:
    config = Config(
        node_name=args.node,
        datacenter=args.datacenter,
        acl_master_token=args.acl_master_token,
        acl_default_policy=args.acl_default_policy,
        acl_enabled=args.acl_enabled,
    )
    host = _loopback(args.bind)
    return run_foreground(lambda: create_app(config), host=host, port=args.port, name="consul")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack consul", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
