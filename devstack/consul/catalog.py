"""The service catalog: nodes, service instances and health checks, and their JSON shapes.

Writes follow ``agent/consul/state/catalog.go``: an identical re-registration changes nothing (so
periodic syncs from Nomad do not churn indexes), every change bumps its table index and the
per-service index that ``/v1/health/service/<name>`` blocks on, and a check that turns critical
or disappears invalidates the sessions linked to it.
"""

from __future__ import annotations

import uuid
from typing import Any

from devstack.consul.encoding import CI, dumps
from devstack.consul.errors import ConsulError, bad_request
from devstack.consul.sessions import invalidate_for_check, invalidate_for_node
from devstack.consul.state import Check, Node, ServiceInstance, State

STATUSES = ("passing", "warning", "critical")
PROXY: dict[str, Any] = {"Mode": "", "MeshGateway": {}, "Expose": {}}


# -- JSON shapes --------------------------------------------------------------------------------


def node_json(n: Node) -> dict[str, Any]:
    return {
        "ID": n.id,
        "Node": n.name,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": n.tagged_addresses,
        "Meta": n.meta,
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    }


def service_json(s: ServiceInstance) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s.kind:
        out["Kind"] = s.kind
    out.update(ID=s.id, Service=s.name, Tags=s.tags, Address=s.address)
    if s.tagged_addresses:
        out["TaggedAddresses"] = s.tagged_addresses
    out.update(
        Meta=s.meta,
        Port=s.port,
        Weights=s.weights,
        EnableTagOverride=s.enable_tag_override,
        Proxy=PROXY,
        Connect={},
        PeerName="",
        CreateIndex=s.create_index,
        ModifyIndex=s.modify_index,
    )
    return out


def catalog_service_json(n: Node, s: ServiceInstance) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ID": n.id,
        "Node": n.name,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": n.tagged_addresses,
        "NodeMeta": n.meta,
        "ServiceKind": s.kind,
        "ServiceID": s.id,
        "ServiceName": s.name,
        "ServiceTags": s.tags,
        "ServiceAddress": s.address,
    }
    if s.tagged_addresses:
        out["ServiceTaggedAddresses"] = s.tagged_addresses
    out.update(
        ServiceWeights=s.weights,
        ServiceMeta=s.meta,
        ServicePort=s.port,
        ServiceSocketPath="",
        ServiceEnableTagOverride=s.enable_tag_override,
        ServiceProxy=PROXY,
        ServiceConnect={},
        ServicePeerName="",
        CreateIndex=s.create_index,
        ModifyIndex=s.modify_index,
    )
    return out


def check_json(c: Check) -> dict[str, Any]:
    return {
        "Node": c.node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status,
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": c.service_tags,
        "Type": c.type,
        "Interval": c.interval,
        "Timeout": c.timeout,
        "ExposedPort": 0,
        "Definition": c.definition,
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    }


def check_encoded(c: Check) -> tuple[dict[str, Any], bytes]:
    """``check_json(c)`` and its JSON, kept on the check until it changes. The dict is shared by
    every answer that uses it: read it, never change it."""
    source = (c.modify_index, c.create_index, c.output)
    if c.encoded is None or c.encoded_from != source:
        shape = check_json(c)
        c.encoded = (shape, dumps(shape))
        c.encoded_from = source
    return c.encoded


# -- state writes -------------------------------------------------------------------------------


def ensure_node(
    st: State,
    name: str,
    address: str,
    *,
    node_id: str = "",
    tagged: dict[str, str] | None = None,
    meta: dict[str, str] | None = None,
) -> None:
    existing = st.nodes.get(name)
    tagged = tagged if tagged is not None else (existing.tagged_addresses if existing else {})
    meta = meta if meta is not None else (existing.meta if existing else {})
    if existing is not None:
        if (
            existing.address == address
            and existing.tagged_addresses == tagged
            and existing.meta == meta
            and (not node_id or node_id == existing.id)
        ):
            return
        idx = st.next_index()
        existing.address, existing.tagged_addresses, existing.meta = address, tagged, meta
        if node_id:
            existing.id = node_id
        existing.modify_index = idx
    else:
        idx = st.next_index()
        st.nodes[name] = Node(
            id=node_id or str(uuid.uuid4()),
            name=name,
            address=address,
            datacenter=st.datacenter,
            tagged_addresses=tagged,
            meta=meta,
            create_index=idx,
            modify_index=idx,
        )
    st.bump("nodes", idx)
    for svc in st.service_names_on(name):
        st.bump_service(svc, idx)


