"""The emulated agent as one object: configuration, state, ACLs, faults and its check runner.

Every handler receives this object (through the aiohttp app) instead of importing globals, so
several emulated agents can run in one process, one per test. It also registers what a fresh
``consul agent -dev`` shows (its node, ``serfHealth``, the ``consul`` service) and answers
whether there is a leader.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from devstack.consul.acl import AclStore
from devstack.consul.checks import CheckRunner
from devstack.consul.errors import ConsulError
from devstack.consul.faults import Faults
from devstack.consul.state import SERF_CHECK_ID, Check, Node, ServiceInstance, State

VERSION = "1.22.0"


@dataclass(slots=True)
class Config:
    node_name: str = ""
    datacenter: str = "dc1"
    acl_master_token: str | None = None
    acl_default_policy: str | None = None
    # ACLs on without a master token: the cluster waits for ``PUT /v1/acl/bootstrap``.
    acl_enabled: bool = False
    # Address advertised for the node and as the raft leader (Consul's server RPC port).
    advertise_addr: str = "127.0.0.1"

    def resolved_node_name(self) -> str:
        return self.node_name or socket.gethostname() or "devstack"


class Core:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_name = config.resolved_node_name()
        self.state = State(self.node_name, config.datacenter)
        self.acl = AclStore(
            config.acl_master_token, config.acl_default_policy, enabled=config.acl_enabled
        )
        self.faults = Faults()
        self.checks = CheckRunner(self.state)
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

    def require_leader(self, stale: bool = False) -> None:
        """Reads with ``?stale`` are served by any server; everything else needs a leader."""
        if self.faults.no_leader and not stale:
            raise ConsulError(
                500,
                "No cluster leader",
                {"X-Consul-KnownLeader": "false", "X-Consul-LastContact": "0"},
            )

    def leader_addr(self) -> str:
        return "" if self.faults.no_leader else f"{self.config.advertise_addr}:8300"
