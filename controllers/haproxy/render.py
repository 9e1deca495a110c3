"""Render HAProxy's configuration and map files from an :class:`~.plan.Applied` state: pure text.

The configuration is the base template (``templates/base.cfg`` or ``MANTICORE_HAPROXY_TEMPLATE``:
``global`` and ``defaults``) followed by what the controller generates:

- ``frontend main`` on ``mainPort``: ``/haproxy`` answers the load balancer's health check; the
  Host header (port and case stripped) equal to ``domainName`` goes to the web app; a host found
  in the ``hosts`` map goes to that user's slot (HTTP and websocket alike); anything else gets
  the 404 page;
- ``backend webapp``: the web app instances, sticky by source address (consistent hashing, so an
  instance coming or going moves few clients);
- ``frontend tcp_routes``, bound to the whole ``TCP_PORT_RANGE``: a connection to a port found in
  the ``ports`` map goes to that user's core, any other is refused;
- the slot backends, a used slot with its address, a free one disabled on a placeholder;
- ``frontend stats`` on 127.0.0.1 when a stats port is set.

A slot's address is rendered into the file, so the file always describes what the running
HAProxy does, runtime changes included: a reload, or a restart by anyone, loses nothing. Every
value written here has been validated (:mod:`.routes`) and is re-checked by :func:`_safe` before
it is written, so a bug upstream fails loudly instead of injecting configuration.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from controllers.haproxy.plan import (
    PLACEHOLDER,
    POOLS,
    Applied,
    Pool,
    http_backend,
    tcp_backend,
    web_server,
)
from controllers.settings import HAProxySettings
from reconciler.clients.errors import ConfigError

# What may appear in a value rendered into the configuration or a map file: addresses, ports,
# DNS names, backend names, absolute paths. No space, quote, '#', '$', newline or backslash.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9._:/\[\]@+-]+")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")

TEMPLATE_KEYS = (
    "maxconn",
    "hard_stop_after",
    "runtime_socket",
    "timeout_connect",
    "timeout_client",
    "timeout_server",
    "timeout_tunnel",
    "timeout_http_request",
    "timeout_http_keep_alive",
)


@dataclass(frozen=True)
class Files:
    """Where the rendered configuration refers to (absolute paths)."""

    hosts_map: Path
    ports_map: Path
    not_found_page: Path
    runtime_socket: Path


def _safe(value: object) -> str:
    text = str(value)
    if not _SAFE_VALUE.fullmatch(text):
        raise ValueError(f"refusing to render {text!r} into the HAProxy configuration")
    return text


def safe_path(path: Path, what: str) -> str:
    """An absolute path HAProxy can be given unquoted; a :class:`ConfigError` otherwise."""
    text = str(path)
    if not _SAFE_PATH.fullmatch(text):
        raise ConfigError(
            f"{what} {text!r} must be an absolute path of letters, digits and ._/@+- only"
        )
    return text


def duration(seconds: float) -> str:
    """HAProxy's time format: ``5s``, ``1500ms``."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def builtin_template() -> str:
    return resources.files("controllers.haproxy").joinpath("templates/base.cfg").read_text()


def builtin_not_found_page() -> bytes:
    return resources.files("controllers.haproxy").joinpath("templates/not_found.html").read_bytes()


def load_template(settings: HAProxySettings) -> Template:
    """The base template, checked: known placeholders only, and the runtime socket present."""
    if settings.template is None:
        text = builtin_template()
    else:
        try:
            text = settings.template.read_text()
        except OSError as exc:
            raise ConfigError(f"MANTICORE_HAPROXY_TEMPLATE: {exc}") from exc
    template = Template(text)
    unknown = set(template.get_identifiers()) - set(TEMPLATE_KEYS)
    if unknown or not template.is_valid():
        raise ConfigError(
            f"HAProxy template: unknown placeholders {sorted(unknown)}; "
            f"known: {', '.join(TEMPLATE_KEYS)} (write $$ for a dollar sign)"
        )
    if not re.search(r"^\s*stats socket \$\{?runtime_socket\b.*expose-fd listeners", text, re.M):
        raise ConfigError(
            "HAProxy template: keep 'stats socket $runtime_socket ... level admin expose-fd "
            "listeners' in global: runtime updates and hitless reloads need it"
        )
    return template


def render_base(template: Template, settings: HAProxySettings, runtime_socket: Path) -> str:
    return template.substitute(
        maxconn=settings.maxconn,
        hard_stop_after=duration(settings.hard_stop_after),
        runtime_socket=safe_path(runtime_socket, "runtime socket"),
        timeout_connect=duration(settings.timeout_connect),
        timeout_client=duration(settings.timeout_client),
        timeout_server=duration(settings.timeout_server),
        timeout_tunnel=duration(settings.timeout_tunnel),
        timeout_http_request=duration(settings.timeout_http_request),
        timeout_http_keep_alive=duration(settings.timeout_http_keep_alive),
    )


def _server(name: str, address: str | None) -> str:
    if address is None:
        return f"    server {name} {PLACEHOLDER} disabled"
    return f"    server {name} {_safe(address)}"


