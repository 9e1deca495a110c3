"""Stand-ins for Manticore's sdl_core and HMI containers, run by Nomad's ``raw_exec`` driver.

The devstack job template (``devstack/templates/core-hmi.raw_exec.json``) runs these two instead
of the Docker images, so every user's pair really listens, really passes its Consul health
checks, and really answers through HAProxy with its own user id:

* ``python -m devstack.fakes.core --user <id>``: SDL core's TCP port. Every connection is
  greeted with ``core <id>\\n`` and then echoed.
* ``python -m devstack.fakes.hmi --user <id> --core <ip:port>``: the HMI page and the
  HMI<->core websocket broker. Any HTTP path answers ``hmi <id>`` (or ``broker <id>``) plus
  whether core answered; a websocket on the HMI port is greeted with ``hmi <id>`` and echoed, a
  websocket on the broker port is relayed to core's TCP port (so it first receives
  ``core <id>``).

Both take their addresses from Nomad's runtime variables (``NOMAD_IP_<label>``,
``NOMAD_PORT_<label>``, ``NOMAD_ADDR_core``) when no flag is given, and use only the standard
library: a devstack with dozens of users runs a hundred of them, so each must start fast and
stay small.
"""

from __future__ import annotations

import sys
from pathlib import Path

RAW_EXEC_TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "core-hmi.raw_exec.json"


def job_settings_env(python: str | None = None) -> dict[str, str]:
    """The environment that makes the jobs controller (and the waitlist) use these fakes."""
    return {
        "MANTICORE_JOB_TEMPLATE": str(RAW_EXEC_TEMPLATE),
        "MANTICORE_JOB_VARS": f"python={python or sys.executable}",
    }
