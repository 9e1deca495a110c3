"""Run the contract suites in their "real agent" mode against separately started processes.

With ``CONSUL_HTTP_ADDR`` / ``NOMAD_ADDR`` set, the contract tests talk only over HTTP to
whatever agent those name and skip emulator-only checks. Pointing them at ``devstack`` child
processes proves that mode works end to end (no test leans on an in-process handle), so the
same suites can be aimed at a real Consul and Nomad with confidence.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from devstack.up import DevStack


def main() -> int:
    with (
        tempfile.TemporaryDirectory(prefix="contract-") as home,
        DevStack(services=("consul", "nomad"), ephemeral=True, home=home) as stack,
    ):
        env = {**os.environ, **stack.env}
        print(
            f"contract tests against CONSUL_HTTP_ADDR={env['CONSUL_HTTP_ADDR']} "
            f"NOMAD_ADDR={env['NOMAD_ADDR']}",
            flush=True,
        )
        return subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/contract",
                *sys.argv[1:],
            ],
            env=env,
        )


if __name__ == "__main__":
    sys.exit(main())