class ConfigDocument:
    """The rendered configuration of one shape, kept as lines so that a runtime change rewrites
    only the server lines of the slots it touched (a 5,000-user configuration is 2 MB: rendering
    it whole for every arrival would cost more than the arrival itself)."""

    def __init__(self, applied: Applied, settings: HAProxySettings, files: Files, base: str):
        shape = applied.shape
        self.shape = shape
        self.generation = applied.generation
        bind = _safe(settings.bind_address)
        if ":" in bind:
            bind = f"[{bind}]"
        hosts = safe_path(files.hosts_map, "hosts map")
        ports = safe_path(files.ports_map, "ports map")
        page = safe_path(files.not_found_page, "404 page")
        domain = _safe(shape.domain)
        first, last = settings.tcp_port_range_start, settings.tcp_port_range_end
        lines = [
            base.rstrip("\n"),
            "",
            "# -- generated by the Manticore haproxy controller: edits are overwritten --",
            "",
            "frontend main",
            f"    bind {bind}:{_safe(shape.main_port)}",
            "    option forwardfor",
            "    monitor-uri /haproxy",
            "    http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
            f"    use_backend webapp if {{ var(txn.host) -m str {domain} }}",
            f"    use_backend %[var(txn.host),map({hosts})]",
            "    default_backend not_found",
            "",
            "backend not_found",
            '    http-request return status 404 content-type "text/html; charset=utf-8" '
            f"file {page} hdr cache-control no-store",
            "",
            "backend webapp",
            "    balance source",
            "    hash-type consistent",
        ]
        self._index: dict[tuple[Pool, int], int] = {}
        for i in range(shape.web_slots):
            self._index["web", i] = len(lines)
            lines.append("")
        lines += [
            "",
            "frontend tcp_routes",
            "    mode tcp",
            f"    bind {bind}:{_safe(first)}-{_safe(last)}",
            f"    tcp-request connection reject unless {{ dst_port,map_int({ports}) -m found }}",
            f"    use_backend %[dst_port,map_int({ports})]",
        ]
        if settings.stats_port:
            lines += [
                "",
                "frontend stats",
                f"    bind 127.0.0.1:{_safe(settings.stats_port)}",
                "    stats enable",
                "    stats uri /stats",
                "    stats refresh 10s",
                "    monitor-uri /healthz",
            ]
        for i in range(shape.http_slots):
            lines += ["", f"backend {http_backend(i)}"]
            self._index["http", i] = len(lines)
            lines.append("")
        for i in range(shape.tcp_slots):
            lines += ["", f"backend {tcp_backend(i)}", "    mode tcp"]
            self._index["tcp", i] = len(lines)
            lines.append("")
        lines.append("")
        self._lines = lines
        self._owners: dict[Pool, dict[int, tuple[str, str]]] = {"http": {}, "tcp": {}, "web": {}}
        for pool in POOLS:
            for slot in range(shape.size(pool)):
                self._set(pool, slot, None)
        self.update(applied)

    def _set(self, pool: Pool, slot: int, address: str | None) -> None:
        name = web_server(slot) if pool == "web" else "s"
        self._lines[self._index[pool, slot]] = _server(name, address)

    def update(self, applied: Applied) -> None:
        """Rewrite the server lines whose slot changed hands or address since the last call."""
        assert applied.shape == self.shape
        assert applied.generation == self.generation
        for pool in POOLS:
            before = self._owners[pool]
            after = applied.owners(pool)
            for slot in {slot for slot, _ in before.items() ^ after.items()}:
                owner = after.get(slot)
                self._set(pool, slot, owner[1] if owner else None)
            self._owners[pool] = after

    def text(self) -> str:
        return "\n".join(self._lines)


def render_config(applied: Applied, settings: HAProxySettings, files: Files, base: str) -> str:
    """The whole configuration for ``applied`` (``base``: the rendered template)."""
    return ConfigDocument(applied, settings, files, base).text()


def render_map(entries: dict[str, str], what: str) -> str:
    """A map file: one ``key value`` line per entry, sorted."""
    lines = [f"# {what}: written by the Manticore haproxy controller"]
    lines += [f"{_safe(key)} {_safe(value)}" for key, value in sorted(entries.items())]
    return "\n".join(lines) + "\n"


class MapDocument:
    """One map file kept as its lines, in key order, so a runtime change re-checks, re-formats
    and places only the entries it touched; the text is exactly :func:`render_map`'s."""

    def __init__(self, what: str) -> None:
        self._header = f"# {what}: written by the Manticore haproxy controller"
        self._entries: dict[str, str] = {}
        self._lines: dict[str, str] = {}
        self._keys: list[str] = []
        self._text: str | None = None

    def text(self, entries: Mapping[str, str]) -> str:
        touched = {key for key, _ in self._entries.items() ^ entries.items()}
        if touched or self._text is None:
            for key in sorted(touched):
                value = entries.get(key)
                if value is None:
                    if self._lines.pop(key, None) is not None:
                        del self._keys[bisect.bisect_left(self._keys, key)]
                    continue
                line = f"{_safe(key)} {_safe(value)}"
                if self._lines.setdefault(key, line) is line:
                    bisect.insort(self._keys, key)
                else:
                    self._lines[key] = line
            self._entries = dict(entries)
            lines = self._lines
            self._text = "\n".join([self._header, *[lines[key] for key in self._keys]]) + "\n"
        return self._text


HOSTS_MAP_TITLE = "<subdomain>.<domain> -> HTTP slot"
PORTS_MAP_TITLE = "TCP port -> TCP slot"


def render_hosts_map(applied: Applied) -> str:
    return render_map(applied.hosts_map(), HOSTS_MAP_TITLE)


def render_ports_map(applied: Applied) -> str:
    return render_map(applied.ports_map(), PORTS_MAP_TITLE)
