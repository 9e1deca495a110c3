"""The agent's own services and checks: what ``/v1/agent/*`` registers, updates and removes.

A Consul agent keeps the definitions of the services and checks registered with it, runs their
probes, and syncs them to the catalog (here at once, with no anti-entropy delay). Nomad clients
register every task's services this way and refresh their script checks through TTL updates.
"""

from __future__ import annotations

from typing import Any

from devstack.consul.catalog import (
    delete_check,
    delete_service,
    ensure_check,
    ensure_service,
    set_check_status,
)
from devstack.consul.checks import OUTPUT_MAX, CheckDefinition
from devstack.consul.core import Core
from devstack.consul.errors import ConsulError, server_error
from devstack.consul.state import SERF_CHECK_ID, Check, ServiceInstance

MAINT_SERVICE_PREFIX = "_service_maintenance:"
NODE_MAINT_ID = "_node_maintenance"


# -- JSON shapes ----------------------------------------------------------------------------------


def agent_service_json(core: Core, sid: str) -> dict[str, Any] | None:
    svc = core.state.services.get(core.node_name, {}).get(sid)
    if svc is None:
        return None
    out: dict[str, Any] = {}
    if svc.kind:
        out["Kind"] = svc.kind
    out.update(ID=svc.id, Service=svc.name, Tags=svc.tags, Meta=svc.meta, Port=svc.port)
    out["Address"] = svc.address
    if svc.tagged_addresses:
        out["TaggedAddresses"] = svc.tagged_addresses
    out.update(
        Weights=svc.weights,
        EnableTagOverride=svc.enable_tag_override,
        Datacenter=core.config.datacenter,
    )
    return out


def check_identity_json(check: Check) -> dict[str, Any]:
    """The fields every agent answer about a check starts with: identity and status."""
    return {
        "Node": check.node,
        "CheckID": check.id,
        "Name": check.name,
        "Status": check.status,
        "Notes": check.notes,
        "Output": check.output,
        "ServiceID": check.service_id,
        "ServiceName": check.service_name,
        "ServiceTags": check.service_tags,
    }


def agent_check_json(check: Check, defn: CheckDefinition | None) -> dict[str, Any]:
    return {
        **check_identity_json(check),
        "Type": defn.kind if defn else check.type,
        "Interval": check.interval,
        "Timeout": check.timeout,
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }


# -- lookups --------------------------------------------------------------------------------------


def local_service(core: Core, sid: str) -> ServiceInstance | None:
    """A service registered with this agent (the built-in ``consul`` service is not one)."""
    if sid == "consul":
        return None
    return core.state.services.get(core.node_name, {}).get(sid)


def local_check(core: Core, check_id: str) -> Check:
    check = core.state.checks.get(core.node_name, {}).get(check_id)
    if check is None or check.id == SERF_CHECK_ID:
        raise ConsulError(
            404,
            f'Unknown check ID "{check_id}". '
            "Ensure that the check ID is passed, not the check name.",
        )
    return check


# -- registration ---------------------------------------------------------------------------------


def register_service(
    core: Core, svc: ServiceInstance, defns: list[CheckDefinition], *, replace_checks: bool
) -> None:
    st = core.state
    ensure_service(st, svc)
    if replace_checks:
        wanted = {d.id for d in defns}
        for check in list(st.checks.get(core.node_name, {}).values()):
            if check.service_id == svc.id and check.id not in wanted:
                delete_check(st, core.node_name, check.id)
    for defn in defns:
        register_check(core, defn)


def register_check(core: Core, defn: CheckDefinition, *, keep_status: bool = True) -> None:
    st = core.state
    existing = st.checks.get(core.node_name, {}).get(defn.id)
    status = defn.status or "critical"
    output = ""
    if keep_status and existing is not None and not defn.status:
        # Re-registering an existing check keeps its current state (as the agent does).
        status, output = existing.status, existing.output
    ensure_check(
        st,
        Check(
            node=core.node_name,
            id=defn.id,
            name=defn.name,
            status=status,
            notes=defn.notes,
            output=output,
            service_id=defn.service_id,
            service_name="",
            service_tags=[],
            type=defn.kind,
            interval=defn.interval_text,
            timeout=defn.timeout_text,
            create_index=0,
            modify_index=0,
        ),
    )
    core.checks.add(defn)


def deregister_service(core: Core, service_id: str) -> bool:
    return delete_service(core.state, core.node_name, service_id)


def deregister_check(core: Core, check_id: str) -> bool:
    return delete_check(core.state, core.node_name, check_id)


def update_ttl(core: Core, check_id: str, status: str, output: str) -> None:
    """A TTL check's heartbeat (``pass``/``warn``/``fail``/``update``)."""
    runner = core.checks
    defn = runner.definitions.get(check_id)
    if defn is None or defn.kind != "ttl":
        raise server_error(f'CheckID "{check_id}" does not have associated TTL')
    if len(output) > OUTPUT_MAX:
        # CheckTTL.SetStatus keeps the first check_output_max_size bytes and says so.
        output = f"{output[:OUTPUT_MAX]} ... (captured {OUTPUT_MAX} of {len(output)} bytes)"
    runner.refresh_ttl(check_id)
    runner.report(check_id, status, output, direct=True)


# -- maintenance ----------------------------------------------------------------------------------


def _maintenance_check(core: Core, check_id: str, name: str, reason: str, sid: str) -> Check:
    return Check(
        node=core.node_name,
        id=check_id,
        name=name,
        status="critical",
        notes=reason,
        output="",
        service_id=sid,
        service_name="",
        service_tags=[],
        type="maintenance",
        interval="",
        timeout="",
        create_index=0,
        modify_index=0,
    )


def service_maintenance(core: Core, sid: str, enable: bool, reason: str) -> None:
    check_id = MAINT_SERVICE_PREFIX + sid
    if enable:
        reason = reason or "Maintenance mode is enabled for this service, "
        check = _maintenance_check(core, check_id, "Service Maintenance Mode", reason, sid)
        ensure_check(core.state, check)
    else:
        delete_check(core.state, core.node_name, check_id)


def node_maintenance(core: Core, enable: bool, reason: str) -> None:
    if enable:
        reason = reason or "Maintenance mode is enabled for this node"
        check = _maintenance_check(core, NODE_MAINT_ID, "Node Maintenance Mode", reason, "")
        ensure_check(core.state, check)
    else:
        delete_check(core.state, core.node_name, NODE_MAINT_ID)


# -- forcing a status -----------------------------------------------------------------------------


def mark_check(
    core: Core, check_id: str, status: str, output: str, node: str | None = None
) -> bool:
    """Force a check's status (fault injection); a local probe may overwrite it on its next run."""
    target = node or core.node_name
    check = core.state.find_check(check_id, target)
    if check is None:
        return False
    if target == core.node_name:
        core.checks.report(check_id, status, output, direct=True)
        if check_id not in core.checks.definitions:
            set_check_status(core.state, target, check_id, status, output)
        return True
    return set_check_status(core.state, target, check_id, status, output)
