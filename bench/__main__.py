"""Run the benchmarks and write docs/benchmarks.md.

Each benchmark module exposes ``run() -> str`` returning one markdown section (a heading, a table
of measured figures beside their targets, and how it was measured). ``python -m bench`` runs
them all and rewrites the file; ``python -m bench consul nomad`` runs those and replaces only
their sections, keeping every other section (with the date it was measured) as it was.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import re
import sys
import time
from pathlib import Path

# The framework and devstack first; then every other module of this package that defines a
# run() (the controllers', HAProxy's, the API's), in name order.
MODULES = ["workqueue", "framework", "consul", "nomad"]

DOC = Path("docs/benchmarks.md")
HEADER = (
    "# Benchmarks\n\n"
    "Written by `make bench` (`python -m bench [module...]`); every figure below was measured "
    "by the run that wrote its section, on loopback, with the load generator on the same "
    "machine. Each section says when and on what it ran, and how long a fixed pure-Python "
    "loop (`bench.__main__.calibrate`) took just before it: the same machine has run the same "
    "code at half speed an hour apart, so compare figures of different sections or runs with "
    "that figure in mind.\n"
)
_SECTION = re.compile(r"<!-- bench:(\w+) -->\n.*?<!-- /bench:\1 -->\n", re.S)


def available() -> list[str]:
    here = Path(__file__).parent
    others = sorted(
        p.stem
        for p in here.glob("*.py")
        if not p.stem.startswith("_")
        and p.stem not in MODULES
        and re.search(r"^def run\(\) -> str:", p.read_text(), re.M)
    )
    return MODULES + others


def _load1() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def calibrate() -> float:
    """Milliseconds of a fixed pure-Python workload (best of 5): this machine's speed at the
    moment, so figures measured at different times can be compared (the same code has run at
    half speed on the same machine an hour apart)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        table: dict[str, int] = {}
        for i in range(200_000):
            table[f"k{i % 5000}"] = table.get(f"k{i % 5000}", 0) + i
        best = min(best, time.perf_counter() - started)
    return best * 1000


def measure(name: str) -> str:
    module = importlib.import_module(f"bench.{name}")
    speed = calibrate()
    started = time.perf_counter()
    load = _load1()
    print(f"== bench {name}", flush=True)
    section = module.run()
    print(section, flush=True)
    stamp = (
        f"_({name}: {time.perf_counter() - started:.1f} s wall; measured "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, 1-min load average "
        f"{load} at start, calibration loop {speed:.0f} ms)_"
    )
    return f"<!-- bench:{name} -->\n{section}\n\n{stamp}\n<!-- /bench:{name} -->\n"


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(available())}")
        return 2
    fresh = {name: measure(name) for name in names}
    old = DOC.read_text() if DOC.exists() and argv else ""
    kept = {m.group(1): m.group(0) for m in _SECTION.finditer(old)}
    kept.update(fresh)
    order = available() + sorted(set(kept) - set(available()))
    body = "\n".join(kept[n] for n in order if n in kept)
    if old and not _SECTION.search(old) and "\n## " in old:
        # A file from before sections were marked: keep its figures (until a full run).
        legacy = "## " + old.split("\n## ", 1)[1].replace("\n## ", "\n### ")
        body += (
            "<!-- bench:earlier -->\n## Figures of an earlier full run\n\n"
            + legacy.replace("## ", "### ", 1)
            + "\n<!-- /bench:earlier -->\n"
        )
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(HEADER + "\n" + body)
    print(f"wrote {DOC} ({', '.join(fresh)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