def ensure_service(st: State, svc: ServiceInstance) -> None:
    node_services = st.services.setdefault(svc.node, {})
    existing = node_services.get(svc.id)
    if existing is not None and _same_service(existing, svc):
        return
    idx = st.next_index()
    svc.create_index = existing.create_index if existing else idx
    svc.modify_index = idx
    node_services[svc.id] = svc
    st.bump("services", idx)
    st.bump_service(svc.name, idx)
    if existing is not None and existing.name != svc.name:
        st.bump_service(existing.name, idx)
    # Checks carry a copy of the service's name and tags.
    for check in st.checks.get(svc.node, {}).values():
        if check.service_id == svc.id and (
            check.service_name != svc.name or check.service_tags != svc.tags
        ):
            check.service_name, check.service_tags = svc.name, list(svc.tags)
            check.modify_index = idx
            st.bump("checks", idx)


def _same_service(a: ServiceInstance, b: ServiceInstance) -> bool:
    return (
        a.name == b.name
        and a.tags == b.tags
        and a.address == b.address
        and a.port == b.port
        and a.meta == b.meta
        and a.tagged_addresses == b.tagged_addresses
        and a.weights == b.weights
        and a.enable_tag_override == b.enable_tag_override
        and a.kind == b.kind
    )


def ensure_check(st: State, check: Check) -> None:
    node_checks = st.checks.setdefault(check.node, {})
    existing = node_checks.get(check.id)
    if check.service_id:
        svc = st.services.get(check.node, {}).get(check.service_id)
        if svc is None:
            raise ConsulError(500, f"Missing service registration for check '{check.id}'")
        check.service_name, check.service_tags = svc.name, list(svc.tags)
    if existing is not None and _same_check(existing, check):
        return
    idx = st.next_index()
    check.create_index = existing.create_index if existing else idx
    check.modify_index = idx
    node_checks[check.id] = check
    _bump_check(st, check, idx)
    if (
        existing is not None
        and existing.service_name
        and existing.service_name != check.service_name
    ):
        st.bump_service(existing.service_name, idx)
    if check.status == "critical" and (existing is None or existing.status != "critical"):
        invalidate_for_check(st, check.node, check.id)


def _same_check(a: Check, b: Check) -> bool:
    return (
        a.name == b.name
        and a.status == b.status
        and a.notes == b.notes
        and a.output == b.output
        and a.service_id == b.service_id
        and a.service_tags == b.service_tags
        and a.type == b.type
        and a.interval == b.interval
        and a.timeout == b.timeout
    )


def _bump_check(st: State, check: Check, idx: int) -> None:
    st.bump("checks", idx)
    if check.service_id:
        st.bump_service(check.service_name, idx)
    else:
        for name in st.service_names_on(check.node):
            st.bump_service(name, idx)


def set_check_status(st: State, node: str, check_id: str, status: str, output: str) -> bool:
    """Record a check result; only a status change is a catalog write (as anti-entropy does)."""
    check = st.checks.get(node, {}).get(check_id)
    if check is None:
        return False
    if check.status == status:
        # Output-only changes are held back by ``check_update_interval`` in Consul; keeping them
        # local spares every watcher of the service a wake-up per check run.
        check.output = output
        return True
    idx = st.next_index()
    check.status, check.output, check.modify_index = status, output, idx
    _bump_check(st, check, idx)
    if status == "critical":
        invalidate_for_check(st, node, check_id)
    return True


