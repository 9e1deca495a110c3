"""ACL endpoints: bootstrap, policies and tokens (``/v1/acl/...``).

Listing and writing policies and tokens needs a management token; a client token may read its
own token and the policies it holds, as Nomad allows.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from devstack.nomad.aclpolicy import ACL
from devstack.nomad.errors import NomadError

from .common import (
    CALLER,
    READ,
    WRITE,
    APIBase,
    compile_filter,
    json_response,
    methods,
    read_body,
    request_token,
)

DENIED = "Permission denied"


def _caller(request: web.Request) -> tuple[dict[str, Any] | None, ACL]:
    return CALLER.get()


def _management(request: web.Request) -> None:
    if not _caller(request)[1].management:
        raise NomadError(403, DENIED)


class ACLAPI(APIBase):
    async def bootstrap(self, request: web.Request) -> web.Response:
        methods(request, WRITE)
        body = await read_body(request) if request.content_length else {}
        reply = self.cluster.acl_bootstrap(body)
        return json_response(reply, reply["CreateIndex"])

    async def token_self(self, request: web.Request) -> web.Response:
        methods(request, READ)
        if not self.cluster.acl_enabled:
            raise NomadError(400, "ACL support disabled")
        secret = request_token(request)
        accessor = self.cluster.acl_secrets.get(secret) if secret else None
        if accessor is None:
            raise NomadError(403, "ACL token not found")
        return json_response(self.cluster.token(accessor), self.state.index)

    async def tokens(self, request: web.Request) -> web.Response:
        methods(request, READ)
        self._enabled()
        _management(request)
        tokens = self.cluster.tokens()
        prefix = request.query.get("prefix", "")
        if prefix:
            tokens = [t for t in tokens if t["AccessorID"].startswith(prefix)]
        if request.query.get("filter"):
            keep = compile_filter(request.query["filter"])
            tokens = [t for t in tokens if keep(t)]
        return json_response(tokens, self.state.table_index["acl_token"])

    async def token(self, request: web.Request) -> web.Response:
        accessor = request.match_info["accessor"]
        self._enabled()
        token, acl = _caller(request)
        if request.method == "DELETE":
            _management(request)
            index = self.cluster.delete_token(accessor)
            return json_response(None, index)
        methods(request, READ + WRITE)
        if request.method in WRITE:
            _management(request)
            reply = self.cluster.upsert_token(await read_body(request), accessor)
            return json_response(reply, reply["ModifyIndex"])
        if not acl.management and (token is None or token["AccessorID"] != accessor):
            raise NomadError(403, DENIED)
        return json_response(self.cluster.token(accessor), self.state.table_index["acl_token"])

    async def create_token(self, request: web.Request) -> web.Response:
        methods(request, WRITE)
        self._enabled()
        _management(request)
        reply = self.cluster.upsert_token(await read_body(request))
        return json_response(reply, reply["CreateIndex"])

    async def policies(self, request: web.Request) -> web.Response:
        methods(request, READ)
        self._enabled()
        token, acl = _caller(request)
        visible = None if acl.management else set((token or {}).get("Policies") or [])
        return json_response(self.cluster.policies(visible), self.state.table_index["acl_policy"])

    async def policy(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._enabled()
        token, acl = _caller(request)
        if request.method == "DELETE":
            _management(request)
            return json_response(None, self.cluster.delete_policy(name))
        methods(request, READ + WRITE)
        if request.method in WRITE:
            _management(request)
            index = self.cluster.upsert_policy(name, await read_body(request))
            return json_response(None, index)
        if not acl.management and name not in ((token or {}).get("Policies") or []):
            raise NomadError(403, DENIED)
        return json_response(self.cluster.policy(name), self.state.table_index["acl_policy"])

    def _enabled(self) -> None:
        if not self.cluster.acl_enabled:
            raise NomadError(400, "ACL support disabled")
