"""Manticore's configuration: read once from the environment, validated at start, one object.

Manticore's own variable names are accepted where they exist (``DOMAIN_NAME``,
``HAPROXY_HTTP_LISTEN`` / ``HAPROXY_HTTP_PORT``, ``TCP_PORT_RANGE_START``/``END``,
``ELB_MANTICORE_NAME``, ``ELB_SSL_PORT``, ``ELB_WS_PORT``, ``AWS_REGION``, ``MAX_USERS``,
``USAGE_DURATION``, ``WARNING_DURATION``, ``RESET_TIMER_ALLOWED``, ``JWT_SECRET``...), ours are
prefixed ``MANTICORE_``. Every variable is listed in one table in the README. A bad value is a
:class:`~reconciler.clients.errors.ConfigError` naming the variable, raised when a controller
starts, never at reconcile time.

Settings are grouped by the part of the system that reads them; each group is a strict model,
so a typo in code is a type error and a bad value in the environment is a clear message.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controllers.api.elb import LoadBalancerName
from controllers.api.haproxy import DomainName, IPAddress
from controllers.api.waiting import DEFAULT_MAX_USERS
from reconciler.clients.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class JobSettings(_Group):
    """What the jobs controller puts in each user's Nomad job."""

    template: Path | None = Field(
        default=None,
        alias="MANTICORE_JOB_TEMPLATE",
        description="Nomad JSON job template file (default: the production docker template)",
    )
    datacenters: tuple[str, ...] = Field(
        default=("dc1",),
        alias="MANTICORE_DATACENTERS",
        description="Datacenters of the users' jobs, comma-separated (the template's "
        "{{datacenters}}); the waitlist counts capacity there",
    )
    core_version: str = Field(
        default="8.2.0",
        alias="MANTICORE_DEFAULT_CORE_VERSION",
        description="sdl_core version when a request names none",
    )
    core_build: str = Field(
        default="default",
        alias="MANTICORE_DEFAULT_CORE_BUILD",
        description="sdl_core build when a request names none (image <build>-<version>)",
    )
    hmi_type: str = Field(
        default="generic",
        alias="MANTICORE_DEFAULT_HMI_TYPE",
        description="HMI type when a request names none (image manticore-hmi-<type>)",
    )
    hmi_version: str = Field(
        default="master",
        alias="MANTICORE_DEFAULT_HMI_VERSION",
        description="HMI version when a request names none",
    )
    core_versions: tuple[str, ...] = Field(
        default=("8.2.0",),
        alias="MANTICORE_CORE_VERSIONS",
        description="sdl_core versions a request may ask for (besides the default)",
    )
    core_builds: tuple[str, ...] = Field(
        default=("default",),
        alias="MANTICORE_CORE_BUILDS",
        description="sdl_core builds a request may ask for",
    )
    hmi_types: tuple[str, ...] = Field(
        default=("generic",),
        alias="MANTICORE_HMI_TYPES",
        description="HMI types a request may ask for",
    )
    hmi_versions: tuple[str, ...] = Field(
        default=("master",),
        alias="MANTICORE_HMI_VERSIONS",
        description="HMI versions a request may ask for",
    )
    job_vars: tuple[str, ...] = Field(
        default=(),
        alias="MANTICORE_JOB_VARS",
        description="name=value,... pairs the job template reads as {{var.<name>}}",
    )

    @model_validator(mode="after")
    def _job_vars(self) -> JobSettings:
        for pair in self.job_vars:
            name, sep, _ = pair.partition("=")
            if not sep or not name.strip() or not name.strip().replace("_", "").isalnum():
                raise ValueError(f"MANTICORE_JOB_VARS: expected name=value, got {pair!r}")
        return self

    @property
    def variables(self) -> dict[str, str]:
        """``MANTICORE_JOB_VARS`` as a mapping."""
        return {name.strip(): value for name, _, value in (p.partition("=") for p in self.job_vars)}


class CapacitySettings(_Group):
    """How many users the waitlist may claim."""

    max_users: int | None = Field(
        default=None,
        ge=0,
        alias="MAX_USERS",
        description="Claimed users at most (default: as many as Nomad can place)",
    )
    waiting_list_max_users: int = Field(
        default=DEFAULT_MAX_USERS,
        ge=1,
        le=1_000_000,
        alias="MANTICORE_WAITING_LIST_MAX_USERS",
        description="Users the waiting list holds at most; beyond it new users wait outside "
        "the list (their request stays) and an error is logged",
    )


