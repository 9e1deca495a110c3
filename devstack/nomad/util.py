"""Small helpers shared by the embedded Nomad: ids, clocks and Go's duration syntax.

Nomad speaks Go: durations are integer nanoseconds in job JSON but Go duration strings
(``"10s"``, ``"1m30s"``) in query parameters, error texts and Consul check definitions, so both
directions live here once.
"""

from __future__ import annotations

import re
import time
import uuid

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def new_id() -> str:
    return str(uuid.uuid4())


def now_ns() -> int:
    return time.time_ns()


def parse_go_duration(text: str) -> int:
    """Parse a Go duration (``"1m30s"``, ``"250ms"``) into nanoseconds; ``ValueError`` if bad."""
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0
    sign = 1
    if s[:1] in "+-":
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if not s:
        raise ValueError(f"time: invalid duration {text!r}")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * int(total)


def _frac(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def format_go_duration(ns: int) -> str:
    """Format nanoseconds the way Go's ``time.Duration.String`` does (``1m30s``, ``500ms``)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_frac(ns, 1_000)}µs"
    if ns < SECOND:
        return f"{sign}{_frac(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, HOUR)
    minutes, rest = divmod(rest, MINUTE)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{_frac(rest, SECOND)}s"


def go_multierror(errors: list[str]) -> str:
    """go-multierror's list format: one nesting per validation level, each ending in ``\n\n``."""
    if len(errors) == 1:
        return f"1 error occurred:\n\t* {errors[0]}\n\n"
    points = "\n\t".join(f"* {e}" for e in errors)
    return f"{len(errors)} errors occurred:\n\t{points}\n\n"
