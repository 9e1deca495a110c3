"""User ids and the KV key layout they appear in.

A user id becomes a KV path segment, a Nomad job id (``core-hmi-<id>``), a Consul service name
and an HAProxy identifier, so it is validated once, here: ``[A-Za-z0-9-]{1,64}``, exactly as
Manticore's API accepts it. Anything else (dots, slashes, spaces, unicode) is refused before it
can alias another user's key or inject into a configuration.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

USER_ID_PATTERN = r"^[A-Za-z0-9-]{1,64}$"
_USER_ID = re.compile(USER_ID_PATTERN)

UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]

REQUESTS_PREFIX = "manticore/requests/data/"
WAITING_KEY = "manticore/waiting/data"
ALLOCATIONS_PREFIX = "manticore/allocations/data/"
ROUTES_PREFIX = "manticore/routes/data/"
ELB_PREFIX = "manticore/elb/data/"
HAPROXY_PREFIX = "haproxy/"
HAPROXY_DATA_PREFIX = "haproxy/data/"
HAPROXY_WEB_APP_PREFIX = "haproxy/webAppAddresses/"
HAPROXY_DOMAIN_KEY = "haproxy/domainName"
HAPROXY_MAIN_PORT_KEY = "haproxy/mainPort"

JOB_PREFIX = "core-hmi-"


def is_user_id(text: str) -> bool:
    return _USER_ID.fullmatch(text) is not None


def user_of_key(prefix: str, key: str) -> str | None:
    """``<prefix><id>`` -> ``<id>`` when it is exactly one valid id; anything else -> None.

    Keys outside ``data/`` (Manticore's ``filler`` values) and deeper keys are not users.
    """
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    return rest if is_user_id(rest) else None


def job_id(user: str) -> str:
    return f"{JOB_PREFIX}{user}"


def user_of_job(job: str) -> str | None:
    if not job.startswith(JOB_PREFIX):
        return None
    rest = job[len(JOB_PREFIX) :]
    return rest if is_user_id(rest) else None
