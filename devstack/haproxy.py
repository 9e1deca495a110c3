"""The real HAProxy, launched and reloaded the way the Manticore HAProxy hosts run it.

HAProxy is not emulated: routing bugs only show up in the real proxy, so the devstack runs the
``haproxy`` binary itself, in master-worker mode. Validating, starting, reloading hitlessly and
talking to the master CLI are production code (:mod:`controllers.haproxy.process`, what the
haproxy controller uses on every HAProxy host); this module adds only what a development stack
needs on top: fixed loopback ports, a bootstrap configuration with a stats/health frontend, an
HAProxy that dies with the process that started it, and the ``devstack haproxy`` command.

Every ``bind`` of the generated configurations is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Self

from controllers.haproxy.process import (
    CONFIG_NAME,
    ConfigInvalid,
    HAProxyError,
    HAProxyProcess,
    HAProxyStatus,
    ReloadFailed,
    Validation,
    haproxy_binary,
)
from devstack.process import LOOPBACK, free_ports, spawn_options

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_PORT",
    "DEFAULT_STATS_PORT",
    "ConfigInvalid",
    "HAProxy",
    "HAProxyError",
    "HAProxyStatus",
    "ReloadFailed",
    "Validation",
    "base_config",
    "bootstrap_config",
    "haproxy_binary",
]

DEFAULT_PORT = 8080
DEFAULT_STATS_PORT = 8404


def base_config(
    *,
    stats_port: int,
    runtime_socket: Path | str | None = None,
    host: str = LOOPBACK,
    hard_stop_after: str = "30s",
) -> str:
    """The ``global``/``defaults`` sections and the stats/health frontend.

    A test appends its own frontends and backends to this. ``runtime_socket`` is the worker's
    admin socket (runtime API); its ``expose-fd listeners`` lets a new worker take the listening
    sockets over from the old one, so a reload never refuses a connection.
    """
    lines = ["global", f"    hard-stop-after {hard_stop_after}"]
    if runtime_socket is not None:
        lines.append(f"    stats socket {runtime_socket} mode 600 level admin expose-fd listeners")
    lines += [
        "",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 30s",
        "    timeout server 30s",
        "",
        "frontend stats",
        f"    bind {host}:{stats_port}",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 10s",
        "    monitor-uri /healthz",
        "",
    ]
    return "\n".join(lines)


def bootstrap_config(
    *,
    port: int,
    stats_port: int,
    runtime_socket: Path | str | None = None,
    host: str = LOOPBACK,
) -> str:
    """A complete configuration with no routes yet: the ``mainPort`` frontend answers 503."""
    return base_config(stats_port=stats_port, runtime_socket=runtime_socket, host=host) + "\n".join(
        [
            "frontend main",
            f"    bind {host}:{port}",
            "    default_backend no_route",
            "",
            "backend no_route",
            '    http-request return status 503 content-type text/plain string "no route\\n"',
            "",
        ]
    )


class HAProxy(HAProxyProcess):
    """:class:`~controllers.haproxy.process.HAProxyProcess` on fixed loopback ports.

    The ports only matter for :meth:`bootstrap_config`, :attr:`url` and the stats URLs; status,
    validation and reloads go through the files and sockets in ``config_dir``. The master dies
    with the thread that started it (Linux), so a crashed test or stack leaves nothing behind.
    """

    def __init__(
        self,
        config_dir: Path | str,
        *,
        port: int = DEFAULT_PORT,
        stats_port: int = DEFAULT_STATS_PORT,
        host: str = LOOPBACK,
        binary: str = "haproxy",
    ) -> None:
        super().__init__(config_dir, binary=binary, die_with_parent=True)
        self.port = port
        self.stats_port = stats_port
        self.host = host

    @classmethod
    def attach(
        cls,
        config_dir: Path | str,
        *,
        port: int = DEFAULT_PORT,
        stats_port: int = DEFAULT_STATS_PORT,
        host: str = LOOPBACK,
        binary: str = "haproxy",
    ) -> HAProxy:
        """A handle on an HAProxy another process started with the same ``config_dir``."""
        proxy = cls(config_dir, port=port, stats_port=stats_port, host=host, binary=binary)
        if proxy.master_pid() is None:
            raise HAProxyError(f"no running HAProxy for {proxy.config_dir}")
        return proxy

    def _spawn_options(self) -> dict[str, Any]:
        return spawn_options()

    # -- addresses --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The ``mainPort`` frontend of the bootstrap configuration."""
        return f"http://{self.host}:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://{self.host}:{self.stats_port}/stats"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.stats_port}/healthz"

    def base_config(self) -> str:
        """:func:`base_config` with this instance's stats port and runtime socket."""
        return base_config(
            stats_port=self.stats_port, runtime_socket=self.runtime_socket, host=self.host
        )

    def bootstrap_config(self) -> str:
        """:func:`bootstrap_config` with this instance's ports and runtime socket."""
        return bootstrap_config(
            port=self.port,
            stats_port=self.stats_port,
            runtime_socket=self.runtime_socket,
            host=self.host,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, cfg_text: str | None = None, *, timeout: float = 10.0) -> Self:
        """Validate ``cfg_text`` (default: :meth:`bootstrap_config`), start the master, wait for
        its first worker. Raises :class:`ConfigInvalid` or :class:`HAProxyError`."""
        return super().start(
            self.bootstrap_config() if cfg_text is None else cfg_text, timeout=timeout
        )

    def __enter__(self) -> HAProxy:
        if self.master_pid() is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- `devstack haproxy` ---------------------------------------------------------------------


