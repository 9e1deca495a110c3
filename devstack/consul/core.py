"""The emulated agent as one object: configuration, state, ACLs, faults and background work.

Every endpoint module receives this object (through the aiohttp app) instead of importing globals,
so several emulated agents can run in one process, one per test.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from devstack.consul.acl import AclStore, Authorizer, request_token
from devstack.consul.faults import Faults
from devstack.consul.http import ConsulError, QueryOptions, permission_denied
from devstack.consul.state import SERF_CHECK_ID, Check, Node, ServiceInstance, State

if TYPE_CHECKING:
    from devstack.consul.checks import CheckRunner

VERSION = "1.22.0"
KV_MAX_VALUE_SIZE = 512 * 1024
TXN_MAX_OPS = 128


@dataclass(slots=True)
class Config:
    node_name: str = ""
    datacenter: str = "dc1"
    acl_master_token: str | None = None
    acl_default_policy: str | None = None
    # Address advertised for the node and as the raft leader (Consul's server RPC port).
    advertise_addr: str = "127.0.0.1"

    def resolved_node_name(self) -> str:
        return self.node_name or socket.gethostname() or "devstack"


AUTHZ_KEY = web.RequestKey("consul_authz", Authorizer)


class Core:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_name = config.resolved_node_name()
        self.state = State(self.node_name, config.datacenter)
        self.acl = AclStore(config.acl_master_token, config.acl_default_policy)
        self.faults = Faults()
        self.checks: CheckRunner | None = None
        # Incremented by each emulated snapshot restore; parked queries return when it moves.
        self.restores = 0
        self._bootstrap()

    def _bootstrap(self) -> None:
        """Register what a fresh ``consul agent -dev`` shows: node, serfHealth, ``consul``."""
        st = self.state
        idx = st.next_index()
        addr = self.config.advertise_addr
        st.nodes[self.node_name] = Node(
            id=st.node_id,
            name=self.node_name,
            address=addr,
            datacenter=self.config.datacenter,
            tagged_addresses={"lan": addr, "lan_ipv4": addr, "wan": addr, "wan_ipv4": addr},
            meta={"consul-network-segment": "", "consul-version": VERSION},
            create_index=idx,
            modify_index=idx,
        )
        st.bump("nodes", idx)
        idx = st.next_index()
        st.services[self.node_name] = {
            "consul": ServiceInstance(
                node=self.node_name,
                id="consul",
                name="consul",
                tags=[],
                address="",
                port=8300,
                meta={"non_voter": "false", "raft_version": "3", "read_replica": "false"},
                tagged_addresses={},
                weights={"Passing": 1, "Warning": 1},
                enable_tag_override=False,
                kind="",
                create_index=idx,
                modify_index=idx,
            )
        }
        st.bump("services", idx)
        st.bump_service("consul", idx)
        idx = st.next_index()
        st.checks[self.node_name] = {
            SERF_CHECK_ID: Check(
                node=self.node_name,
                id=SERF_CHECK_ID,
                name="Serf Health Status",
                status="passing",
                notes="",
                output="Agent alive and reachable",
                service_id="",
                service_name="",
                service_tags=[],
                type="",
                interval="",
                timeout="",
                create_index=idx,
                modify_index=idx,
            )
        }
        st.bump("checks", idx)

    # -- leadership ----------------------------------------------------------------------------

    def has_leader(self) -> bool:
        return not self.faults.no_leader

    def require_leader(self, opts: QueryOptions | None = None) -> None:
        """Reads with ``?stale`` are served by any server; everything else needs a leader."""
        if self.faults.no_leader and (opts is None or not opts.stale):
            raise ConsulError(
                500,
                "No cluster leader",
                {"X-Consul-KnownLeader": "false", "X-Consul-LastContact": "0"},
            )

    def leader_addr(self) -> str:
        return "" if self.faults.no_leader else f"{self.config.advertise_addr}:8300"

    # -- ACL -----------------------------------------------------------------------------------

    def authz(self, request: web.Request) -> Authorizer | None:
        if not self.acl.enabled:
            return None
        cached = request.get(AUTHZ_KEY)
        if cached is not None:
            return cached
        try:
            authz = self.acl.authorizer(request_token(request))
        except LookupError as exc:
            raise ConsulError(403, "ACL not found") from exc
        if authz is not None:
            request[AUTHZ_KEY] = authz
        return authz

    def token_sent(self, request: web.Request) -> bool:
        # Only consulted for the filtered-by-ACLs header, which needs ACLs on.
        return self.acl.enabled and bool(request_token(request))

    def require(self, request: web.Request, resource: str, name: str, need: int) -> None:
        authz = self.authz(request)
        if authz is None or authz.allowed(resource, name, need):
            return
        raise permission_denied(
            authz.accessor, f"{resource}:{'write' if need >= 2 else 'read'}", name
        )

    def require_scalar(self, request: web.Request, name: str, need: int) -> None:
        authz = self.authz(request)
        if authz is None or authz.scalar(name) >= need:
            return
        raise permission_denied(authz.accessor, f"{name}:{'write' if need >= 2 else 'read'}", "")


CORE_KEY = web.AppKey("consul_core", Core)


def core_of(request: web.Request) -> Core:
    return request.app[CORE_KEY]
