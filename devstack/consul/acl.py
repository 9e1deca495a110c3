"""ACL tokens, policies and rule evaluation, so controllers can be proven to run least-privileged.

Consul resolves the request's token (``?token=``, ``X-Consul-Token``, ``Authorization: Bearer``)
to its policies, then asks the authorizer about one resource at a time: an exact rule (``key``)
beats prefix rules (``key_prefix``), the longest prefix wins, and between policies of one token
``deny`` beats ``write`` beats ``read``. Single-object endpoints answer 403 on a denial; list
endpoints silently drop what the token cannot read. Rules are accepted as JSON or in the HCL
subset policies are written in (``key_prefix "x" { policy = "write" }``, ``operator = "read"``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET = "anonymous"
MANAGEMENT_POLICY_ID = "00000000-0000-0000-0000-000000000001"

DENY, READ, WRITE = 0, 1, 2
_LEVELS = {"deny": DENY, "read": READ, "list": READ, "write": WRITE}
# Resources with both an exact and a ``_prefix`` form; ``acl``/``operator``/... are single values.
RESOURCES = ("key", "session", "service", "node", "agent", "event", "query")
SCALARS = ("acl", "operator", "keyring", "mesh", "peering")


class RuleError(ValueError):
    pass


# -- HCL subset ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r'\s+|#[^\n]*|//[^\n]*|/\*.*?\*/|(?P<str>"(?:[^"\\]|\\.)*")|(?P<id>[A-Za-z_][\w\-]*)|(?P<p>[{}=\[\],])',
    re.S,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise RuleError(f"unexpected character at offset {pos}")
        pos = m.end()
        if m.group("str") is not None:
            out.append(("str", json.loads(m.group("str"))))
        elif m.group("id") is not None:
            out.append(("id", m.group("id")))
        elif m.group("p") is not None:
            out.append(("p", m.group("p")))
    return out


def parse_hcl(text: str) -> dict[str, Any]:
    """Parse the HCL used by ACL rules into the same shape as their JSON form."""
    toks = _tokens(text)
    pos = 0

    def body(until_brace: bool) -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(toks):
            kind, value = toks[pos]
            if kind == "p" and value == "}" and until_brace:
                pos += 1
                return out
            if kind not in ("id", "str"):
                raise RuleError(f"unexpected {value!r}")
            pos += 1
            labels: list[str] = []
            while pos < len(toks) and toks[pos][0] == "str":
                labels.append(toks[pos][1])
                pos += 1
            if pos >= len(toks):
                raise RuleError("unexpected end of rules")
            kind2, value2 = toks[pos]
            if kind2 == "p" and value2 == "=" and not labels:
                pos += 1
                if pos >= len(toks) or toks[pos][0] not in ("str", "id"):
                    raise RuleError(f"expected a value after {value} =")
                out[value] = toks[pos][1]
                pos += 1
            elif kind2 == "p" and value2 == "{":
                pos += 1
                inner = body(True)
                target = out
                for label in [value, *labels[:-1]]:
                    target = target.setdefault(label, {})
                if labels:
                    target[labels[-1]] = inner
                else:
                    out[value] = inner
            else:
                raise RuleError(f"unexpected {value2!r} after {value}")
        if until_brace:
            raise RuleError("unclosed block")
        return out

    return body(False)


def parse_rules(text: str) -> dict[str, Any]:
    stripped = text.strip()
    if not stripped:
        return {}
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise RuleError(str(exc)) from exc
    else:
        data = parse_hcl(stripped)
    if not isinstance(data, dict):
        raise RuleError("rules must be an object")
    return data


@dataclass(slots=True)
class Rules:
    """One policy's rules, compiled: per resource, exact and prefix maps of levels."""

    exact: dict[str, dict[str, int]] = field(default_factory=dict)
    prefix: dict[str, dict[str, int]] = field(default_factory=dict)
    scalar: dict[str, int] = field(default_factory=dict)


def _level(value: Any) -> int:
    if isinstance(value, dict):
        value = {k.lower(): v for k, v in value.items()}.get("policy")
    if not isinstance(value, str) or value.lower() not in _LEVELS:
        raise RuleError(f"Invalid rule policy: {value!r}")
    return _LEVELS[value.lower()]


def compile_rules(text: str) -> Rules:
    data = parse_rules(text)
    rules = Rules()
    for raw_name, body in data.items():
        name = raw_name.lower()
        if name in SCALARS:
            rules.scalar[name] = _level(body)
            continue
        if name.endswith("_prefix"):
            resource, target = name[: -len("_prefix")], rules.prefix
        else:
            resource, target = name, rules.exact
        if resource not in RESOURCES:
            raise RuleError(f"Unknown rule type {raw_name!r}")
        items: list[tuple[str, Any]] = []
        if isinstance(body, dict):
            items = list(body.items())
        elif isinstance(body, list):
            for element in body:
                if not isinstance(element, dict):
                    raise RuleError(f"Invalid {raw_name} rules")
                items.extend(element.items())
        else:
            raise RuleError(f"Invalid {raw_name} rules")
        bucket = target.setdefault(resource, {})
        for segment, spec in items:
            bucket[segment] = _level(spec)
    return rules


def _merge(levels: list[int]) -> int | None:
    if not levels:
        return None
    if DENY in levels:
        return DENY
    return max(levels)