class HAProxySettings(_Group):
    """Routing: what haproxy-kv publishes and the haproxy controller renders.

    The first fields are the routing contract both controllers share; the ``MANTICORE_HAPROXY_*``
    ones configure the haproxy controller and the HAProxy beside it (files, timeouts, limits,
    pre-provisioned slots, debounce).
    """

    domain_name: DomainName = Field(
        default="manticore.localhost",
        alias="DOMAIN_NAME",
        description="Users reach <subdomain>.<DOMAIN_NAME>; written to haproxy/domainName",
    )
    main_port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        alias="HAPROXY_HTTP_LISTEN",
        description="HAProxy's HTTP port (also HAPROXY_HTTP_PORT); written to haproxy/mainPort",
    )
    tcp_port_range_start: int = Field(
        default=20000,
        ge=1,
        le=65535,
        alias="TCP_PORT_RANGE_START",
        description="First external TCP port handed to a user's TCP service",
    )
    tcp_port_range_end: int = Field(
        default=20999,
        ge=1,
        le=65535,
        alias="TCP_PORT_RANGE_END",
        description="Last external TCP port (inclusive)",
    )
    web_app_service: str = Field(
        default="manticore-service",
        alias="MANTICORE_WEB_APP_SERVICE",
        description="Consul service of the web app, published to haproxy/webAppAddresses/<i>",
    )
    subdomain_length: int = Field(
        default=16,
        ge=16,
        le=63,
        alias="MANTICORE_SUBDOMAIN_LENGTH",
        description="Characters of [a-z0-9] in each random subdomain (16: about 83 bits)",
    )

    # -- the haproxy controller ---------------------------------------------------------------
    config_dir: Path = Field(
        default=Path("/var/lib/manticore/haproxy"),
        alias="MANTICORE_HAPROXY_CONFIG_DIR",
        description="haproxy.cfg, map files, pid file, sockets and HAProxy's log",
    )
    template: Path | None = Field(
        default=None,
        alias="MANTICORE_HAPROXY_TEMPLATE",
        description="base template (global/defaults) replacing the built-in one",
    )
    not_found_page: Path | None = Field(
        default=None,
        alias="MANTICORE_HAPROXY_NOT_FOUND_PAGE",
        description="HTML page answered (404) for an unknown subdomain",
    )
    binary: str = Field(
        default="haproxy",
        alias="MANTICORE_HAPROXY_BINARY",
        description="the haproxy executable (2.6 or later), looked up in PATH and the sbin dirs",
    )
    start: bool = Field(
        default=True,
        alias="MANTICORE_HAPROXY_START",
        description="start HAProxy (master-worker) when none runs for the config dir",
    )
    bind_address: IPAddress = Field(
        default="127.0.0.1",
        alias="MANTICORE_HAPROXY_BIND_ADDRESS",
        description="address of the mainPort and TCP frontends (0.0.0.0 in production)",
    )
    stats_port: int = Field(
        default=8404,
        ge=0,
        le=65535,
        alias="MANTICORE_HAPROXY_STATS_PORT",
        description="HAProxy stats page and /healthz on 127.0.0.1 (0: none)",
    )
    update_mode: Literal["runtime", "reload"] = Field(
        default="runtime",
        alias="MANTICORE_HAPROXY_UPDATE_MODE",
        description="runtime: maps and slots over the runtime API; reload: reload on every change",
    )
    wait_min: float = Field(
        default=0.1,
        ge=0,
        alias="MANTICORE_HAPROXY_WAIT_MIN",
        description="seconds of quiet after a change before applying it",
    )
    wait_max: float = Field(
        default=0.3,
        ge=0,
        alias="MANTICORE_HAPROXY_WAIT_MAX",
        description="longest a change waits while changes keep coming",
    )
    timeout_connect: float = Field(
        default=5.0,
        gt=0,
        alias="MANTICORE_HAPROXY_TIMEOUT_CONNECT",
        description="seconds HAProxy waits for a user's container to accept a connection",
    )
    timeout_client: float = Field(
        default=3600.0,
        gt=0,
        alias="MANTICORE_HAPROXY_TIMEOUT_CLIENT",
        description="seconds a client may stay silent (Manticore's sessions last up to an hour)",
    )
    timeout_server: float = Field(
        default=3600.0,
        gt=0,
        alias="MANTICORE_HAPROXY_TIMEOUT_SERVER",
        description="seconds a container may stay silent",
    )
    timeout_tunnel: float = Field(
        default=3600.0,
        gt=0,
        alias="MANTICORE_HAPROXY_TIMEOUT_TUNNEL",
        description="idle timeout of websockets and TCP sessions",
    )
    timeout_http_request: float = Field(
        default=10.0,
        gt=0,
        alias="MANTICORE_HAPROXY_TIMEOUT_HTTP_REQUEST",
        description="seconds to receive a whole HTTP request head (slow clients are cut)",
    )
    timeout_http_keep_alive: float = Field(
        default=60.0,
        gt=0,
        alias="MANTICORE_HAPROXY_TIMEOUT_HTTP_KEEP_ALIVE",
        description="seconds an idle keep-alive connection is kept open",
    )
    maxconn: int = Field(
        default=4096,
        ge=1,
        alias="MANTICORE_HAPROXY_MAXCONN",
        description="HAProxy's global maxconn (it needs about twice as many file descriptors)",
    )
    hard_stop_after: float = Field(
        default=3600.0,
        gt=0,
        alias="MANTICORE_HAPROXY_HARD_STOP_AFTER",
        description="longest an old worker serves its open connections after a reload",
    )
    http_slots: int = Field(
        default=4096,
        ge=1,
        le=65536,
        alias="MANTICORE_HAPROXY_HTTP_SLOTS",
        description="pre-provisioned HTTP route slots, about 12 KiB of HAProxy memory each "
        "(grown 1.75x, with a reload, when 90% full)",
    )
    tcp_slots: int = Field(
        default=1024,
        ge=1,
        le=65536,
        alias="MANTICORE_HAPROXY_TCP_SLOTS",
        description="pre-provisioned TCP route slots (never more than the port range)",
    )
    web_app_slots: int = Field(
        default=16,
        ge=1,
        le=1024,
        alias="MANTICORE_HAPROXY_WEB_APP_SLOTS",
        description="pre-provisioned servers of the web app backend (grown like the others)",
    )
    verify_interval: float = Field(
        default=60.0,
        gt=0,
        alias="MANTICORE_HAPROXY_VERIFY_INTERVAL",
        description="seconds between checks that HAProxy's runtime state matches the files",
    )
    safety_reload_interval: float = Field(
        default=21600.0,
        ge=0,
        alias="MANTICORE_HAPROXY_SAFETY_RELOAD_INTERVAL",
        description="seconds between full re-render and reload safety nets (0: never)",
    )

    @property
    def tcp_port_range(self) -> range:
        return range(self.tcp_port_range_start, self.tcp_port_range_end + 1)

    @model_validator(mode="after")
    def _range(self) -> HAProxySettings:
        if self.tcp_port_range_end < self.tcp_port_range_start:
            raise ValueError("TCP_PORT_RANGE_END must be >= TCP_PORT_RANGE_START")
        if self.tcp_port_range_start <= self.main_port <= self.tcp_port_range_end:
            raise ValueError("HAPROXY_HTTP_LISTEN must lie outside the TCP port range")
        if self.stats_port and self.stats_port in self.tcp_port_range:
            raise ValueError("MANTICORE_HAPROXY_STATS_PORT must lie outside the TCP port range")
        if self.stats_port and self.stats_port == self.main_port:
            raise ValueError("MANTICORE_HAPROXY_STATS_PORT must differ from HAPROXY_HTTP_LISTEN")
        if self.wait_max < self.wait_min:
            raise ValueError("MANTICORE_HAPROXY_WAIT_MAX must be >= MANTICORE_HAPROXY_WAIT_MIN")
        return self


