"""Which ACL capability each HTTP endpoint needs, in one table-like function.

Nomad checks a capability inside each RPC handler; gathering the checks here keeps them
reviewable in one place. :func:`requirement` answers ``None`` for paths anyone may call (and
for unknown paths, which Nomad answers with 404 before any ACL check); the ACL endpoints
check their own rules (management, or the token's own policies).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from devstack.nomad.aclpolicy import ACL
from devstack.nomad.events import TopicError, parse_topics

Check = Callable[[ACL, str], bool]
PUBLIC = {"/v1/status/leader", "/v1/status/peers", "/v1/agent/health", "/v1/regions"}
ADMIN_DENIED = (
    "Permission denied: the devstack's own paths (/v1/devstack/...) need a management token"
)
_JOB_TOPICS = {"Job", "Evaluation", "Allocation", "Deployment", "Service"}


def ns(*caps: str) -> Check:
    def check(acl: ACL, namespace: str) -> bool:
        if namespace == "*":
            return acl.allow_any_ns(*caps)
        return acl.allow_ns(namespace, *caps)

    return check


def coarse(kind: str, level: str) -> Check:
    return lambda acl, _namespace: acl.allow(kind, level)


def management(acl: ACL, _namespace: str) -> bool:
    return acl.management


def _events(request: web.Request) -> Check:
    try:
        topics = parse_topics(request.query.getall("topic", []))
    except TopicError:
        return lambda acl, namespace: True  # the handler answers the 400
    if not topics or "*" in topics:
        return management

    def check(acl: ACL, namespace: str) -> bool:
        for topic in topics:
            if topic == "Node" and not acl.allow("node", "read"):
                return False
            if topic in _JOB_TOPICS and not ns("read-job")(acl, namespace):
                return False
        return True

    return check


def _job(request: web.Request, tail: str) -> Check:
    method = request.method
    write = method in ("PUT", "POST", "DELETE")
    for suffix, check in (
        ("/plan", ns("submit-job")),
        ("/dispatch", ns("dispatch-job")),
        ("/evaluate", ns("submit-job")),
        ("/revert", ns("submit-job")),
        ("/stable", ns("submit-job")),
    ):
        if tail.endswith(suffix):
            return check
    if tail.endswith("/scale"):
        return ns("scale-job", "submit-job") if write else ns("read-job-scaling", "read-job")
    return ns("submit-job") if write else ns("read-job")


def requirement(request: web.Request) -> Check | None:
    path, write = request.path, request.method in ("PUT", "POST", "DELETE")
    if path in PUBLIC or path.startswith("/v1/acl/"):
        return None
    if path.startswith("/v1/devstack/"):
        return management
    if path == "/v1/jobs":
        return ns("submit-job") if write else ns("list-jobs")
    if path == "/v1/jobs/parse":
        return ns("parse-job", "read-job", "submit-job")
    if path.startswith("/v1/job/"):
        return _job(request, path[len("/v1/job/") :])
    if path == "/v1/validate/job":
        return ns("read-job", "submit-job")
    if path.startswith("/v1/allocation/") and path.endswith("/stop"):
        return ns("alloc-lifecycle")
    if path.startswith(("/v1/allocation", "/v1/evaluation", "/v1/deployments")):
        return ns("read-job")
    if path.startswith("/v1/deployment/"):
        return ns("submit-job") if write else ns("read-job")
    if path.startswith("/v1/node"):
        return coarse("node", "write" if write else "read")
    if path == "/v1/services" or path.startswith("/v1/service/"):
        return ns("submit-job") if request.method == "DELETE" else ns("read-job")
    if path == "/v1/event/stream":
        return _events(request)
    if path == "/v1/agent/members":
        return coarse("node", "read")
    if path in ("/v1/agent/join", "/v1/agent/force-leave"):
        return coarse("agent", "write")
    if path.startswith("/v1/agent/"):
        return coarse("agent", "read")
    return None