def delete_check(st: State, node: str, check_id: str) -> bool:
    check = st.checks.get(node, {}).pop(check_id, None)
    if check is None:
        return False
    idx = st.next_index()
    _bump_check(st, check, idx)
    invalidate_for_check(st, node, check_id)
    for listener in st.check_removed:
        listener(node, check_id)
    return True


def delete_service(st: State, node: str, service_id: str) -> bool:
    svc = st.services.get(node, {}).pop(service_id, None)
    if svc is None:
        return False
    for cid in [c.id for c in st.checks.get(node, {}).values() if c.service_id == service_id]:
        delete_check(st, node, cid)
    idx = st.next_index()
    st.bump("services", idx)
    st.bump_service(svc.name, idx)
    return True


def delete_node(st: State, node: str) -> bool:
    if node not in st.nodes:
        return False
    for sid in list(st.services.get(node, {})):
        delete_service(st, node, sid)
    for cid in list(st.checks.get(node, {})):
        delete_check(st, node, cid)
    invalidate_for_node(st, node)
    del st.nodes[node]
    st.services.pop(node, None)
    st.checks.pop(node, None)
    idx = st.next_index()
    st.bump("nodes", idx)
    return True


# -- decoding registration bodies ---------------------------------------------------------------


def str_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad_request(f"Request decode failed: {field} must be a map of strings")
    return dict(value)


def str_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"Request decode failed: {field} must be a list of strings")
    return list(value)


def port_of(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise bad_request("Request decode failed: invalid Port")
    return value


def tagged_service_addresses(value: Any) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("Request decode failed: TaggedAddresses must be an object")
    out: dict[str, dict[str, Any]] = {}
    for name, addr in value.items():
        if not isinstance(addr, dict):
            raise bad_request("Request decode failed: invalid TaggedAddresses entry")
        ci = CI(addr)
        out[name] = {"Address": ci.text("Address"), "Port": port_of(ci.get("Port"))}
    return out


def weights_of(value: Any) -> dict[str, int]:
    if value is None:
        return {"Passing": 1, "Warning": 1}
    if not isinstance(value, dict):
        raise bad_request("Request decode failed: Weights must be an object")
    ci = CI(value)
    passing, warning = ci.get("Passing", default=1), ci.get("Warning", default=1)
    if not isinstance(passing, int) or not isinstance(warning, int):
        raise bad_request("Request decode failed: Weights must be integers")
    if passing < 1:
        raise bad_request("Passing must be greater than 0")
    return {"Passing": passing, "Warning": warning}


def service_from(node: str, body: CI, *, name_field: str = "Service") -> ServiceInstance:
    name = body.text(name_field, "Name")
    if not name:
        raise bad_request("Missing service name")
    address = body.text("Address")
    if address in ("0.0.0.0", "::", "[::]"):
        raise bad_request(f"Invalid service address {address}")
    return ServiceInstance(
        node=node,
        id=body.text("ID") or name,
        name=name,
        tags=str_list(body.get("Tags"), "Tags"),
        address=address,
        port=port_of(body.get("Port")),
        meta=str_map(body.get("Meta"), "Meta"),
        tagged_addresses=tagged_service_addresses(body.get("TaggedAddresses")),
        weights=weights_of(body.get("Weights")),
        enable_tag_override=bool(body.get("EnableTagOverride", default=False)),
        kind=body.text("Kind"),
        create_index=0,
        modify_index=0,
    )


def status_of(value: Any, default: str = "critical") -> str:
    if value in (None, ""):
        return default
    if value not in STATUSES:
        raise bad_request(f"Status for checks must 'passing', 'warning', 'critical', got {value!r}")
    return str(value)


# -- reads ------------------------------------------------------------------------------------


def instances(st: State, name: str, tags: list[str]) -> list[tuple[Node, ServiceInstance]]:
    out: list[tuple[Node, ServiceInstance]] = []
    for node_name in sorted(st.services):
        node = st.nodes.get(node_name)
        if node is None:
            continue
        for sid in sorted(st.services[node_name]):
            svc = st.services[node_name][sid]
            if svc.name == name and all(t in svc.tags for t in tags):
                out.append((node, svc))
    return out
