"""Where the clients find their servers and credentials: the environment, HashiCorp conventions.

The same variables the ``consul`` and ``nomad`` CLIs read (``CONSUL_HTTP_ADDR``, ``NOMAD_TOKEN``,
...) configure the controllers, so an operator who can run ``consul kv get`` from a shell can run
a controller from the same shell. AWS is left to boto3's own credential and endpoint chain; only
the region is resolved here because botocore ignores ``AWS_REGION``.

Every value is validated up front and a bad one raises :class:`ConfigError` naming the variable,
so a typo fails at start-up rather than as a confusing connection error later. Tokens are kept
out of every ``repr`` so they cannot leak into logs.
"""

from __future__ import annotations

import os
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.clients.errors import ConfigError

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(name: str, raw: str) -> bool:
    """Parse a boolean the way Go's ``strconv.ParseBool`` does (what Consul and Nomad use)."""
    value = raw.strip()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true/false/1/0)")


def _env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "")
    return default if raw.strip() == "" else parse_bool(name, raw)


def _env_str(environ: Mapping[str, str], name: str) -> str | None:
    raw = environ.get(name, "").strip()
    return raw or None


def _env_file(environ: Mapping[str, str], name: str, *, directory: bool = False) -> str | None:
    path = _env_str(environ, name)
    if path is None:
        return None
    p = Path(path)
    if directory and not p.is_dir():
        raise ConfigError(f"{name}={path!r}: no such directory")
    if not directory and not p.is_file():
        raise ConfigError(f"{name}={path!r}: no such file")
    return path


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings shared by the Consul and Nomad clients (file paths, never key material)."""

    ca_cert: str | None = None
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None
    verify: bool = True

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What httpx's ``verify=`` wants: ``False`` to skip checks, else a configured context."""
        if not self.verify and self.client_cert is None:
            return False
        ctx = ssl.create_default_context(cafile=self.ca_cert, capath=self.ca_path)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            try:
                ctx.load_cert_chain(self.client_cert, self.client_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load client certificate {self.client_cert}: {exc}"
                ) from exc
        return ctx


def _tls_from_env(environ: Mapping[str, str], prefix: str, *, verify: bool) -> TLSConfig:
    cert = _env_file(environ, f"{prefix}_CLIENT_CERT")
    key = _env_file(environ, f"{prefix}_CLIENT_KEY")
    if key is not None and cert is None:
        raise ConfigError(f"{prefix}_CLIENT_KEY is set but {prefix}_CLIENT_CERT is not")
    return TLSConfig(
        ca_cert=_env_file(environ, f"{prefix}_CACERT"),
        ca_path=_env_file(environ, f"{prefix}_CAPATH", directory=True),
        client_cert=cert,
        client_key=key,
        server_name=_env_str(environ, f"{prefix}_TLS_SERVER_NAME"),
        verify=verify,
    )


def _split_address(name: str, raw: str, *, default_scheme: str, default_port: int) -> Address:
    """Accept ``host``, ``host:port`` and ``scheme://host[:port]`` like the HashiCorp CLIs."""
    text = raw.strip()
    explicit_scheme = "://" in text
    parsed = urllib.parse.urlsplit(text if explicit_scheme else f"//{text}")
    scheme = parsed.scheme.lower() if explicit_scheme else default_scheme
    if scheme not in ("http", "https"):
        raise ConfigError(f"{name}={raw!r}: scheme must be http or https")
    try:
        port = parsed.port
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: invalid port") from exc
    if not parsed.hostname:
        raise ConfigError(f"{name}={raw!r}: expected host:port or scheme://host:port")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise ConfigError(f"{name}={raw!r}: a path or query is not allowed here")
    if port is None:
        port = default_port if not explicit_scheme else (443 if scheme == "https" else 80)
    return Address(scheme=scheme, host=parsed.hostname, port=port, explicit_scheme=explicit_scheme)


