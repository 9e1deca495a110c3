"""Routing as Consul's HTTP server does it: Go's ``http.ServeMux`` in front of ``wrap()``.

Consul registers each endpoint under a Go mux pattern: an exact path (``/v1/txn``) or a subtree
ending in ``/`` (``/v1/kv/``) whose handler reads the rest of the path itself, slashes included.
The mux picks the exact pattern or else the longest subtree prefix; redirects (301) a subtree
root named without its slash and any path that is not clean (``//``, ``.``, ``..``); and hands
everything else to the agent's index handler, which answers 404 with a hint. A path with a
non-printable character is refused (400, empty body) before the mux sees it. Around every
registered endpoint, ``wrap()`` answers ``OPTIONS`` and a wrong method (405 with ``Allow``), and
a gzip layer adds ``Vary: Accept-Encoding`` and compresses bodies of 1400 bytes or more for
clients that accept it. Reproducing all of this in one place means no path the emulator does not
serve can reach another endpoint's handler.
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TAIL_KEY = web.RequestKey("consul_path_tail", str)
# gziphandler.DefaultMinSize: smaller bodies are never compressed.
GZIP_MIN_SIZE = 1400
# Characters Go's url.URL.EscapedPath leaves alone (besides letters, digits and ``-_.~``).
_PATH_SAFE = "$&+,/:;=@"

INDEX_API_HINT = "Invalid URL path: not a recognized HTTP API endpoint\n"
INDEX_PREFIX_HINT = (
    "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
)
INDEX_ROOT = (
    "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent "
    "configuration and restart."
)
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One registered pattern, its methods in Consul's order, and its handler."""

    pattern: str
    methods: tuple[str, ...]
    handler: Handler

    @property
    def subtree(self) -> bool:
        return self.pattern.endswith("/")


def tail(request: web.Request) -> str:
    """What follows a subtree pattern in the (decoded) path: a key, an ID, a name."""
    return request.get(TAIL_KEY, "")


def go_clean_path(path: str) -> str:
    """Go's ``cleanPath``: ``path.Clean``, keeping a trailing slash (``//a/./b/../c/`` is
    ``/a/c/``)."""
    if not path:
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    clean = "/" + "/".join(parts)
    if path.endswith("/") and clean != "/":
        clean += "/"
    return clean


def printable(path: str) -> bool:
    """``cleanhttp.PrintablePathCheckHandler``: every rune must satisfy ``unicode.IsPrint``."""
    return path.isprintable()


def accepts_gzip(header: str) -> bool:
    """gziphandler's test: ``gzip`` listed in ``Accept-Encoding`` with a quality above zero."""
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() != "gzip":
            continue
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        return quality > 0
    return False


def gzip_body(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=6, mtime=0)


def location(path: str, query: str) -> str:
    """The ``Location`` Go's mux builds: the escaped path, then the raw query if any."""
    escaped = quote(path, safe=_PATH_SAFE)
    return f"{escaped}?{query}" if query else escaped


def redirect(request: web.Request, target: str) -> web.Response:
    """``http.Redirect(w, r, target, 301)``: an HTML body for GET only."""
    headers = {"Location": target}
    if request.method == "GET":
        body = f'<a href="{html.escape(target)}">Moved Permanently</a>.\n\n'
        return web.Response(
            status=301, body=body.encode(), headers={**headers, "Content-Type": TEXT_HTML}
        )
    if request.method == "HEAD":
        headers["Content-Type"] = TEXT_HTML
    return web.Response(status=301, headers=headers)


TEXT_HTML = "text/html; charset=utf-8"


class ServeMux:
    """Exact patterns first, then the longest subtree prefix, Go's redirects, Consul's index."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.exact: dict[str, Endpoint] = {}
        for endpoint in endpoints:
            if endpoint.pattern in self.exact:
                raise ValueError(f"pattern {endpoint.pattern!r} is already registered")
            self.exact[endpoint.pattern] = endpoint
        self.subtrees = sorted(
            (e for e in endpoints if e.subtree), key=lambda e: len(e.pattern), reverse=True
        )

    def match(self, path: str) -> Endpoint | None:
        found = self.exact.get(path)
        if found is not None:
            return found
        for endpoint in self.subtrees:
            if path.startswith(endpoint.pattern):
                return endpoint
        return None

    def wants_slash(self, path: str) -> bool:
        """A subtree root asked for without its slash (``/v1/kv``) is redirected to it."""
        return path not in self.exact and (path + "/") in self.exact

    def route(self, request: web.Request) -> Endpoint | web.Response:
        """The endpoint for ``request``, or the response the mux itself gives."""
        path = request.path
        if not printable(path):
            return web.Response(status=400)
        clean = go_clean_path(path)
        query = request.raw_path.partition("?")[2]
        if self.wants_slash(clean):
            return redirect(request, location(clean + "/", query))
        if clean != path:
            return redirect(request, location(clean, query))
        endpoint = self.match(path)
        if endpoint is None:
            return index(path)
        if endpoint.subtree:
            request[TAIL_KEY] = path[len(endpoint.pattern) :]
        return endpoint


def index(path: str) -> web.Response:
    """The agent's catch-all ``/`` handler (this agent serves no UI)."""
    if path == "/":
        return web.Response(text=INDEX_ROOT, content_type="text/plain", charset="utf-8")
    hint = INDEX_API_HINT if "/v1/" in path else INDEX_PREFIX_HINT
    return web.Response(status=404, text=hint, content_type="text/plain", charset="utf-8")


def allow_header(methods: Sequence[str]) -> str:
    """``wrap()`` lists ``OPTIONS`` first, then the registered methods, joined by commas."""
    return ",".join(("OPTIONS", *methods))