class ELBSettings(_Group):
    """The Classic ELB(s) in front of HAProxy.

    Fixed listeners forward to HAProxy's main port: HTTP ``MANTICORE_ELB_HTTP_PORT`` (HTTPS on
    ``MANTICORE_ELB_HTTPS_PORT`` with ``ELB_ENCRYPT_HTTP``), the websocket port ``ELB_WS_PORT``
    (TCP, or SSL with ``ELB_ENCRYPT_WS``) and ``ELB_SSL_PORT`` (SSL); each user's TCP port gets
    a ``TCP P -> P`` listener (SSL with ``ELB_ENCRYPT_TCP``). Every encrypted listener uses
    ``SSL_CERTIFICATE_ARN``.
    """

    load_balancers: tuple[LoadBalancerName, ...] = Field(
        default=(),
        alias="ELB_MANTICORE_NAME",
        description="Classic ELB name(s), comma-separated; users are spread over them",
    )
    region: str | None = Field(
        default=None, alias="AWS_REGION", description="AWS region (else the standard AWS chain)"
    )
    http_port: int = Field(
        default=80,
        ge=1,
        le=65535,
        alias="MANTICORE_ELB_HTTP_PORT",
        description="ELB HTTP listener port -> HAProxy's main port",
    )
    https_port: int = Field(
        default=443,
        ge=1,
        le=65535,
        alias="MANTICORE_ELB_HTTPS_PORT",
        description="ELB HTTPS listener port when ELB_ENCRYPT_HTTP",
    )
    ssl_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        alias="ELB_SSL_PORT",
        description="ELB SSL listener port -> HAProxy's main port (needs SSL_CERTIFICATE_ARN)",
    )
    ws_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        alias="ELB_WS_PORT",
        description="ELB websocket (TCP) listener port -> HAProxy's main port",
    )
    encrypt_http: bool = Field(
        default=False, alias="ELB_ENCRYPT_HTTP", description="HTTPS instead of HTTP"
    )
    encrypt_ws: bool = Field(
        default=False, alias="ELB_ENCRYPT_WS", description="SSL instead of TCP on ELB_WS_PORT"
    )
    encrypt_tcp: bool = Field(
        default=False, alias="ELB_ENCRYPT_TCP", description="SSL instead of TCP for user ports"
    )
    listener_quota: int = Field(
        default=100,
        ge=1,
        alias="MANTICORE_ELB_LISTENER_QUOTA",
        description="Listeners per load balancer (AWS's default quota is 100)",
    )
    certificate_arn: str | None = Field(
        default=None,
        alias="SSL_CERTIFICATE_ARN",
        pattern=r"^arn:[A-Za-z0-9-]+:(iam|acm):[A-Za-z0-9-]*:\d{12}:[A-Za-z0-9/_.+=,@-]+$",
        description="Certificate of every encrypted listener",
    )
    calls_per_second: float = Field(
        default=5.0,
        gt=0,
        le=100,
        alias="MANTICORE_ELB_CALLS_PER_SECOND",
        description="Pace of mutating ELB calls (AWS throttles at about 10/s per account)",
    )

    @model_validator(mode="after")
    def _listeners(self) -> ELBSettings:
        needs_certificate = [
            name
            for name, used in (
                ("ELB_SSL_PORT", self.ssl_port is not None),
                ("ELB_ENCRYPT_HTTP", self.encrypt_http),
                ("ELB_ENCRYPT_WS", self.encrypt_ws),
                ("ELB_ENCRYPT_TCP", self.encrypt_tcp),
            )
            if used
        ]
        if needs_certificate and not self.certificate_arn:
            raise ValueError(f"{', '.join(needs_certificate)} need(s) SSL_CERTIFICATE_ARN")
        if self.encrypt_ws and self.ws_port is None:
            raise ValueError("ELB_ENCRYPT_WS needs ELB_WS_PORT")
        fixed = self.fixed_ports
        if len(set(fixed)) != len(fixed):
            raise ValueError(f"the fixed ELB listener ports must differ, got {fixed}")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.load_balancers)

    @property
    def fixed_ports(self) -> tuple[int, ...]:
        """The load-balancer ports of the fixed (non-user) listeners."""
        web = self.https_port if self.encrypt_http else self.http_port
        return tuple(p for p in (web, self.ws_port, self.ssl_port) if p is not None)


