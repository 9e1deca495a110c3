"""``devstack up``: the whole development stack on one machine, as one command or one object.

A controller needs a Consul, a Nomad that registers its services in that Consul, a Classic ELB
endpoint and an HAProxy. :class:`DevStack` starts each one as a child process of its own
(``python -m devstack consul|nomad|elb|haproxy``), so a crash or a hang in one is visible and does
not take the others down with it, waits until each answers on its health endpoint, and hands out
the environment a controller reads (``CONSUL_HTTP_ADDR``, ``NOMAD_ADDR``, the AWS variables).
It writes what runs to ``state.json`` in its home directory (``$DEVSTACK_HOME``, else
``./.devstack``), which is how ``devstack status`` and ``devstack down`` find it from another
shell. The children are stopped together: on SIGTERM/SIGINT, on :meth:`DevStack.stop`, or as
soon as one of them dies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from devstack import elb as elb_module
from devstack import haproxy as haproxy_module
from devstack.process import (
    LOOPBACK,
    ChildProcess,
    free_ports,
    http_get,
    http_ok,
    pid_alive,
    pid_cmdline,
    signal_pid,
    wait_pid_gone,
)

SERVICES = ("consul", "nomad", "elb", "haproxy")
STATE_NAME = "state.json"
READY_LINE = r"^(?P<name>\S+) ready on (?P<url>http://\S+)"

# What the stack prints once every service answers; scripts (and the tests) wait for it.
READY_BANNER = "devstack ready"


class DevStackError(RuntimeError):
    """A service did not start, or another stack already runs from the same home."""


def default_home() -> Path:
    """``$DEVSTACK_HOME``, else ``.devstack`` in the working directory."""
    home = os.environ.get("DEVSTACK_HOME")
    return Path(home).absolute() if home else Path.cwd() / ".devstack"


@dataclass(frozen=True)
class Ports:
    """The loopback ports of the stack; the defaults are each product's usual port."""

    consul: int = 8500
    nomad: int = 4646
    elb: int = elb_module.DEFAULT_PORT
    haproxy: int = haproxy_module.DEFAULT_PORT
    haproxy_stats: int = haproxy_module.DEFAULT_STATS_PORT

    def offset(self, by: int) -> Ports:
        """Every port moved by ``by``: a second stack beside the first one."""
        return Ports(*(port + by for port in asdict(self).values()))

    @classmethod
    def ephemeral(cls) -> Ports:
        """Ports the kernel says are free right now (for tests running side by side)."""
        return cls(*free_ports(len(asdict(cls()))))


@dataclass
class ServiceInfo:
    """One running service, as ``state.json`` records it."""

    name: str
    pid: int
    url: str
    health_url: str
    log: str
    address: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _leader_elected(url: str) -> Callable[[], bool]:
    """Consul and Nomad answer ``/v1/status/leader`` with ``""`` until they have a leader."""

    def check() -> bool:
        try:
            status, body = http_get(url, timeout=1.0)
        except OSError:
            return False
        return status == 200 and body.strip() not in (b"", b'""')

    return check