class Authorizer:
    """Decides one permission at a time for a token; ``None`` policies means management."""

    def __init__(self, rules: list[Rules] | None, default: int, accessor: str) -> None:
        self.rules = rules
        self.default = default
        self.accessor = accessor

    @property
    def management(self) -> bool:
        return self.rules is None

    def level(self, resource: str, name: str) -> int:
        if self.rules is None:
            return WRITE
        exact = [r.exact[resource][name] for r in self.rules if name in r.exact.get(resource, {})]
        merged = _merge(exact)
        if merged is not None:
            return merged
        best_len = -1
        found: list[int] = []
        for r in self.rules:
            for segment, lvl in r.prefix.get(resource, {}).items():
                if name.startswith(segment):
                    if len(segment) > best_len:
                        best_len = len(segment)
                        found = [lvl]
                    elif len(segment) == best_len:
                        found.append(lvl)
        merged = _merge(found)
        return self.default if merged is None else merged

    def allowed(self, resource: str, name: str, need: int) -> bool:
        return self.level(resource, name) >= need

    def scalar(self, name: str) -> int:
        if self.rules is None:
            return WRITE
        merged = _merge([r.scalar[name] for r in self.rules if name in r.scalar])
        return self.default if merged is None else merged

    def write_prefix(self, resource: str, prefix: str) -> bool:
        """``KeyWritePrefix``: write on the prefix and on every more specific rule inside it."""
        if self.rules is None:
            return True
        if self.level(resource, prefix) < WRITE:
            return False
        for r in self.rules:
            for table in (r.exact.get(resource, {}), r.prefix.get(resource, {})):
                for segment, lvl in table.items():
                    if segment.startswith(prefix) and lvl < WRITE:
                        return False
        return True


@dataclass(slots=True)
class Policy:
    id: str
    name: str
    description: str
    rules_text: str
    rules: Rules
    datacenters: list[str]
    create_index: int
    modify_index: int

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ID": self.id,
            "Name": self.name,
            "Description": self.description,
            "Rules": self.rules_text,
        }
        if self.datacenters:
            out["Datacenters"] = self.datacenters
        out["Hash"] = base64.b64encode(
            hashlib.blake2b(self.rules_text.encode(), digest_size=32).digest()
        ).decode()
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


@dataclass(slots=True)
class Token:
    accessor: str
    secret: str
    description: str
    policy_ids: list[str]
    local: bool
    create_time: str
    create_index: int
    modify_index: int
    management: bool = False

    def to_json(self, policies: dict[str, Policy], *, show_secret: bool = True) -> dict[str, Any]:
        links = []
        for pid in self.policy_ids:
            pol = policies.get(pid)
            if pol is not None:
                links.append({"ID": pol.id, "Name": pol.name})
        if self.management:
            links = [{"ID": MANAGEMENT_POLICY_ID, "Name": "global-management"}]
        out: dict[str, Any] = {
            "AccessorID": self.accessor,
            "SecretID": self.secret if show_secret else "<hidden>",
            "Description": self.description,
        }
        if links:
            out["Policies"] = links
        out["Local"] = self.local
        out["CreateTime"] = self.create_time
        out["Hash"] = base64.b64encode(
            hashlib.blake2b(
                (self.accessor + ",".join(self.policy_ids)).encode(), digest_size=32
            ).digest()
        ).decode()
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"


class AclStore:
    """Tokens and policies of the emulated cluster (ACLs are on only with a master token)."""

    def __init__(
        self, master_token: str | None, default_policy: str | None = None, enabled: bool = False
    ) -> None:
        # With a master token (``initial_management``) the cluster starts bootstrapped; with only
        # ``enabled`` it starts without any management token until ``/v1/acl/bootstrap``.
        self.enabled = master_token is not None or enabled
        # The index of the bootstrap (0: not bootstrapped yet), reported when it is refused.
        self.bootstrap_index = 1 if master_token is not None else 0
        chosen = (default_policy or ("deny" if self.enabled else "allow")).lower()
        # What X-Consul-Default-ACL-Policy reports.
        self.default_name = chosen
        self.default = WRITE if chosen == "allow" else _LEVELS[chosen]
        self.policies: dict[str, Policy] = {}
        self.tokens: dict[str, Token] = {}  # by secret
        if master_token is not None:
            self.tokens[master_token] = Token(
                accessor=str(uuid.uuid4()),
                secret=master_token,
                description="Initial Management Token",
                policy_ids=[],
                local=False,
                create_time=_now(),
                create_index=1,
                modify_index=1,
                management=True,
            )
        if self.enabled:
            self.tokens[ANONYMOUS_SECRET] = Token(
                accessor=ANONYMOUS_ACCESSOR,
                secret=ANONYMOUS_SECRET,
                description="Anonymous Token",
                policy_ids=[],
                local=False,
                create_time=_now(),
                create_index=1,
                modify_index=1,
            )

    def by_accessor(self, accessor: str) -> Token | None:
        for tok in self.tokens.values():
            if tok.accessor == accessor:
                return tok
        return None

    def policy_by_name(self, name: str) -> Policy | None:
        for pol in self.policies.values():
            if pol.name == name:
                return pol
        return None

    def authorizer(self, secret: str) -> Authorizer | None:
        """The token's authorizer; ``None`` when ACLs are disabled. Unknown secrets raise."""
        if not self.enabled:
            return None
        tok = self.tokens.get(secret or ANONYMOUS_SECRET)
        if tok is None:
            raise LookupError("ACL not found")
        if tok.management:
            return Authorizer(None, WRITE, tok.accessor)
        rules = [self.policies[p].rules for p in tok.policy_ids if p in self.policies]
        return Authorizer(rules, self.default, tok.accessor)
