"""Nomad ACL policies: parsing rules (HCL or JSON) and deciding what a token may do.

Rules follow Nomad's ``acl/policy.go``: ``namespace "<name or glob>" { policy, capabilities }``
expanded to namespace capabilities (``read``, ``write``, ``scale``, ``deny``), and ``node``,
``agent``, ``operator`` blocks with ``read``/``write``/``deny``. A token's :class:`ACL` merges its
policies: capabilities add up, ``deny`` wins, an exact namespace rule beats a glob and the
closest glob wins. Pure: text in, decisions out.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any

import hcl2

_OPTIONS = hcl2.SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)

READ_CAPS = (
    "list-jobs",
    "parse-job",
    "read-job",
    "csi-list-volume",
    "csi-read-volume",
    "read-job-scaling",
    "list-scaling-policies",
    "read-scaling-policy",
)
WRITE_CAPS = (
    *READ_CAPS,
    "scale-job",
    "submit-job",
    "dispatch-job",
    "read-logs",
    "read-fs",
    "alloc-exec",
    "alloc-lifecycle",
    "csi-mount-volume",
    "csi-write-volume",
    "submit-recommendation",
)
SCALE_CAPS = ("list-scaling-policies", "read-scaling-policy", "read-job-scaling", "scale-job")
NAMESPACE_CAPS = frozenset(
    {
        *WRITE_CAPS,
        "deny",
        "sentinel-override",
        "alloc-node-exec",
        "csi-register-plugin",
        "list-scaling-policies",
        "read-scaling-policy",
        "host-volume-create",
        "host-volume-register",
        "host-volume-read",
        "host-volume-write",
        "host-volume-delete",
    }
)
_POLICY_CAPS = {"deny": ("deny",), "read": READ_CAPS, "write": WRITE_CAPS, "scale": SCALE_CAPS}
_LEVELS = {"deny": -1, "": 0, "read": 1, "write": 2}
_COARSE = ("node", "agent", "operator", "quota", "plugin", "host_volume")


class PolicyError(ValueError):
    """Rules that do not parse or name an unknown policy or capability."""


@dataclass
class Policy:
    namespaces: dict[str, frozenset[str]] = field(default_factory=dict)
    coarse: dict[str, str] = field(default_factory=dict)  # node/agent/operator -> level


def _blocks(value: Any) -> list[tuple[str, dict[str, Any]]]:
    """``namespace "x" {...}`` in python-hcl2's or Nomad's JSON shapes, as (label, body)."""
    items = value if isinstance(value, list) else [value]
    out: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        if not isinstance(item, dict):
            raise PolicyError("failed to parse rules: namespace blocks need a name")
        for label, body in item.items():
            for b in body if isinstance(body, list) else [body]:
                if not isinstance(b, dict):
                    raise PolicyError("failed to parse rules: namespace blocks need a body")
                out.append((str(label), b))
    return out


def _single(value: Any) -> dict[str, Any]:
    items = value if isinstance(value, list) else [value]
    merged: dict[str, Any] = {}
    for item in items:
        if isinstance(item, dict):
            merged.update(item)
    return merged


def parse_rules(rules: str) -> Policy:
    """Parse a policy's ``Rules`` (HCL or JSON); :class:`PolicyError` with Nomad's text."""
    text = rules.strip()
    try:
        raw = (
            json.loads(text)
            if text.startswith("{")
            else hcl2.loads(text, serialization_options=_OPTIONS)
        )
    except Exception as exc:  # lark or json errors
        raise PolicyError(f"failed to parse rules: {exc}") from exc
    if not isinstance(raw, dict):
        raise PolicyError("failed to parse rules: not an object")
    policy = Policy()
    for name, body in _blocks(raw.get("namespace", [])):
        level = str(body.get("policy", "") or "")
        if level not in _POLICY_CAPS and level != "":
            raise PolicyError(f'Invalid namespace policy: "{level}"')
        caps = set(_POLICY_CAPS.get(level, ()))
        for cap in body.get("capabilities") or []:
            if cap not in NAMESPACE_CAPS:
                raise PolicyError(f"Invalid namespace capability '{cap}'")
            caps.add(cap)
        policy.namespaces[name] = frozenset(caps)
    for kind in _COARSE:
        if kind in raw:
            level = str(_single(raw[kind]).get("policy", "") or "")
            if level not in _LEVELS:
                raise PolicyError(f'Invalid {kind.replace("_", " ")} policy: "{level}"')
            policy.coarse[kind] = level
    return policy


@dataclass
class ACL:
    """What one token may do: the merge of its policies (or everything, for management)."""

    management: bool = False
    namespaces: dict[str, frozenset[str]] = field(default_factory=dict)
    coarse: dict[str, int] = field(default_factory=dict)

    @classmethod
    def merge(cls, policies: list[Policy], management: bool = False) -> ACL:
        acl = cls(management=management)
        for p in policies:
            for name, caps in p.namespaces.items():
                acl.namespaces[name] = acl.namespaces.get(name, frozenset()) | caps
            for kind, level in p.coarse.items():
                old = acl.coarse.get(kind, 0)
                new = _LEVELS[level]
                acl.coarse[kind] = -1 if -1 in (old, new) else max(old, new)
        return acl

    def _ns_caps(self, namespace: str) -> frozenset[str]:
        if namespace in self.namespaces:
            return self.namespaces[namespace]
        # The closest glob: the fewest characters matched by wildcards.
        best: tuple[int, frozenset[str]] | None = None
        for pattern, caps in self.namespaces.items():
            if fnmatch.fnmatchcase(namespace, pattern):
                score = len(namespace) - len(pattern.replace("*", ""))
                if best is None or score < best[0]:
                    best = (score, caps)
        return best[1] if best else frozenset()

    def allow_ns(self, namespace: str, *caps: str) -> bool:
        """True if any of ``caps`` is granted in ``namespace`` (and nothing denies it)."""
        if self.management:
            return True
        granted = self._ns_caps(namespace)
        if "deny" in granted:
            return False
        return any(c in granted for c in caps)

    def allow_any_ns(self, *caps: str) -> bool:
        return self.management or any(
            "deny" not in granted and any(c in granted for c in caps)
            for granted in self.namespaces.values()
        )

    def allow(self, kind: str, level: str) -> bool:
        """``node``/``agent``/``operator`` at ``read`` or ``write``."""
        if self.management:
            return True
        have = self.coarse.get(kind, 0)
        return have >= _LEVELS[level] > 0