@dataclass
class _Plan:
    name: str
    argv: list[str]
    url: str
    health_url: str
    ready_line: bool
    address: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class DevStack:
    """Consul, Nomad, the ELB endpoint and HAProxy as child processes, started and stopped together.

    ``with DevStack(ephemeral=True, home=tmp) as stack: ... stack.env ...`` is the whole API most
    callers need. ``services`` selects a subset (Nomad without Consul does not register services).
    """

    def __init__(
        self,
        *,
        ports: Ports | None = None,
        ephemeral: bool = False,
        port_offset: int = 0,
        nodes: int = 3,
        home: Path | str | None = None,
        load_balancer: str = elb_module.DEFAULT_LOAD_BALANCER,
        region: str = elb_module.DEFAULT_REGION,
        services: Sequence[str] = SERVICES,
        python: str = sys.executable,
        ready_timeout: float = 30.0,
        write_state: bool = True,
        acl_token: str | None = None,
    ) -> None:
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {SERVICES}")
        if ports is None:
            ports = Ports.ephemeral() if ephemeral else Ports()
        self.ports = ports.offset(port_offset) if port_offset else ports
        self.nodes = nodes
        self.home = Path(home).absolute() if home is not None else default_home()
        self.load_balancer = load_balancer
        self.region = region
        self.service_names = tuple(name for name in SERVICES if name in services)
        self.python = python
        self.ready_timeout = ready_timeout
        self.write_state = write_state
        # ACLs on in Consul (default policy deny) and Nomad, with this one management token:
        # controllers then need tokens of their own, made from their policies in charts/.
        self.acl_token = acl_token
        self.children: dict[str, ChildProcess] = {}
        self.services: dict[str, ServiceInfo] = {}
        self._plans = {plan.name: plan for plan in self._plan()}
        self._stopping = False

    # -- addresses --------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.home / STATE_NAME

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def haproxy_config_dir(self) -> Path:
        return self.home / "haproxy"

    def url(self, service: str) -> str:
        """``http://127.0.0.1:<port>`` of a service of this stack."""
        return self._plans[service].url

    @property
    def env(self) -> dict[str, str]:
        """The variables a controller (or the consul/nomad/aws CLIs) needs to use this stack."""
        env: dict[str, str] = {"DEVSTACK_HOME": str(self.home)}
        if "consul" in self._plans:
            env["CONSUL_HTTP_ADDR"] = self._plans["consul"].address
            if self.acl_token:
                env["CONSUL_HTTP_TOKEN"] = self.acl_token
        if "nomad" in self._plans:
            env["NOMAD_ADDR"] = self._plans["nomad"].url
            if self.acl_token:
                env["NOMAD_TOKEN"] = self.acl_token
        if "elb" in self._plans:
            env.update(elb_module.aws_env(self._plans["elb"].url, self.region))
            env["DEVSTACK_ELB_NAME"] = self.load_balancer
            # Manticore's own names, so `reconciler run elb` finds this stack's load balancer.
            env["ELB_MANTICORE_NAME"] = self.load_balancer
        if "haproxy" in self._plans:
            plan = self._plans["haproxy"]
            # HAProxy's main port in this stack (the ELB's HTTP listener forwards to it).
            env["HAPROXY_HTTP_LISTEN"] = str(self.ports.haproxy)
            env["DEVSTACK_HAPROXY_URL"] = plan.url
            env["DEVSTACK_HAPROXY_STATS_URL"] = plan.extra["stats_url"]
            env["DEVSTACK_HAPROXY_CONFIG_DIR"] = str(self.haproxy_config_dir)
        return env

    def haproxy(self) -> haproxy_module.HAProxy:
        """A handle on the running HAProxy: validate, reload, status (what a renderer needs)."""
        return haproxy_module.HAProxy.attach(
            self.haproxy_config_dir, port=self.ports.haproxy, stats_port=self.ports.haproxy_stats
        )

    def _plan(self) -> list[_Plan]:
        base = [self.python, "-m", "devstack"]
        plans: list[_Plan] = []
        if "consul" in self.service_names:
            url = f"http://{LOOPBACK}:{self.ports.consul}"
            plans.append(
                _Plan(
                    "consul",
                    [*base, "consul", "--port", str(self.ports.consul), *self._consul_acl()],
                    url,
                    f"{url}/v1/status/leader",
                    ready_line=False,
                    address=f"{LOOPBACK}:{self.ports.consul}",
                )
            )
        if "nomad" in self.service_names:
            url = f"http://{LOOPBACK}:{self.ports.nomad}"
            argv = [*base, "nomad", "--port", str(self.ports.nomad), "--nodes", str(self.nodes)]
            if "consul" in self.service_names:
                argv += ["--consul-addr", f"http://{LOOPBACK}:{self.ports.consul}"]
                if self.acl_token:
                    argv += ["--consul-token", self.acl_token]
            if self.acl_token:
                argv += ["--acl-master-token", self.acl_token]
            plans.append(
                _Plan(
                    "nomad",
                    argv,
                    url,
                    f"{url}/v1/status/leader",
                    ready_line=False,
                    address=f"{LOOPBACK}:{self.ports.nomad}",
                    extra={"nodes": str(self.nodes)},
                )
            )
        if "elb" in self.service_names:
            url = f"http://{LOOPBACK}:{self.ports.elb}"
            # The load balancer forwards its HTTP port to HAProxy's mainPort, as in production.
            listener = f"HTTP:80:{self.ports.haproxy}"
            argv = [*base, "elb", "--port", str(self.ports.elb)]
            argv += ["--load-balancer", self.load_balancer, "--listener", listener]
            argv += ["--region", self.region]
            plans.append(
                _Plan(
                    "elb",
                    argv,
                    url,
                    elb_module.health_url(url),
                    ready_line=True,  # the load balancer exists only once the line is printed
                    address=f"{LOOPBACK}:{self.ports.elb}",
                    extra={"load_balancer": self.load_balancer, "region": self.region},
                )
            )
        if "haproxy" in self.service_names:
            url = f"http://{LOOPBACK}:{self.ports.haproxy}"
            stats = f"http://{LOOPBACK}:{self.ports.haproxy_stats}"
            argv = [*base, "haproxy", "--port", str(self.ports.haproxy)]
            argv += ["--stats-port", str(self.ports.haproxy_stats)]
            argv += ["--config-dir", str(self.haproxy_config_dir)]
            plans.append(
                _Plan(
                    "haproxy",
                    argv,
                    url,
                    f"{stats}/healthz",
                    ready_line=True,
                    address=f"{LOOPBACK}:{self.ports.haproxy}",
                    extra={
                        "stats_url": f"{stats}/stats",
                        "config_dir": str(self.haproxy_config_dir),
                    },
                )
            )
        return plans

    def _consul_acl(self) -> list[str]:
        if not self.acl_token:
            return []
        return ["--acl-master-token", self.acl_token, "--acl-default-policy", "deny"]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, on_ready: Callable[[ServiceInfo], None] | None = None) -> DevStack:
        """Start every service and wait until each is ready; ``on_ready`` hears of each one.

        Raises :class:`DevStackError` (after stopping whatever started) when one does not come
        up within ``ready_timeout`` seconds or another stack runs from the same home.
        """
        self._refuse_second_stack()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.ready_timeout
        try:
            # Nomad registers services in Consul from its first second: it starts after Consul
            # is ready, the others start at once beside Consul.
            for name in ("consul", "elb", "haproxy"):
                if name in self._plans:
                    self._spawn(self._plans[name])
            if "consul" in self._plans:
                self._await_ready("consul", deadline, on_ready)
            if "nomad" in self._plans:
                self._spawn(self._plans["nomad"])
            for name in ("nomad", "elb", "haproxy"):
                if name in self._plans:
                    self._await_ready(name, deadline, on_ready)
        except BaseException:
            self.stop()
            raise
        if self.write_state:
            self._write_state()
        return self

    def _refuse_second_stack(self) -> None:
        state = read_state(self.home)
        if state is None:
            return
        pid = int(state.get("pid", 0))
        if _same_process(pid, state.get("cmdline", "")):
            raise DevStackError(
                f"a devstack already runs from {self.home} (pid {pid}); "
                "stop it with `devstack down` or choose another --home"
            )

    def _spawn(self, plan: _Plan) -> None:
        env = dict(os.environ)
        # The children import this very package, wherever it was imported from.
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        env["DEVSTACK_HOME"] = str(self.home)
        child = ChildProcess(
            plan.name,
            plan.argv,
            log_path=self.log_dir / f"{plan.name}.log",
            ready_pattern=READY_LINE if plan.ready_line else None,
            env=env,
            cwd=self.home,
        )
        self.children[plan.name] = child.start()

    def _await_ready(
        self, name: str, deadline: float, on_ready: Callable[[ServiceInfo], None] | None
    ) -> None:
        plan, child = self._plans[name], self.children[name]
        health: Callable[[], bool] = (
            _leader_elected(plan.health_url)
            if name in ("consul", "nomad")
            else lambda: http_ok(plan.health_url, timeout=1.0)
        )
        while True:
            if not child.running():
                raise DevStackError(
                    f"{name} exited with code {child.returncode} before it was ready; "
                    f"its log ({child.log_path}):\n{child.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if child.wait_ready_line(min(0.1, max(remaining, 0))) and health():
                break
            if remaining <= 0:
                raise DevStackError(
                    f"{name} was not ready within {self.ready_timeout} s "
                    f"(waiting for {plan.health_url}); its log ({child.log_path}):\n"
                    f"{child.log_tail()}"
                )
            time.sleep(0.05)
        info = ServiceInfo(
            name=name,
            pid=child.pid,
            url=plan.url,
            health_url=plan.health_url,
            log=str(child.log_path),
            address=plan.address,
            extra=dict(plan.extra),
        )
        self.services[name] = info
        if on_ready is not None:
            on_ready(info)

    def exited(self) -> dict[str, int]:
        """The services whose process ended, with their exit codes."""
        return {
            name: code
            for name, child in self.children.items()
            if (code := child.returncode) is not None
        }

    def wait(self, stop: threading.Event | None = None, interval: float = 0.2) -> dict[str, int]:
        """Block until a service exits (returns them) or ``stop`` is set (returns ``{}``)."""
        stop = stop or threading.Event()
        while not stop.wait(interval):
            if died := self.exited():
                return died
        return {}

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every child together (SIGTERM, SIGKILL after ``timeout``); idempotent."""
        if self._stopping:
            return
        self._stopping = True
        try:
            children = list(reversed(self.children.values()))
            for child in children:
                if child.running() and child.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.send_signal(signal.SIGTERM)
            for child in children:
                child.stop(timeout)
            if self.write_state:
                state = read_state(self.home)
                if state is not None and int(state.get("pid", 0)) == os.getpid():
                    self.state_path.unlink(missing_ok=True)
        finally:
            self._stopping = False

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "cmdline": pid_cmdline(os.getpid()),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "home": str(self.home),
            "services": {name: asdict(info) for name, info in self.services.items()},
            "env": self.env,
        }
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_path)


def read_state(home: Path | str | None = None) -> dict[str, Any] | None:
    """The ``state.json`` of a stack, or None when there is none (or it is unreadable)."""
    path = (Path(home) if home is not None else default_home()) / STATE_NAME
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _same_process(pid: int, cmdline: str) -> bool:
    """``pid`` still runs and is the process that wrote the state (not a recycled pid)."""
    if not pid_alive(pid):
        return False
    current = pid_cmdline(pid)
    return not cmdline or not current or current == cmdline


def format_env(env: dict[str, str]) -> str:
    return "\n".join(f"export {name}={value}" for name, value in env.items())


# -- `devstack up` --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Ports()
    ports = parser.add_argument_group("ports (all on 127.0.0.1)")
    ports.add_argument("--consul-port", type=int, default=defaults.consul)
    ports.add_argument("--nomad-port", type=int, default=defaults.nomad)
    ports.add_argument("--elb-port", type=int, default=defaults.elb)
    ports.add_argument("--haproxy-port", type=int, default=defaults.haproxy, help="mainPort")
    ports.add_argument(
        "--haproxy-stats-port", type=int, default=defaults.haproxy_stats, help="stats/health"
    )
    choice = ports.add_mutually_exclusive_group()
    choice.add_argument(
        "--port-offset",
        type=int,
        default=0,
        help="add this to every port (run a second stack beside the first)",
    )
    choice.add_argument(
        "--ephemeral", action="store_true", help="use free ports chosen at start (tests, CI)"
    )
    parser.add_argument("--nodes", type=int, default=3, help="simulated Nomad client nodes")
    parser.add_argument(
        "--load-balancer",
        default=elb_module.DEFAULT_LOAD_BALANCER,
        help="the Classic ELB created in the endpoint",
    )
    parser.add_argument("--region", default=elb_module.DEFAULT_REGION, help="AWS region")
    parser.add_argument(
        "--only",
        action="append",
        choices=SERVICES,
        default=None,
        help="start only these services (repeatable; default all)",
    )
    parser.add_argument(
        "--acl-token",
        default=None,
        help="turn ACLs on in Consul (default policy deny) and Nomad with this management token",
    )
    add_home_argument(parser)
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds each service has to become ready"
    )


def add_home_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="state, logs and HAProxy files (default $DEVSTACK_HOME, else ./.devstack)",
    )


def run(args: argparse.Namespace) -> int:
    """Start the stack, print its addresses and environment, run until signalled."""
    if args.ephemeral:
        ports = Ports.ephemeral()
    else:
        ports = Ports(
            args.consul_port,
            args.nomad_port,
            args.elb_port,
            args.haproxy_port,
            args.haproxy_stats_port,
        ).offset(args.port_offset)
    stack = DevStack(
        ports=ports,
        nodes=args.nodes,
        home=args.home,
        load_balancer=args.load_balancer,
        region=args.region,
        services=args.only or SERVICES,
        ready_timeout=args.timeout,
        acl_token=args.acl_token,
    )
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def announce(info: ServiceInfo) -> None:
        details = "".join(f", {key} {value}" for key, value in info.extra.items())
        print(f"{info.name} ready on {info.url} (pid {info.pid}{details}, log {info.log})")
        sys.stdout.flush()

    try:
        print(f"devstack: starting {', '.join(stack.service_names)} in {stack.home}", flush=True)
        try:
            stack.start(on_ready=announce)
        except DevStackError as exc:
            print(f"devstack up: {exc}", file=sys.stderr, flush=True)
            return 1
        try:
            print(format_env(stack.env))
            print(f"{READY_BANNER} (state {stack.state_path}; stop with Ctrl-C or `devstack down`)")
            sys.stdout.flush()
            died = stack.wait(stop)
            if died:
                for name, code in died.items():
                    child = stack.children[name]
                    print(
                        f"devstack: {name} exited with code {code}; stopping the rest. "
                        f"Its log ({child.log_path}):\n{child.log_tail()}",
                        file=sys.stderr,
                        flush=True,
                    )
                return 1
            print(f"devstack: {received[0] if received else 'stop'} received, stopping", flush=True)
            return 0
        finally:
            stack.stop()
            print("devstack stopped", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- `devstack status` / `devstack down` ----------------------------------------------------


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    add_home_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the state as JSON")


def service_up(info: dict[str, Any]) -> bool:
    """The recorded process runs and its health endpoint answers."""
    if not pid_alive(int(info.get("pid", 0))):
        return False
    if info.get("name") in ("consul", "nomad"):
        return _leader_elected(str(info.get("health_url", "")))()
    return http_ok(str(info.get("health_url", "")), timeout=1.0)


def run_status(args: argparse.Namespace) -> int:
    """Exit 0 when every service is up, 2 when some are down, 1 when nothing runs."""
    home = args.home.absolute() if args.home else default_home()
    state = read_state(home)
    if state is None:
        print(f"devstack: not running (no {home / STATE_NAME})")
        return 1
    services: dict[str, dict[str, Any]] = state.get("services", {})
    health = {name: service_up(info) for name, info in services.items()}
    owner = int(state.get("pid", 0))
    if args.json:
        print(json.dumps({**state, "up": health}, indent=2))
    else:
        owner_state = "up" if pid_alive(owner) else "gone"
        print(f"devstack (pid {owner}, {owner_state}) started {state.get('started', '?')}")
        print(f"{'NAME':<9} {'PID':>7}  {'ADDRESS':<28} STATE")
        for name, info in services.items():
            state_text = "up" if health[name] else "down"
            print(f"{name:<9} {info.get('pid', '?'):>7}  {info.get('url', ''):<28} {state_text}")
    if not any(health.values()):
        return 1
    return 0 if all(health.values()) else 2


def add_down_arguments(parser: argparse.ArgumentParser) -> None:
    add_home_argument(parser)
    parser.add_argument(
        "--timeout", type=float, default=20.0, help="seconds to wait before killing"
    )


def run_down(args: argparse.Namespace) -> int:
    """Signal the ``devstack up`` of the state file, wait for it; clean up what it left."""
    home = args.home.absolute() if args.home else default_home()
    state = read_state(home)
    if state is None:
        print(f"devstack: not running (no {home / STATE_NAME})")
        return 1
    owner = int(state.get("pid", 0))
    if owner == os.getpid():
        print("devstack down: refusing to signal this very process", file=sys.stderr)
        return 2
    if _same_process(owner, state.get("cmdline", "")):
        print(f"devstack: stopping pid {owner}", flush=True)
        signal_pid(owner, signal.SIGTERM)
        if not wait_pid_gone(owner, args.timeout):
            print(f"devstack: pid {owner} did not stop in time; killing it", flush=True)
            signal_pid(owner, signal.SIGKILL)
            wait_pid_gone(owner, 5.0)
    # Children that outlived their parent (it was killed) are stopped one by one.
    leftovers = []
    for name, info in state.get("services", {}).items():
        pid = int(info.get("pid", 0))
        if pid_alive(pid) and "devstack" in pid_cmdline(pid):
            leftovers.append((name, pid))
            signal_pid(pid, signal.SIGTERM)
    for name, pid in leftovers:
        if not wait_pid_gone(pid, 10.0):
            signal_pid(pid, signal.SIGKILL)
            wait_pid_gone(pid, 5.0)
        print(f"devstack: stopped leftover {name} (pid {pid})")
    (home / STATE_NAME).unlink(missing_ok=True)
    print("devstack stopped")
    return 0
