"""How Consul reads and writes values: Go durations and integers, and case-insensitive JSON.

Consul is written in Go, so its parameters follow Go's parsers (``time.ParseDuration``,
``strconv.ParseUint``) and their error texts, and its JSON decoder matches object keys
case-insensitively (agent definitions also accept snake_case aliases). Every layer that reads a
request or formats a duration shares these.
"""

from __future__ import annotations

import json
import re
from typing import Any

from devstack.consul.errors import bad_request

# -- Go durations -------------------------------------------------------------------------------

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse Go's ``time.ParseDuration`` syntax (``1h2m0.5s``, ``-3ms``, ``0``) into seconds."""
    s = text.strip()
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """Format like Go's ``Duration.String()``: ``15s``, ``1m0s``, ``24h0m0s``, ``150ms``."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    neg = ns < 0
    ns = abs(ns)
    if ns < 1_000_000_000:
        if ns < 1_000:
            out = f"{ns}ns"
        elif ns < 1_000_000:
            out = _trim(ns / 1_000) + "µs"
        else:
            out = _trim(ns / 1_000_000) + "ms"
    else:
        hours, rem = divmod(ns, 3_600_000_000_000)
        minutes, rem = divmod(rem, 60_000_000_000)
        secs = _trim(rem / 1e9)
        if hours:
            out = f"{hours}h{minutes}m{secs}s"
        elif minutes:
            out = f"{minutes}m{secs}s"
        else:
            out = f"{secs}s"
    return "-" + out if neg else out


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_uint(text: str) -> int:
    """``strconv.ParseUint(text, 10, 64)`` with Go's error text."""
    if not text.isdigit() or not text.isascii():
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    value = int(text)
    if value >= 1 << 64:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


# -- JSON ---------------------------------------------------------------------------------------


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def norm(key: str) -> str:
    """Consul decodes bodies case-insensitively and accepts snake_case aliases."""
    return key.replace("_", "").replace("-", "").lower()


class CI:
    """A JSON object read the way Consul's decoder reads it: keys match case-insensitively."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.raw = data
        self._map = {norm(k): v for k, v in data.items()}

    def has(self, *names: str) -> bool:
        return any(norm(n) in self._map for n in names)

    def get(self, *names: str, default: Any = None) -> Any:
        for n in names:
            value = self._map.get(norm(n))
            if value is not None:
                return value
        return default

    def text(self, *names: str, default: str = "") -> str:
        value = self.get(*names)
        if value is None:
            return default
        if not isinstance(value, str):
            raise bad_request(f"Request decode failed: {names[0]} must be a string")
        return value

    def obj(self, *names: str) -> CI | None:
        value = self.get(*names)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise bad_request(f"Request decode failed: {names[0]} must be an object")
        return CI(value)
