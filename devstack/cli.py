"""``devstack``: one command for every piece of the development stack.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``. Only the module of the chosen subcommand is imported, so ``devstack
--help`` stays fast and works even while one piece cannot be imported, and ``python -m devstack
elb`` does not pay for loading the Consul emulator.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    module: str
    add_arguments: str = "add_arguments"
    run: str = "run"


COMMANDS = (
    Command("consul", "embedded Consul HTTP API in the foreground", "devstack.consul.cli"),
    Command("nomad", "embedded Nomad HTTP API with simulated client nodes", "devstack.nomad.cli"),
    Command("elb", "Classic ELB endpoint (moto server) with the load balancer", "devstack.elb"),
    Command(
        "haproxy", "the real HAProxy (master-worker) with a bootstrap config", "devstack.haproxy"
    ),
    Command("up", "start consul, nomad, elb and haproxy together until stopped", "devstack.up"),
    Command(
        "status",
        "show what a running `devstack up` runs (exit 1 when nothing does)",
        "devstack.up",
        add_arguments="add_status_arguments",
        run="run_status",
    ),
    Command(
        "down",
        "stop a running `devstack up`",
        "devstack.up",
        add_arguments="add_down_arguments",
        run="run_down",
    ),
)


def _chosen(argv: list[str]) -> str | None:
    # The top-level parser has only -h, so the first word that is not an option is the command.
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``chosen``'s module is imported to describe its arguments."""
    parser = argparse.ArgumentParser(
        prog="devstack",
        description="The embedded development stack of Manticore Reconciler: Consul, Nomad, "
        "a Classic ELB endpoint and HAProxy on 127.0.0.1.",
        epilog="`devstack up` starts everything; `devstack <command> --help` for each command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        if command.name != chosen:
            continue
        try:
            module = importlib.import_module(command.module)
            add_arguments: Callable[[argparse.ArgumentParser], None] = getattr(
                module, command.add_arguments
            )
            run: Run = getattr(module, command.run)
        except (ImportError, AttributeError) as exc:
            sub.set_defaults(unavailable=f"{command.module} cannot be loaded: {exc}")
            continue
        # A module's docstring describes its main command; other commands have their own.
        doc = module.__doc__ if command.run == "run" else run.__doc__
        if doc:
            sub.description = f"{command.help}.\n\n{doc.strip()}"
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
        add_arguments(sub)
        sub.set_defaults(handler=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen(args_list))
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    unavailable = getattr(args, "unavailable", None)
    if unavailable is not None:
        print(f"devstack {args.command}: {unavailable}", file=sys.stderr)
        return 2
    handler: Run = args.handler
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
