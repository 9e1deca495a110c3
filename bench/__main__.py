"""Run every benchmark and write docs/benchmarks.md.

Each benchmark module exposes ``run() -> str`` returning one markdown section (a heading, a table
of measured figures beside their targets, and how it was measured). Run one with
``python -m bench consul`` or all with ``python -m bench``.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import sys
import time
from pathlib import Path

MODULES = ["workqueue", "framework", "consul", "nomad", "routing"]


def main(argv: list[str]) -> int:
    chosen = argv or MODULES
    sections: list[str] = []
    for name in chosen:
        module = importlib.import_module(f"bench.{name}")
        started = time.perf_counter()
        print(f"== bench {name}", flush=True)
        section = module.run()
        print(section, flush=True)
        sections.append(section + f"\n\n_({name}: {time.perf_counter() - started:.1f} s wall)_\n")
    if argv:
        return 0
    header = (
        "# Benchmarks\n\n"
        "Written by `make bench`; every figure below was measured by the run that wrote this "
        "file, on loopback, with the load generator on the same machine.\n\n"
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}\n\n"
    )
    Path("docs").mkdir(exist_ok=True)
    Path("docs/benchmarks.md").write_text(header + "\n\n".join(sections))
    print("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
