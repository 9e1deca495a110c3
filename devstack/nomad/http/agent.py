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
            "Port": 4648,
            "Tags": {
                "role": "nomad",
                "region": cfg.region,
                "dc": cfg.datacenter,
                "build": NOMAD_VERSION,
                "port": "4647",
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
        return json_response({"client": ok, "server": ok})

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