class UsageSettings(_Group):
    """How long a claimed user may keep their pair (the expiry controller; the API reports it).

    Manticore's inactivity timers: after ``USAGE_DURATION`` seconds the user is warned, after
    ``WARNING_DURATION`` more the request is deleted; activity restarts the clock only when
    ``RESET_TIMER_ALLOWED``. Unset ``USAGE_DURATION``: no limit.
    """

    usage_duration: float | None = Field(
        default=None,
        gt=0,
        alias="USAGE_DURATION",
        description="Seconds a claimed user may use their pair before the warning (unset: no "
        "limit)",
    )
    warning_duration: float = Field(
        default=60.0,
        ge=0,
        alias="WARNING_DURATION",
        description="Seconds between the warning and the end",
    )
    reset_timer_allowed: bool = Field(
        default=False,
        alias="RESET_TIMER_ALLOWED",
        description="User activity (POST .../activity) restarts the usage clock",
    )
    recheck_interval: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        alias="MANTICORE_EXPIRY_RECHECK_INTERVAL",
        description="Longest the expiry controller waits before looking at the deadlines again",
    )

    @property
    def enabled(self) -> bool:
        return self.usage_duration is not None


class APISettings(_Group):
    """The intake API (``manticore-api``): where it listens, how it registers, what it tells."""

    jwt_secret: str | None = Field(
        default=None,
        alias="JWT_SECRET",
        repr=False,
        description="HS256 secret: the user id is the JWT's user_id claim (unset: from the body)",
    )
    http_port: int = Field(
        default=4000, ge=0, le=65535, alias="HTTP_PORT", description="Port of the API (0: free)"
    )
    bind_address: IPAddress = Field(
        default="127.0.0.1",
        alias="MANTICORE_API_BIND_ADDRESS",
        description="Address the API listens on (0.0.0.0 in production)",
    )
    advertise_address: IPAddress | None = Field(
        default=None,
        alias="MANTICORE_API_ADVERTISE_ADDRESS",
        description="Address registered in Consul (default: the bind address, 127.0.0.1 for "
        "0.0.0.0)",
    )
    register_service: bool = Field(
        default=True,
        alias="MANTICORE_API_REGISTER",
        description="Register the API in Consul as MANTICORE_WEB_APP_SERVICE (with an HTTP "
        "check on /healthz) and deregister it on shutdown",
    )
    service_id: str | None = Field(
        default=None,
        alias="MANTICORE_API_SERVICE_ID",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Consul service id (default <service>-<address>-<port>)",
    )
    check_interval: float = Field(default=10.0, gt=0, le=3600, alias="MANTICORE_API_CHECK_INTERVAL")
    deregister_after: float = Field(
        default=60.0,
        ge=60,
        le=86400,
        alias="MANTICORE_API_DEREGISTER_AFTER",
        description="Consul removes an instance critical this long (a killed instance)",
    )
    public_scheme: Literal["http", "https"] = Field(
        default="http",
        alias="MANTICORE_PUBLIC_SCHEME",
        description="Scheme of the users' HMI URLs (https behind a TLS-terminating ELB)",
    )
    public_http_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        alias="MANTICORE_PUBLIC_HTTP_PORT",
        description="Port in the users' HMI URLs (default: the ELB's HTTP port with an ELB, "
        "else haproxy/mainPort)",
    )
    public_tcp_host: str | None = Field(
        default=None,
        alias="MANTICORE_PUBLIC_TCP_HOST",
        pattern=r"^[A-Za-z0-9.-]{1,253}$",
        description="Host of the users' core TCP address (default: the ELB's DNS name with an "
        "ELB, else DOMAIN_NAME)",
    )
    webpage_disabled: bool = Field(
        default=False, alias="WEBPAGE_DISABLED", description="Do not serve the page on /"
    )
    max_body_bytes: int = Field(
        default=16 * 1024, ge=256, le=1024 * 1024, alias="MANTICORE_API_MAX_BODY_BYTES"
    )
    max_streams: int = Field(
        default=10_000,
        ge=1,
        alias="MANTICORE_API_MAX_STREAMS",
        description="Open event streams one instance holds at most (then 503)",
    )
    max_streams_per_user: int = Field(
        default=8,
        ge=1,
        alias="MANTICORE_API_MAX_STREAMS_PER_USER",
        description="Open event streams of one user at most (then 429)",
    )
    keepalive: float = Field(
        default=15.0,
        gt=0,
        le=300,
        alias="MANTICORE_API_SSE_KEEPALIVE",
        description="Seconds between keep-alive comments on an idle event stream",
    )


