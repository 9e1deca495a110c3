"""The ``reconciler`` command: run registered controllers, or list them.

    reconciler list
    reconciler run waitlist jobs          # two controllers in one process
    reconciler run --all
    reconciler run --import mypkg.mine mine

Packages add commands of their own (an operator's ``status`` view, say) through the
``reconciler.commands`` entry-point group: each entry point is a callable that gets the
subparsers object, adds its parser and sets ``handler`` (``args -> exit code``) as a default.

Clients are configured from the environment (``CONSUL_HTTP_ADDR``, ``NOMAD_ADDR``, the AWS
chain...); see ``docs/architecture.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

import anyio

from reconciler import logging as rlogging
from reconciler.clients.errors import ConfigError
from reconciler.controller import Controller, RunnerOptions
from reconciler.manager import Manager, ManagerOptions
from reconciler.registry import discover

COMMANDS_GROUP = "reconciler.commands"


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "0.0.0.0", int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Run reconciliation controllers for Nomad and Consul.",
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[m for m in os.environ.get("RECONCILER_IMPORT", "").split(",") if m],
        metavar="MODULE[:ATTR]",
        help="also load controllers from this module (repeatable; env RECONCILER_IMPORT)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run controllers until SIGTERM/SIGINT")
    run.add_argument("names", nargs="*", metavar="NAME", help="controllers to run")
    run.add_argument("--all", action="store_true", help="run every registered controller")
    run.add_argument(
        "--metrics-addr",
        type=_address,
        default=_address(os.environ.get("RECONCILER_METRICS_ADDR", "127.0.0.1:9090")),
        metavar="HOST:PORT",
        help="serve /metrics, /healthz, /readyz here (env RECONCILER_METRICS_ADDR; "
        "default 127.0.0.1:9090; port 0 picks a free one)",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=float(os.environ.get("RECONCILER_DRAIN_TIMEOUT", "30")),
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight reconciles may run to completion before leaders "
        "release their locks and what still runs is cancelled (default 30; standbys stop at "
        "once)",
    )
    run.add_argument(
        "--identity",
        default=os.environ.get("RECONCILER_IDENTITY"),
        help="name of this replica in leader locks (default host:pid; env RECONCILER_IDENTITY)",
    )
    run.add_argument(
        "--lock-ttl",
        type=int,
        default=int(os.environ.get("RECONCILER_LOCK_TTL", "10")),
        metavar="SECONDS",
        help="leader session TTL, >= 10 (default 10)",
    )
    run.add_argument(
        "--lock-delay",
        type=int,
        default=int(os.environ.get("RECONCILER_LOCK_DELAY", "1")),
        metavar="SECONDS",
        help="leader session lock-delay (default 1)",
    )
    run.add_argument(
        "--log-format",
        choices=("json", "console"),
        default=os.environ.get("RECONCILER_LOG_FORMAT", "json"),
        help="json lines (default) or a console format for humans",
    )
    run.add_argument(
        "--log-level", default=os.environ.get("RECONCILER_LOG_LEVEL", "INFO"), help="log level"
    )

    sub.add_parser("list", help="list registered controllers, what they watch and write")
    for ep in entry_points(group=COMMANDS_GROUP):
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            print(f"reconciler: command plugin {ep.name} failed to load: {exc}", file=sys.stderr)
    return parser


def _select(
    registry: dict[str, Controller], names: Sequence[str], everything: bool
) -> list[Controller]:
    if everything:
        if names:
            raise ConfigError("give controller names or --all, not both")
        if not registry:
            raise ConfigError("no controllers are registered")
        return list(registry.values())
    if not names:
        raise ConfigError("name at least one controller, or --all (see `reconciler list`)")
    unknown = [n for n in names if n not in registry]
    if unknown:
        known = ", ".join(sorted(registry)) or "none"
        raise ConfigError(f"unknown controller(s) {', '.join(unknown)}; registered: {known}")
    return [registry[n] for n in dict.fromkeys(names)]


def _list(registry: dict[str, Controller]) -> int:
    if not registry:
        print("no controllers registered")
        return 0
    for controller in sorted(registry.values(), key=lambda c: c.name):
        print(controller.name)
        if controller.description:
            print(f"  {controller.description}")
        for watch in controller.watches:
            print(f"  watches: {watch.describe or watch.name}")
        for target in controller.writes:
            print(f"  writes:  {target}")
        elected = "leader-elected" if controller.needs_leadership else "every replica"
        resync = (
            f"resync {controller.resync_period:g}s" if controller.resync_period else "no resync"
        )
        print(f"  runs:    {controller.workers} worker(s), {elected}, {resync}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is not None:
        try:
            return int(handler(args))
        except ConfigError as exc:
            print(f"reconciler: {exc}", file=sys.stderr)
            return 2
    try:
        registry = discover(args.imports)
        if args.command == "list":
            return _list(registry)
        controllers = _select(registry, args.names, args.all)
    except ConfigError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return 2
    rlogging.configure(args.log_format, args.log_level)
    host, port = args.metrics_addr
    options = ManagerOptions(
        metrics_host=host,
        metrics_port=port,
        drain_timeout=args.drain_timeout,
        runner=RunnerOptions(
            identity=args.identity, lock_ttl=args.lock_ttl, lock_delay=args.lock_delay
        ),
    )
    try:
        manager = Manager(controllers, options=options)
        drained = anyio.run(manager.run_until_signalled)
    except ConfigError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        # Raised inside the manager's task group (start-up checks, startup hooks).
        config = group.subgroup(ConfigError)
        if config is None:
            raise
        print(f"reconciler: {_first_leaf(config)}", file=sys.stderr)
        return 2
    return 0 if drained else 1


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


if __name__ == "__main__":
    sys.exit(main())
