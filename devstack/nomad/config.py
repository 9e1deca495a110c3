"""How an embedded Nomad is configured, and the versions it reports itself as."""

from __future__ import annotations

from dataclasses import dataclass, field

NOMAD_VERSION = "1.9.7"
CONSUL_VERSION = "1.20.6"


@dataclass
class NomadConfig:
    region: str = "global"
    datacenter: str = "dc1"
    nodes: int = 3
    node_cpu: int = 4000
    node_memory: int = 8192
    node_disk: int = 51200
    node_meta: dict[str, str] = field(default_factory=dict)
    consul_addr: str | None = None
    consul_token: str | None = None
    # Register the agent's own nomad/nomad-client services, as auto_advertise does. Real
    # agents default to true; off here so the catalog holds only workloads unless asked.
    consul_auto_advertise: bool = False
    # host:port clients reach the HTTP API on (when known before binding, as the CLI's --port).
    advertise_http: str | None = None
    # ACLs on: un-bootstrapped (acl_enabled), or bootstrapped with this management secret.
    acl_master_token: str | None = None
    acl_enabled: bool = False
    # Simulated docker tasks start this long after the client receives them.
    docker_start_delay: float = 0.5
    event_heartbeat: float = 10.0
    data_dir: str | None = None
    node_ip: str = "127.0.0.1"
    seed: int | None = None
    # raw_exec kill grace period is min(task KillTimeout, this), to keep shutdowns quick.
    max_kill_timeout: float = 5.0