class Settings(_Group):
    """Everything Manticore's controllers and API are configured with."""

    jobs: JobSettings = Field(default_factory=JobSettings)
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)
    haproxy: HAProxySettings = Field(default_factory=HAProxySettings)
    elb: ELBSettings = Field(default_factory=ELBSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    api: APISettings = Field(default_factory=APISettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        groups: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            group_cls = field.annotation
            assert isinstance(group_cls, type)
            assert issubclass(group_cls, _Group)
            groups[name] = _read_group(group_cls, env)
        return cls(**groups)


def _aliases(group: type[_Group]) -> dict[str, str]:
    return {f.alias: name for name, f in group.model_fields.items() if f.alias}


# Manticore v2 names the HAProxy main port HAPROXY_HTTP_PORT; v1 HAPROXY_HTTP_LISTEN.
_SYNONYMS = {"HAPROXY_HTTP_PORT": "HAPROXY_HTTP_LISTEN"}


def _read_group(group: type[_Group], env: Mapping[str, str]) -> _Group:
    values: dict[str, Any] = {}
    for alias, name in _aliases(group).items():
        raw = env.get(alias)
        if raw is None:
            raw = next(
                (env[s] for s, target in _SYNONYMS.items() if target == alias and s in env), None
            )
        if raw is None:
            continue
        values[alias] = _coerce(group.model_fields[name].annotation, raw.strip(), alias)
    try:
        return group.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            where = str(loc[0]) if loc else group.__name__
            problems.append(f"{where}: {err.get('msg')}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc


def _coerce(annotation: Any, raw: str, alias: str) -> Any:
    text = str(annotation)
    if "tuple" in text:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if annotation is bool or text == "bool":
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"invalid configuration: {alias}: expected true or false, got {raw!r}")
    if raw == "" and "None" in text:
        return None
    return raw


@functools.cache
def settings() -> Settings:
    """The process's settings, read once (tests build :class:`Settings` themselves)."""
    return Settings.from_env()


def env_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) of every setting: the README's table is made from it."""
    rows: list[tuple[str, str, str]] = []
    for field in Settings.model_fields.values():
        group = field.annotation
        assert isinstance(group, type)
        assert issubclass(group, _Group)
        for sub in group.model_fields.values():
            default = sub.get_default(call_default_factory=True)
            shown = ",".join(default) if isinstance(default, tuple) else default
            rows.append(
                (str(sub.alias), "" if shown is None else str(shown), sub.description or "")
            )
    return rows


README_START = "<!-- settings table: generated by `python -m controllers.settings README.md` -->"
README_END = "<!-- end of settings table -->"


def markdown_table() -> str:
    """The README's configuration table, one row per variable, grouped by who reads it."""
    lines = ["| variable | default | group | meaning |", "|---|---|---|---|"]
    readers = {}
    for field in Settings.model_fields.values():
        group = field.annotation
        assert isinstance(group, type)
        assert issubclass(group, _Group)
        doc = (group.__doc__ or "").strip().splitlines()[0].rstrip(".")
        for sub in group.model_fields.values():
            readers[str(sub.alias)] = doc
    for variable, default, description in env_table():
        shown = f"`{default}`" if default else ""
        text = description.replace("|", "\\|").replace("<", "&lt;")
        lines.append(f"| `{variable}` | {shown} | {readers[variable]} | {text} |")
    return "\n".join(lines)


def render_readme(text: str) -> str:
    """``text`` with the block between the two markers replaced by :func:`markdown_table`."""
    start, end = text.index(README_START), text.index(README_END)
    return text[: start + len(README_START)] + "\n\n" + markdown_table() + "\n\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m controllers.settings", description="Write (or --check) the README table"
    )
    parser.add_argument("readme", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    wanted = render_readme(text)
    if args.check:
        if wanted != text:
            print(f"{args.readme}: settings table is stale; run `make settings-table`")
            return 1
        return 0
    if wanted != text:
        args.readme.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
