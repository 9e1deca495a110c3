"""A task's runtime environment (``NOMAD_*`` variables) and ``${...}`` interpolation.

This is how tasks of one group find each other: every task sees every group port as
``NOMAD_PORT_<label>``/``NOMAD_ADDR_<label>``, so an HMI task can reach its core task. The same
interpolation applies to driver config, env values and service definitions.
"""

from __future__ import annotations

import os
import re
from typing import Any

_VAR = re.compile(r"\$\{([^}]+)\}")
_ENV_KEY = re.compile(r"[^A-Za-z0-9_]")


def node_value(key: str, node: dict[str, Any]) -> str | None:
    fixed = {
        "node.unique.id": node["ID"],
        "node.unique.name": node["Name"],
        "node.datacenter": node["Datacenter"],
        "node.class": node["NodeClass"],
        "node.pool": node["NodePool"],
        "node.region": "global",
    }
    if key in fixed:
        return str(fixed[key])
    if key.startswith("attr."):
        return node["Attributes"].get(key[5:])
    if key.startswith("meta."):
        return node["Meta"].get(key[5:])
    return None


def interpolate(text: str, env: dict[str, str], node: dict[str, Any] | None) -> str:
    """Replace ``${VAR}``, ``${env.VAR}``, ``${node.*}``, ``${attr.*}``, ``${meta.*}``."""
    if "${" not in text:
        return text

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key in env:
            return env[key]
        if key.startswith("env.") and key[4:] in env:
            return env[key[4:]]
        if node is not None:
            value = node_value(key, node)
            if value is not None:
                return value
        return m.group(0)

    return _VAR.sub(sub, text)


def interpolate_any(value: Any, env: dict[str, str], node: dict[str, Any] | None) -> Any:
    if isinstance(value, str):
        return interpolate(value, env, node)
    if isinstance(value, list):
        return [interpolate_any(v, env, node) for v in value]
    if isinstance(value, dict):
        return {k: interpolate_any(v, env, node) for k, v in value.items()}
    return value


