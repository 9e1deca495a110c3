"""Agent, status and ACL endpoints, and the devstack's own administration paths."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from devstack.nomad.config import NOMAD_VERSION
from devstack.nomad.errors import NomadError

from .common import (
    READ,
    WRITE,
    APIBase,
    json_response,
    methods,
    read_body,
)


class AgentAPI(APIBase):
    def _member(self) -> dict[str, Any]:
        cfg = self.cluster.config
        return {
            "Name": f"devstack.{cfg.region}",
            "Addr": "127.0.0.1",
            "Port": self.cluster.serf_port,
            "Tags": {
                "role": "nomad",
                "region": cfg.region,
                "dc": cfg.datacenter,
                "build": NOMAD_VERSION,
                "port": str(self.cluster.rpc_port),
                "bootstrap": "1",
            },
            "Status": "alive",
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        }

    async def agent_self(self, request: web.Request) -> web.Response:
        methods(request, READ)
        cfg = self.cluster.config
        return json_response(
            {
                "config": {
                    "Region": cfg.region,
                    "Datacenter": cfg.datacenter,
                    "NodeName": "devstack",
                    "Version": {
                        "Version": NOMAD_VERSION,
                        "Revision": "devstack",
                        "VersionPrerelease": "",
                        "VersionMetadata": "",
                    },
                    "ACL": {"Enabled": self.cluster.acl_enabled},
                    "Server": {"Enabled": True, "BootstrapExpect": 1},
                    "Client": {"Enabled": True},
                    "Consul": {"Address": cfg.consul_addr or ""},
                },
                "member": self._member(),
                "stats": {"nomad": {"leader": "true", "server": "true", "known_regions": "1"}},
            }
        )

    async def agent_members(self, request: web.Request) -> web.Response:
        methods(request, READ)
        cfg = self.cluster.config
        return json_response(
            {
                "ServerName": f"devstack.{cfg.region}",
                "ServerRegion": cfg.region,
                "ServerDC": cfg.datacenter,
                "Members": [self._member()],
            }
        )

    async def agent_health(self, request: web.Request) -> web.Response:
        methods(request, READ)
        ok = {"ok": True, "message": "ok"}
        kind = request.query.get("type", "")
        if kind not in ("", "client", "server"):
            raise NomadError(400, f'unknown type "{kind}"')
        body = {k: ok for k in ("client", "server") if kind in ("", k)}
        return json_response(body)

    async def agent_servers(self, request: web.Request) -> web.Response:
        """The client's server list: GET reads it, PUT/POST replaces it (``?address=``)."""
        methods(request, READ + WRITE)
        if request.method in WRITE:
            addresses = request.query.getall("address", [])
            if not addresses:
                raise NomadError(400, "missing server address")
            self.servers = list(addresses)
            return json_response(None)
        return json_response(getattr(self, "servers", None) or [self.cluster.leader])

    async def agent_join(self, request: web.Request) -> web.Response:
        methods(request, WRITE)
        addresses = request.query.getall("address", [])
        if not addresses:
            raise NomadError(400, "missing address to join")
        own = {f"127.0.0.1:{self.cluster.serf_port}", "127.0.0.1"}
        failed = [a for a in addresses if a not in own]
        error = ""
        if failed:
            # One server, alone on loopback: every other address is unreachable.
            error = "\n".join(
                f"Failed to join {a}: dial tcp {a}: connect: connection refused" for a in failed
            )
        return json_response({"error": error, "num_joined": len(addresses) - len(failed)})

    async def agent_force_leave(self, request: web.Request) -> web.Response:
        methods(request, WRITE)
        if not request.query.get("node"):
            raise NomadError(400, "missing node to force leave")
        return json_response(None)

    async def status_leader(self, request: web.Request) -> web.Response:
        methods(request, READ)
        return json_response(self.cluster.leader)

    async def status_peers(self, request: web.Request) -> web.Response:
        methods(request, READ)
        return json_response([self.cluster.leader])

    async def regions(self, request: web.Request) -> web.Response:
        methods(request, READ)
        return json_response([self.cluster.config.region])

    async def admin_nodes(self, request: web.Request) -> web.Response:
        methods(request, WRITE)
        body = await read_body(request)
        if not isinstance(body, dict):
            raise NomadError(400, "request body is not a JSON object")
        try:
            node_id = self.cluster.add_node(
                name=body.get("Name"),
                datacenter=body.get("Datacenter"),
                cpu=body.get("CPU"),
                memory_mb=body.get("MemoryMB"),
                disk_mb=body.get("DiskMB"),
                meta=body.get("Meta"),
                attributes=body.get("Attributes"),
                node_class=body.get("NodeClass") or "",
                node_pool=body.get("NodePool") or "default",
                drivers=tuple(body.get("Drivers") or ("docker", "raw_exec")),
            )
        except (TypeError, ValueError) as exc:
            raise NomadError(400, f"invalid node: {exc}") from exc
        return json_response({"ID": node_id}, self.state.index)

    async def admin_node_status(self, request: web.Request) -> web.Response:
        methods(request, WRITE)
        body = await read_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("Status"), str):
            raise NomadError(400, "Status must be given")
        evals = self.cluster.set_node_status(request.match_info["id"], body["Status"])
        return json_response({"EvalIDs": evals or None}, self.state.index)

    async def not_found(self, request: web.Request) -> web.Response:
        return web.Response(status=404)
