"""Nomad's ACL system: bootstrap, policies and tokens, and resolving a secret to an :class:`ACL`.

A server with ACLs enabled starts un-bootstrapped (``acl_enabled``); the first
``/v1/acl/bootstrap`` creates the management token and every later one is refused with
Nomad's text. ``acl_master_token`` starts the server already bootstrapped with that secret,
as ``nomad acl bootstrap`` with a chosen ``BootstrapSecret`` would. A request without a token
acts as the anonymous token, whose rights are the ``anonymous`` policy's, if one exists.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from devstack.nomad.aclpolicy import ACL, PolicyError, parse_rules
from devstack.nomad.config import NomadConfig
from devstack.nomad.errors import NomadError
from devstack.nomad.structs import rfc3339
from devstack.nomad.util import new_id, now_ns, parse_go_duration

from .dryrun import JobPlans

_POLICY_NAME = re.compile(r"^[a-zA-Z0-9-]{1,128}$")
ANONYMOUS = "anonymous"


def _denied() -> NomadError:
    return NomadError(403, "Permission denied")


class ACLStore(JobPlans):
    @property
    def acl_enabled(self) -> bool:
        return self.config.acl_enabled or self.config.acl_master_token is not None

    def __init__(self, config: NomadConfig | None = None) -> None:
        super().__init__(config)
        self.acl_tokens: dict[str, dict[str, Any]] = {}
        self.acl_secrets: dict[str, str] = {}
        self.acl_policies: dict[str, dict[str, Any]] = {}
        self.acl_bootstrap_index = 0

    async def start(self) -> None:
        if self.config.acl_master_token is not None and not self.acl_bootstrap_index:
            self._bootstrap(self.config.acl_master_token)
        await super().start()

    def _disabled(self) -> None:
        if not self.acl_enabled:
            raise NomadError(400, "ACL support disabled")

    # --- resolution -------------------------------------------------------------------------

    def resolve_token(self, secret: str) -> tuple[dict[str, Any] | None, ACL]:
        """The token of ``secret`` (None: anonymous) and its ACL; 403 if it is not valid."""
        if not secret:
            policy = self.acl_policies.get(ANONYMOUS)
            return None, ACL.merge([parse_rules(policy["Rules"])] if policy else [])
        token = self.acl_tokens.get(self.acl_secrets.get(secret, ""))
        if token is None or self._expired(token):
            raise _denied()
        if token["Type"] == "management":
            return token, ACL(management=True)
        policies = [
            parse_rules(self.acl_policies[name]["Rules"])
            for name in token["Policies"] or []
            if name in self.acl_policies
        ]
        return token, ACL.merge(policies)

    @staticmethod
    def _expired(token: dict[str, Any]) -> bool:
        deadline = int(token.get("_expires_ns") or 0)
        return deadline > 0 and now_ns() >= deadline

    # --- bootstrap --------------------------------------------------------------------------

    def _bootstrap(self, secret: str) -> dict[str, Any]:
        index = self.state.begin()
        token = self._new_token(
            {"Name": "Bootstrap Token", "Type": "management", "Global": True}, index, secret
        )
        self.acl_bootstrap_index = index
        self.state.touch("acl_token", index)
        self.state.commit(index, [])
        return token

    def acl_bootstrap(self, body: Any) -> dict[str, Any]:
        self._disabled()
        if self.acl_bootstrap_index:
            raise NomadError(
                400, f"ACL bootstrap already done (reset index: {self.acl_bootstrap_index})"
            )
        secret = body.get("BootstrapSecret") if isinstance(body, dict) else None
        return self._public(self._bootstrap(str(secret) if secret else new_id()))

    # --- tokens -----------------------------------------------------------------------------

    def _new_token(
        self, spec: dict[str, Any], index: int, secret: str | None = None
    ) -> dict[str, Any]:
        now = now_ns()
        ttl = spec.get("ExpirationTTL") or 0
        if isinstance(ttl, str):
            try:
                ttl = parse_go_duration(ttl)
            except ValueError as exc:
                raise NomadError(400, str(exc)) from exc
        token: dict[str, Any] = {
            "AccessorID": spec.get("AccessorID") or new_id(),
            "SecretID": secret or new_id(),
            "Name": str(spec.get("Name") or ""),
            "Type": spec.get("Type") or "client",
            "Policies": list(spec.get("Policies") or []) or None,
            "Roles": None,
            "Global": bool(spec.get("Global")),
            "CreateTime": rfc3339(now),
            "ExpirationTime": rfc3339(now + int(ttl)) if ttl else None,
            "ExpirationTTL": int(ttl),
            "CreateIndex": index,
            "ModifyIndex": index,
        }
        token["Hash"] = base64.b64encode(
            hashlib.sha256(f"{token['Name']}{token['Type']}{token['Policies']}".encode()).digest()
        ).decode()
        if ttl:
            token["_expires_ns"] = now + int(ttl)
        self.acl_tokens[token["AccessorID"]] = token
        self.acl_secrets[token["SecretID"]] = token["AccessorID"]
        return token

    @staticmethod
    def _public(token: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in token.items() if not k.startswith("_")}

    @staticmethod
    def token_stub(token: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in token.items() if not k.startswith("_") and k != "SecretID"}

    def _validate_token(self, spec: dict[str, Any]) -> None:
        kind = spec.get("Type") or "client"
        policies = spec.get("Policies") or []
        if kind not in ("client", "management"):
            raise NomadError(400, "token 0 invalid: token type must be client or management")
        if kind == "client" and not policies:
            raise NomadError(400, "token 0 invalid: client token missing policies or roles")
        if kind == "management" and policies:
            raise NomadError(
                400,
                "token 0 invalid: management token cannot be associated with policies or roles",
            )
        for name in policies:
            if name not in self.acl_policies:
                raise NomadError(400, f"cannot find policy {name}")

    def upsert_token(self, body: Any, accessor: str | None = None) -> dict[str, Any]:
        self._disabled()
        if not isinstance(body, dict):
            raise NomadError(400, "request body is not a JSON object")
        if accessor is not None and body.get("AccessorID") not in (None, "", accessor):
            raise NomadError(400, "Token Accessor ID does not match request path")
        existing = self.acl_tokens.get(accessor or "") if accessor else None
        if accessor and existing is None:
            raise NomadError(404, "ACL token not found")
        spec = {**(existing or {}), **body}
        if existing is not None:
            spec["Type"] = existing["Type"]
        self._validate_token(spec)
        index = self.state.begin()
        if existing is not None:
            token = {
                **existing,
                "Name": str(spec.get("Name") or ""),
                "Policies": list(spec.get("Policies") or []) or None,
                "ModifyIndex": index,
            }
            self.acl_tokens[token["AccessorID"]] = token
        else:
            token = self._new_token(spec, index)
        self.state.touch("acl_token", index)
        self.state.commit(index, [])
        return self._public(token)

    def token(self, accessor: str) -> dict[str, Any]:
        self._disabled()
        token = self.acl_tokens.get(accessor)
        if token is None:
            raise NomadError(404, "ACL token not found")
        return self._public(token)

    def delete_token(self, accessor: str) -> int:
        self._disabled()
        token = self.acl_tokens.pop(accessor, None)
        if token is None:
            raise NomadError(404, "Cannot delete nonexistent tokens: " + accessor)
        self.acl_secrets.pop(token["SecretID"], None)
        index = self.state.begin()
        self.state.touch("acl_token", index)
        self.state.commit(index, [])
        return index

    def tokens(self) -> list[dict[str, Any]]:
        self._disabled()
        return [
            self.token_stub(t)
            for t in sorted(self.acl_tokens.values(), key=lambda t: t["CreateIndex"])
        ]

    # --- policies ---------------------------------------------------------------------------

    def upsert_policy(self, name: str, body: Any) -> int:
        self._disabled()
        if not isinstance(body, dict):
            raise NomadError(400, "request body is not a JSON object")
        if body.get("Name") not in (None, name):
            raise NomadError(400, "ACL policy name does not match request path")
        if not _POLICY_NAME.match(name):
            raise NomadError(400, f"policy 0 invalid: invalid name '{name}'")
        rules = body.get("Rules") or ""
        if not isinstance(rules, str):
            raise NomadError(400, "policy 0 invalid: Rules must be a string")
        try:
            parse_rules(rules)
        except PolicyError as exc:
            raise NomadError(400, f"policy 0 invalid: {exc}") from exc
        index = self.state.begin()
        old = self.acl_policies.get(name)
        self.acl_policies[name] = {
            "Name": name,
            "Description": str(body.get("Description") or ""),
            "Rules": rules,
            "JobACL": body.get("JobACL"),
            "CreateIndex": old["CreateIndex"] if old else index,
            "ModifyIndex": index,
        }
        self.state.touch("acl_policy", index)
        self.state.commit(index, [])
        return index

    def policy(self, name: str) -> dict[str, Any]:
        self._disabled()
        policy = self.acl_policies.get(name)
        if policy is None:
            raise NomadError(404, "ACL policy not found")
        return policy

    def delete_policy(self, name: str) -> int:
        self._disabled()
        if self.acl_policies.pop(name, None) is None:
            raise NomadError(404, "ACL policy not found")
        index = self.state.begin()
        self.state.touch("acl_policy", index)
        self.state.commit(index, [])
        return index

    def policies(self, visible: set[str] | None = None) -> list[dict[str, Any]]:
        self._disabled()
        return [
            {k: p[k] for k in ("Name", "Description", "CreateIndex", "ModifyIndex")}
            for name, p in sorted(self.acl_policies.items())
            if visible is None or name in visible
        ]
