"""``devstack``: one command for every piece of the development stack.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``. Only the module of the chosen subcommand is imported, so ``devstack
--help`` stays fast and works even while one piece cannot be imported, and ``python -m devstack
elb`` does not pay for loading the Consul emulator.

The pieces run on the optional ``[devstack]`` extra (aiohttp, moto, uvloop). When one of those
is missing, a command says which package is missing and how to install the extra, instead of
failing with a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass

Run = Callable[[argparse.Namespace], int]

INSTALL_HINT = "pip install 'manticore-reconciler[devstack]'"
# Top-level modules of the [devstack] extra (and what they come with), by distribution.
EXTRA_MODULES = {
    "aiohttp": "aiohttp",
    "multidict": "aiohttp",
    "yarl": "aiohttp",
    "moto": "moto[server]",
    "flask": "moto[server]",
    "flask_cors": "moto[server]",
    "werkzeug": "moto[server]",
    "uvloop": "uvloop",
}


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    module: str
    add_arguments: str = "add_arguments"
    run: str = "run"
    # Modules of the [devstack] extra the command needs before it can do anything.
    needs: tuple[str, ...] = ()


def missing_extra(exc: ImportError) -> str | None:
    """The distribution to install when ``exc`` is a module of the [devstack] extra."""
    name = (exc.name or "").split(".")[0]
    return EXTRA_MODULES.get(name)


def missing_message(command: str, module: str, distribution: str) -> str:
    return (
        f"devstack {command}: the optional dependency {distribution!r} is not installed "
        f"(module {module!r} cannot be imported).\n"
        f"devstack needs the [devstack] extra; install it with:\n    {INSTALL_HINT}"
    )


def first_missing(modules: tuple[str, ...]) -> str | None:
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return module
    return None


COMMANDS = (
    Command(
        "consul",
        "embedded Consul HTTP API in the foreground",
        "devstack.consul.cli",
        needs=("aiohttp",),
    ),
    Command(
        "nomad",
        "embedded Nomad HTTP API with simulated client nodes",
        "devstack.nomad.cli",
        needs=("aiohttp",),
    ),
    Command(
        "elb",
        "Classic ELB endpoint (moto server) with the load balancer",
        "devstack.elb",
        needs=("moto",),
    ),
    Command(
        "haproxy", "the real HAProxy (master-worker) with a bootstrap config", "devstack.haproxy"
    ),
    Command(
        "up",
        "start consul, nomad, elb and haproxy together until stopped",
        "devstack.up",
        needs=("aiohttp", "moto"),
    ),
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
        except ImportError as exc:
            distribution = missing_extra(exc)
            if distribution is not None:
                text = missing_message(command.name, exc.name or "?", distribution)
            else:
                text = f"devstack {command.name}: {command.module} cannot be loaded: {exc}"
            sub.set_defaults(unavailable=text)
            # `devstack <command> --help` still answers, and says what is missing.
            sub.description = f"{command.help}.\n\n{text}"
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            continue
        except AttributeError as exc:
            text = f"devstack {command.name}: {command.module} cannot be loaded: {exc}"
            sub.set_defaults(unavailable=text)
            continue
        # A module's docstring describes its main command; other commands have their own.
        doc = module.__doc__ if command.run == "run" else run.__doc__
        if doc:
            sub.description = f"{command.help}.\n\n{doc.strip()}"
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
        add_arguments(sub)
        sub.set_defaults(handler=run, needs=command.needs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen(args_list))
    # A command that cannot load has no options to parse, so its own are not "unrecognized".
    args, extra = parser.parse_known_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    unavailable = getattr(args, "unavailable", None)
    if unavailable is not None:
        print(unavailable, file=sys.stderr)
        return 2
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    missing = first_missing(getattr(args, "needs", ()))
    if missing is not None:
        print(missing_message(args.command, missing, EXTRA_MODULES[missing]), file=sys.stderr)
        return 2
    handler: Run = args.handler
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        return 130
    except ImportError as exc:
        # A piece that imports part of the extra only when it starts (moto in elb, say).
        distribution = missing_extra(exc)
        if distribution is None:
            raise
        print(missing_message(args.command, exc.name or "?", distribution), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