def default_config_dir() -> Path:
    home = os.environ.get("DEVSTACK_HOME")
    return (Path(home) if home else Path.cwd() / ".devstack") / "haproxy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"mainPort HTTP frontend on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--stats-port",
        type=int,
        default=DEFAULT_STATS_PORT,
        help=f"stats (/stats) and health (/healthz) frontend (default {DEFAULT_STATS_PORT})",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="where haproxy.cfg, the pid file, the sockets and the log live "
        "(default $DEVSTACK_HOME/haproxy or ./.devstack/haproxy)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="start from this configuration instead of the bootstrap one; SIGHUP reloads it",
    )
    parser.add_argument("--binary", default="haproxy", help="the haproxy executable")


def run(args: argparse.Namespace) -> int:
    """Run HAProxy in the foreground until SIGTERM/SIGINT; SIGHUP reloads ``--config``."""
    port, stats_port = args.port, args.stats_port
    if port == 0 or stats_port == 0:
        chosen = iter(free_ports(2))
        port = port or next(chosen)
        stats_port = stats_port or next(chosen)
    config_dir = args.config_dir or default_config_dir()
    proxy = HAProxy(config_dir, port=port, stats_port=stats_port, binary=args.binary)
    stop = threading.Event()
    reload_requested = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_requested.set()

    # Handlers first: a signal that arrives while HAProxy starts must not kill us and orphan it.
    previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    try:
        try:
            proxy.start(args.config.read_text() if args.config else None)
        except (HAProxyError, OSError) as exc:
            print(f"devstack haproxy: {exc}", file=sys.stderr, flush=True)
            return 1
        print(
            f"haproxy ready on {proxy.url} (stats {proxy.stats_url}, "
            f"master socket {proxy.master_socket}, config {proxy.config_path})",
            flush=True,
        )
        while not stop.wait(0.2):
            if proxy.master_pid() is None:
                print("haproxy master exited unexpectedly", file=sys.stderr, flush=True)
                return 1
            if reload_requested.is_set():
                reload_requested.clear()
                source = args.config or proxy.config_path
                try:
                    state = proxy.reload(source.read_text())
                    print(f"haproxy reloaded (workers {list(state.workers)})", flush=True)
                except (HAProxyError, OSError) as exc:
                    print(f"haproxy reload refused: {exc}", file=sys.stderr, flush=True)
    finally:
        proxy.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("haproxy stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack haproxy", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