def port_env(alloc: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for p in alloc["AllocatedResources"]["Shared"]["Ports"] or []:
        label = _ENV_KEY.sub("_", p["Label"])
        ip, value = p["HostIP"], p["Value"]
        inside = p.get("To") or value
        env[f"NOMAD_IP_{label}"] = ip
        env[f"NOMAD_PORT_{label}"] = str(inside)
        env[f"NOMAD_ADDR_{label}"] = f"{ip}:{inside}"
        env[f"NOMAD_HOST_IP_{label}"] = ip
        env[f"NOMAD_HOST_PORT_{label}"] = str(value)
        env[f"NOMAD_HOST_ADDR_{label}"] = f"{ip}:{value}"
        env[f"NOMAD_ALLOC_IP_{label}"] = ip
        env[f"NOMAD_ALLOC_PORT_{label}"] = str(inside)
        env[f"NOMAD_ALLOC_ADDR_{label}"] = f"{ip}:{inside}"
    return env


def port_map(task: dict[str, Any]) -> dict[str, int]:
    """The docker driver's deprecated ``port_map`` (label -> container port), if any.

    HCL1 decodes the block to a list of maps, JSON clients send either form.
    """
    if task.get("Driver") != "docker":
        return {}
    raw = (task.get("Config") or {}).get("port_map")
    items = raw if isinstance(raw, list) else [raw]
    out: dict[str, int] = {}
    for item in items:
        if isinstance(item, dict):
            for label, port in item.items():
                if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
                    out[str(label)] = int(port)
    return out


def task_network_env(alloc: dict[str, Any], task: dict[str, Any]) -> dict[str, str]:
    """Variables of the deprecated task-level networks, as Nomad's env builder sets them.

    The task's own ports: ``NOMAD_IP_``/``NOMAD_HOST_PORT_``/``NOMAD_ADDR_<label>`` name the host
    side, ``NOMAD_PORT_<label>`` the driver's ``port_map`` port when there is one. Ports of the
    group's other tasks appear as ``NOMAD_{ADDR,IP,PORT}_<task>_<label>``.
    """
    env: dict[str, str] = {}
    mapped = port_map(task)
    for name, res in alloc["AllocatedResources"]["Tasks"].items():
        for net in res.get("Networks") or []:
            ip = net.get("IP", "")
            for p in (net.get("ReservedPorts") or []) + (net.get("DynamicPorts") or []):
                label, value = _ENV_KEY.sub("_", p["Label"]), p["Value"]
                if name == task["Name"]:
                    env[f"NOMAD_IP_{label}"] = ip
                    env[f"NOMAD_HOST_PORT_{label}"] = str(value)
                    env[f"NOMAD_ADDR_{label}"] = f"{ip}:{value}"
                    env[f"NOMAD_PORT_{label}"] = str(mapped.get(p["Label"], value))
                else:
                    other = _ENV_KEY.sub("_", name)
                    env[f"NOMAD_ADDR_{other}_{label}"] = f"{ip}:{value}"
                    env[f"NOMAD_IP_{other}_{label}"] = ip
                    env[f"NOMAD_PORT_{other}_{label}"] = str(value)
    return env


def task_env(
    alloc: dict[str, Any],
    task: dict[str, Any],
    node: dict[str, Any],
    region: str,
    alloc_dir: str,
    task_dir: str,
    inherit: bool,
) -> dict[str, str]:
    """The environment Nomad gives ``task`` of ``alloc`` (raw_exec also inherits the agent's)."""
    job = alloc["Job"]
    group = next(g for g in job["TaskGroups"] if g["Name"] == alloc["TaskGroup"])
    name = alloc["Name"]
    index = name[name.rfind("[") + 1 : -1] if name.endswith("]") else "0"
    env: dict[str, str] = dict(os.environ) if inherit else {}
    res = task["Resources"]
    env.update(
        {
            "NOMAD_ALLOC_ID": alloc["ID"],
            "NOMAD_SHORT_ALLOC_ID": alloc["ID"][:8],
            "NOMAD_ALLOC_NAME": name,
            "NOMAD_ALLOC_INDEX": index,
            "NOMAD_JOB_ID": job["ID"],
            "NOMAD_JOB_NAME": job["Name"],
            "NOMAD_JOB_PARENT_ID": job["ParentID"],
            "NOMAD_GROUP_NAME": group["Name"],
            "NOMAD_TASK_NAME": task["Name"],
            "NOMAD_NAMESPACE": job["Namespace"],
            "NOMAD_REGION": region,
            "NOMAD_DC": node["Datacenter"],
            "NOMAD_ALLOC_DIR": os.path.join(alloc_dir, "alloc"),
            "NOMAD_TASK_DIR": os.path.join(task_dir, "local"),
            "NOMAD_SECRETS_DIR": os.path.join(task_dir, "secrets"),
            "NOMAD_CPU_LIMIT": str(res["CPU"]),
            "NOMAD_CPU_CORES": "",
            "NOMAD_MEMORY_LIMIT": str(res["MemoryMB"]),
            "NOMAD_MEMORY_MAX_LIMIT": str(res["MemoryMaxMB"] or res["MemoryMB"]),
        }
    )
    env.update(port_env(alloc))
    env.update(task_network_env(alloc, task))
    meta: dict[str, str] = {}
    for source in (job.get("Meta"), group.get("Meta"), task.get("Meta")):
        meta.update(source or {})
    for key, value in meta.items():
        clean = _ENV_KEY.sub("_", key)
        env[f"NOMAD_META_{clean}"] = value
        env[f"NOMAD_META_{clean.upper()}"] = value
    for key, value in (task.get("Env") or {}).items():
        env[key] = interpolate(value, env, node)
    return env