@dataclass(frozen=True)
class Address:
    scheme: str
    host: str
    port: int
    explicit_scheme: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class ConsulConfig:
    """How to reach Consul. Build with :meth:`from_env`; ``token`` never shows in ``repr``."""

    scheme: str = "http"
    host: str = "127.0.0.1"
    port: int = 8500
    token: str | None = field(default=None, repr=False)
    datacenter: str | None = None
    tls: TLSConfig = field(default_factory=TLSConfig)
    # Ask for gzip-compressed answers. Off by default: controllers talk to a local agent, where
    # compressing a large answer (a prefix list, the health of every check) costs the agent and
    # the controller more CPU than sending it as it is; worth it only across a slow network.
    compress: bool = False

    @property
    def base_url(self) -> str:
        return Address(self.scheme, self.host, self.port).url

    @property
    def has_token(self) -> bool:
        return bool(self.token)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ConsulConfig:
        """Read ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN[_FILE]``, ``CONSUL_HTTP_SSL[_VERIFY]``,
        ``CONSUL_CACERT``/``CONSUL_CAPATH``, ``CONSUL_CLIENT_CERT``/``KEY``,
        ``CONSUL_TLS_SERVER_NAME`` and ``CONSUL_DATACENTER``.

        As in Consul's Go API: a scheme written in the address wins over ``CONSUL_HTTP_SSL``, and
        a non-empty ``CONSUL_HTTP_TOKEN_FILE`` wins over ``CONSUL_HTTP_TOKEN``.
        """
        raw_addr = environ.get("CONSUL_HTTP_ADDR", "").strip() or "127.0.0.1:8500"
        if raw_addr.startswith("unix://"):
            raise ConfigError("CONSUL_HTTP_ADDR: unix sockets are not supported, use host:port")
        use_ssl = _env_bool(environ, "CONSUL_HTTP_SSL", False)
        addr = _split_address(
            "CONSUL_HTTP_ADDR",
            raw_addr,
            default_scheme="https" if use_ssl else "http",
            default_port=8500,
        )
        token = _env_str(environ, "CONSUL_HTTP_TOKEN")
        token_file = _env_str(environ, "CONSUL_HTTP_TOKEN_FILE")
        if token_file is not None:
            try:
                from_file = Path(token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"CONSUL_HTTP_TOKEN_FILE={token_file!r}: cannot read: {exc.strerror}"
                ) from exc
            token = from_file or token
        verify = _env_bool(environ, "CONSUL_HTTP_SSL_VERIFY", True)
        return cls(
            scheme=addr.scheme,
            host=addr.host,
            port=addr.port,
            token=token,
            datacenter=_env_str(environ, "CONSUL_DATACENTER"),
            tls=_tls_from_env(environ, "CONSUL", verify=verify),
        )


@dataclass(frozen=True)
class NomadConfig:
    """How to reach Nomad. Build with :meth:`from_env`; ``token`` never shows in ``repr``."""

    address: str = "http://127.0.0.1:4646"
    token: str | None = field(default=None, repr=False)
    region: str | None = None
    namespace: str | None = None
    tls: TLSConfig = field(default_factory=TLSConfig)
    # As ConsulConfig.compress: no gzip unless asked for.
    compress: bool = False

    @property
    def has_token(self) -> bool:
        return bool(self.token)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> NomadConfig:
        """Read ``NOMAD_ADDR``, ``NOMAD_TOKEN``, ``NOMAD_REGION``, ``NOMAD_NAMESPACE``,
        ``NOMAD_CACERT``/``NOMAD_CAPATH``, ``NOMAD_CLIENT_CERT``/``KEY``,
        ``NOMAD_TLS_SERVER_NAME`` and ``NOMAD_SKIP_VERIFY``."""
        raw_addr = environ.get("NOMAD_ADDR", "").strip() or "http://127.0.0.1:4646"
        if raw_addr.startswith("unix://"):
            raise ConfigError("NOMAD_ADDR: unix sockets are not supported, use scheme://host:port")
        addr = _split_address("NOMAD_ADDR", raw_addr, default_scheme="http", default_port=4646)
        skip_verify = _env_bool(environ, "NOMAD_SKIP_VERIFY", False)
        return cls(
            address=addr.url,
            token=_env_str(environ, "NOMAD_TOKEN"),
            region=_env_str(environ, "NOMAD_REGION"),
            namespace=_env_str(environ, "NOMAD_NAMESPACE"),
            tls=_tls_from_env(environ, "NOMAD", verify=not skip_verify),
        )


@dataclass(frozen=True)
class AWSConfig:
    """The AWS region; credentials and endpoints stay with boto3's standard chain.

    botocore itself honours ``AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING`` / ``AWS_ENDPOINT_URL``,
    ``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``... but reads only ``AWS_DEFAULT_REGION``; the other
    AWS SDKs prefer ``AWS_REGION``, so it is resolved here and passed explicitly.
    """

    region: str | None = None
    profile: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> AWSConfig:
        region = _env_str(environ, "AWS_REGION") or _env_str(environ, "AWS_DEFAULT_REGION")
        if region is not None and not all(c.isalnum() or c == "-" for c in region):
            raise ConfigError(f"AWS_REGION={region!r} is not a region name")
        return cls(region=region, profile=_env_str(environ, "AWS_PROFILE"))


@dataclass(frozen=True)
class ClientsConfig:
    """Everything the clients need, read at once at start-up."""

    consul: ConsulConfig
    nomad: NomadConfig
    aws: AWSConfig

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ClientsConfig:
        return cls(
            consul=ConsulConfig.from_env(environ),
            nomad=NomadConfig.from_env(environ),
            aws=AWSConfig.from_env(environ),
        )
