"""``structs.JobDiff``: what ``POST /v1/job/<id>/plan`` with ``Diff: true`` shows.

Nomad diffs the stored job against the submitted one field by field and object by object, then
the scheduler annotates the result (``scheduler/annotate.go``). The shape reproduced here:

* Every level has a ``Type``: ``Added``, ``Deleted``, ``Edited`` or ``None``.
* ``Fields`` are the *primitive* fields of that level, flattened the way Nomad's ``flatmap``
  does (maps of scalars become ``Meta[key]``/``Env[KEY]``, nested objects and lists are left to
  ``Objects``); at job, group and task level only changed fields are listed.
* ``Objects`` are named like Nomad's (``Datacenters``, ``Constraint``, ``Affinity``,
  ``RestartPolicy``, ``ReschedulePolicy``, ``EphemeralDisk``, ``Update``, ``Network`` with
  ``Static Port``/``Dynamic Port``, ``Service`` with ``Tags``/``CanaryTags``/``Check``,
  ``Config``, ``Resources``, ``LogConfig``, ``Template``, ``Artifact``, ``Periodic``, ...); a
  changed object lists all its fields, the unchanged ones with type ``None`` (the plan endpoint
  asks for a *contextual* diff). Sets (datacenters, tags, constraints, networks) are compared
  as sets, so a changed member shows as one deleted and one added object.
* Services are matched across versions by name, port label and position, as Nomad scores
  them; task groups and tasks by name; everything sorted as Nomad sorts it.
* Annotations: a group's ``Count`` field carries ``forces create``/``forces destroy``; a task
  carries ``forces create``/``forces destroy`` when its group is added or removed, else
  ``forces in-place update`` when only ``KillTimeout``, services, constraints, affinities,
  spreads or log settings changed, ``forces create/destroy update`` otherwise; a group's
  ``Updates`` map holds the plan's non-zero desired changes (``create``, ``destroy``,
  ``migrate``, ``canary``, ``ignore``, ``in-place update``, ``create/destroy update``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

ADDED, DELETED, EDITED, NONE = "Added", "Deleted", "Edited", "None"
_TYPE_RANK = {EDITED: 0, ADDED: 1, DELETED: 2, NONE: 3}

# Maps of scalars that flatten into ``Name[key]`` fields even among primitive fields.
_MAP_FIELDS = frozenset(
    {"Meta", "Env", "CanaryMeta", "TaggedAddresses", "GetterOptions", "GetterHeaders"}
)
_JOB_FILTER = frozenset(
    {
        "ID",
        "Status",
        "StatusDescription",
        "Version",
        "Stable",
        "CreateIndex",
        "ModifyIndex",
        "JobModifyIndex",
        "Update",
        "SubmitTime",
        "NomadTokenID",
        "VaultToken",
    }
)
# structs.DesiredUpdates counts -> the keys of TaskGroupDiff.Updates.
UPDATE_KEYS = {
    "Ignore": "ignore",
    "Place": "create",
    "Stop": "destroy",
    "Migrate": "migrate",
    "Canary": "canary",
    "InPlaceUpdate": "in-place update",
    "DestructiveUpdate": "create/destroy update",
}
FORCES_CREATE = "forces create"
FORCES_DESTROY = "forces destroy"
FORCES_INPLACE = "forces in-place update"
FORCES_DESTRUCTIVE = "forces create/destroy update"

Flat = dict[str, str]
Obj = dict[str, Any]


def _go(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def flatten(obj: Any, skip: Iterable[str] = (), primitive_only: bool = True) -> Flat:
    """Nomad's ``flatmap.Flatten`` over an API-shaped dict."""
    out: Flat = {}
    if not isinstance(obj, dict):
        return out
    skipped = set(skip)

    def walk(prefix: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}[{k}]" if prefix else str(k), v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            out[prefix] = _go(value)

    for key, value in obj.items():
        if key in skipped or value is None:
            continue
        if primitive_only:
            if isinstance(value, dict):
                if key in _MAP_FIELDS:
                    for k, v in value.items():
                        if not isinstance(v, (dict, list)) and v is not None:
                            out[f"{key}[{k}]"] = _go(v)
                continue
            if isinstance(value, list):
                continue
            out[key] = _go(value)
        else:
            walk(key, value)
    return out


def _field(old: str | None, new: str | None, name: str, contextual: bool) -> Obj | None:
    old, new = old or "", new or ""
    if old == new:
        if not contextual:
            return None
        kind = NONE
    elif not old:
        kind = ADDED
    elif not new:
        kind = DELETED
    else:
        kind = EDITED
    return {"Annotations": None, "Name": name, "New": new, "Old": old, "Type": kind}


def field_diffs(old: Flat, new: Flat, contextual: bool) -> list[Obj]:
    out = []
    for key in set(old) | set(new):
        diff = _field(old.get(key), new.get(key), key, contextual)
        if diff is not None:
            out.append(diff)
    return sorted(out, key=lambda f: (f["Name"], f["Old"], f["New"]))


def _sort_objects(objects: list[Obj]) -> list[Obj]:
    return sorted(
        objects,
        key=lambda o: (
            o["Name"],
            _TYPE_RANK[o["Type"]],
            len(o["Fields"] or ()),
            len(o["Objects"] or ()),
        ),
    )


def _object(name: str, kind: str, fields: list[Obj], objects: list[Obj]) -> Obj:
    return {
        "Fields": fields or None,
        "Name": name,
        "Objects": _sort_objects(objects) or None,
        "Type": kind,
    }


def _kind(old: Any, new: Any) -> str:
    return ADDED if old is None else DELETED if new is None else EDITED


def primitive_object_diff(
    old: Any, new: Any, name: str, contextual: bool, skip: Iterable[str] = ()
) -> Obj | None:
    """An object's primitive fields; ``None`` when nothing changed."""
    fields = field_diffs(flatten(old, skip), flatten(new, skip), contextual)
    kinds = {f["Type"] for f in fields}
    if EDITED in kinds or {ADDED, DELETED} <= kinds:
        kind = EDITED
    elif ADDED in kinds:
        kind = ADDED
    elif DELETED in kinds:
        kind = DELETED
    else:
        return None
    return _object(name, kind, fields, [])


def _key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def primitive_object_set_diff(
    old: list[Any] | None, new: list[Any] | None, name: str, contextual: bool
) -> list[Obj]:
    old_set = {_key(o): o for o in old or []}
    new_set = {_key(o): o for o in new or []}
    out = []
    for k, o in old_set.items():
        diff = primitive_object_diff(o, new_set.get(k), name, contextual)
        if diff is not None:
            out.append(diff)
    for k, n in new_set.items():
        if k not in old_set:
            diff = primitive_object_diff(None, n, name, contextual)
            if diff is not None:
                out.append(diff)
    return out


def string_set_diff(
    old: list[Any] | None, new: list[Any] | None, name: str, contextual: bool
) -> Obj | None:
    a, b = {_go(x) for x in old or []}, {_go(x) for x in new or []}
    if a == b and not contextual:
        return None
    fields = [_field(x, "", name, contextual) for x in a - b]
    fields += [_field(x, x, name, contextual) for x in a & b] if contextual else []
    fields += [_field("", x, name, contextual) for x in b - a]
    present = sorted((f for f in fields if f), key=lambda f: (f["Name"], f["Old"], f["New"]))
    added, removed = bool(b - a), bool(a - b)
    if added and removed:
        kind = EDITED
    elif added:
        kind = ADDED
    elif removed:
        kind = DELETED
    elif not present:
        return None
    else:
        kind = NONE
    return _object(name, kind, present, [])


def _config_diff(old: Any, new: Any, contextual: bool) -> Obj | None:
    if old == new or (not old and not new):
        return None
    kind = ADDED if not old else DELETED if not new else EDITED
    fields = field_diffs(
        flatten(old or {}, primitive_only=False),
        flatten(new or {}, primitive_only=False),
        contextual,
    )
    return _object("Config", kind, fields, [])


def _port_diffs(
    old: list[Any] | None, new: list[Any] | None, dynamic: bool, contextual: bool
) -> list[Obj]:
    name = "Dynamic Port" if dynamic else "Static Port"
    skip = ("Value", "IgnoreCollision") if dynamic else ()
    a = {p.get("Label"): p for p in old or []}
    b = {p.get("Label"): p for p in new or []}
    out = []
    for label in list(a) + [lbl for lbl in b if lbl not in a]:
        diff = primitive_object_diff(a.get(label), b.get(label), name, contextual, skip)
        if diff is not None:
            out.append(diff)
    return out


def _network_diff(old: Obj | None, new: Obj | None, contextual: bool) -> Obj | None:
    if old == new:
        return None
    skip = ("Device", "CIDR", "IP", "MBits")
    fields = field_diffs(flatten(old, skip), flatten(new, skip), contextual)
    objects = _port_diffs(
        (old or {}).get("ReservedPorts"), (new or {}).get("ReservedPorts"), False, contextual
    )
    objects += _port_diffs(
        (old or {}).get("DynamicPorts"), (new or {}).get("DynamicPorts"), True, contextual
    )
    dns = (
        primitive_object_diff(_dns(old), _dns(new), "DNS", contextual)
        if (old or {}).get("DNS") != (new or {}).get("DNS")
        else None
    )
    if dns is not None:
        objects.append(dns)
    return _object("Network", _kind(old, new), fields, objects)


def _dns(net: Obj | None) -> Obj | None:
    dns = (net or {}).get("DNS")
    if not dns:
        return None
    return {k: ",".join(dns[k]) for k in ("Servers", "Searches", "Options") if dns.get(k)}


def network_diffs(old: list[Any] | None, new: list[Any] | None, contextual: bool) -> list[Obj]:
    """Networks as a set: a changed network is one deleted and one added ``Network``."""
    a = {_key(n): n for n in old or []}
    b = {_key(n): n for n in new or []}
    out = []
    for k, n in a.items():
        if k not in b:
            diff = _network_diff(n, None, contextual)
            if diff:
                out.append(diff)
    for k, n in b.items():
        if k not in a:
            diff = _network_diff(None, n, contextual)
            if diff:
                out.append(diff)
    return out


def _resources_diff(old: Obj | None, new: Obj | None, contextual: bool) -> Obj | None:
    if old == new:
        return None
    fields = field_diffs(flatten(old), flatten(new), contextual)
    objects = network_diffs((old or {}).get("Networks"), (new or {}).get("Networks"), contextual)
    for dev_old, dev_new in _pairs((old or {}).get("Devices"), (new or {}).get("Devices")):
        diff = primitive_object_diff(dev_old, dev_new, "Device", contextual)
        if diff:
            objects.append(diff)
    if not fields and not objects:
        return None
    kind = _kind(old, new)
    if kind == EDITED and all(f["Type"] == NONE for f in fields) and not objects:
        return None
    return _object("Resources", kind, fields, objects)


def _pairs(old: list[Any] | None, new: list[Any] | None) -> list[tuple[Any, Any]]:
    """Items of two lists matched by ``Name`` (or position when unnamed)."""
    a, b = list(old or []), list(new or [])
    if all(isinstance(x, dict) and "Name" in x for x in a + b):
        by_a = {x["Name"]: x for x in a}
        by_b = {x["Name"]: x for x in b}
        names = list(by_a) + [n for n in by_b if n not in by_a]
        return [(by_a.get(n), by_b.get(n)) for n in names]
    return [
        (a[i] if i < len(a) else None, b[i] if i < len(b) else None)
        for i in range(max(len(a), len(b)))
    ]


def _check_diff(old: Obj | None, new: Obj | None, contextual: bool) -> Obj | None:
    if old == new:
        return None
    fields = field_diffs(flatten(old), flatten(new), contextual)
    objects = []
    old_header, new_header = (old or {}).get("Header") or {}, (new or {}).get("Header") or {}
    if old_header != new_header:
        kind = ADDED if not old_header else DELETED if not new_header else EDITED
        header_fields = field_diffs(
            flatten(old_header, primitive_only=False),
            flatten(new_header, primitive_only=False),
            contextual,
        )
        objects.append(_object("Header", kind, header_fields, []))
    restart = primitive_object_diff(
        (old or {}).get("CheckRestart"), (new or {}).get("CheckRestart"), "CheckRestart", contextual
    )
    if restart:
        objects.append(restart)
    return _object("Check", _kind(old, new), fields, objects)


def _service_diff(old: Obj | None, new: Obj | None, contextual: bool) -> Obj | None:
    if old == new:
        return None
    fields = field_diffs(flatten(old), flatten(new), contextual)
    objects = []
    for name in ("CanaryTags", "Tags"):
        diff = string_set_diff((old or {}).get(name), (new or {}).get(name), name, contextual)
        if diff:
            objects.append(diff)
    for check_old, check_new in _pairs((old or {}).get("Checks"), (new or {}).get("Checks")):
        diff = _check_diff(check_old, check_new, contextual)
        if diff:
            objects.append(diff)
    return _object("Service", _kind(old, new), fields, objects)


def service_diffs(old: list[Any] | None, new: list[Any] | None, contextual: bool) -> list[Obj]:
    """Services matched as Nomad scores them: name 3, port label 2, same position 1 (> 2)."""
    a, b = list(old or []), list(new or [])
    if len(a) == 1 and len(b) == 1:
        diff = _service_diff(a[0], b[0], contextual)
        return [diff] if diff else []
    matched: dict[int, int] = {}
    out = []
    for i, svc in enumerate(a):
        best, best_score = -1, 0
        for j, cand in enumerate(b):
            if j in matched:
                continue
            score = (
                (1 if i == j else 0)
                + (2 if svc.get("PortLabel") == cand.get("PortLabel") else 0)
                + (3 if svc.get("Name") == cand.get("Name") else 0)
            )
            if score > 2 and score > best_score:
                best, best_score = j, score
        if best < 0:
            diff = _service_diff(svc, None, contextual)
        else:
            matched[best] = i
            diff = _service_diff(svc, b[best], contextual)
        if diff:
            out.append(diff)
    for j, svc in enumerate(b):
        if j not in matched:
            diff = _service_diff(None, svc, contextual)
            if diff:
                out.append(diff)
    return out


def _optional(out: list[Obj], diff: Obj | None) -> None:
    if diff is not None:
        out.append(diff)


def task_diff(old: Obj | None, new: Obj | None, contextual: bool) -> Obj:
    name = (new or old or {}).get("Name", "")
    o, n = old or {}, new or {}
    fields = field_diffs(
        flatten(old, ("Name", "Config")) if old is not None else {},
        flatten(new, ("Name", "Config")) if new is not None else {},
        False,
    )
    objects: list[Obj] = []
    objects += primitive_object_set_diff(
        o.get("Constraints"), n.get("Constraints"), "Constraint", contextual
    )
    objects += primitive_object_set_diff(
        o.get("Affinities"), n.get("Affinities"), "Affinity", contextual
    )
    _optional(objects, _config_diff(o.get("Config"), n.get("Config"), contextual))
    _optional(objects, _resources_diff(o.get("Resources"), n.get("Resources"), contextual))
    for key, label in (
        ("LogConfig", "LogConfig"),
        ("DispatchPayload", "DispatchPayload"),
        ("Vault", "Vault"),
        ("Consul", "Consul"),
        ("Lifecycle", "Lifecycle"),
    ):
        _optional(objects, primitive_object_diff(o.get(key), n.get(key), label, contextual))
    objects += primitive_object_set_diff(
        o.get("Artifacts"), n.get("Artifacts"), "Artifact", contextual
    )
    objects += service_diffs(o.get("Services"), n.get("Services"), contextual)
    for t_old, t_new in _pairs(o.get("Templates"), n.get("Templates")):
        _optional(objects, primitive_object_diff(t_old, t_new, "Template", contextual))
    kind = _kind(old, new) if old is None or new is None else (EDITED if old != new else NONE)
    return {
        "Annotations": None,
        "Fields": fields or None,
        "Name": name,
        "Objects": _sort_objects(objects) or None,
        "Type": kind,
    }


_GROUP_OPTIONAL = ("ShutdownDelay", "StopAfterClientDisconnect", "MaxClientDisconnect")


def group_diff(old: Obj | None, new: Obj | None, contextual: bool) -> Obj:
    name = (new or old or {}).get("Name", "")
    o, n = old or {}, new or {}
    old_flat = flatten(old, ("Name",)) if old is not None else None
    new_flat = flatten(new, ("Name",)) if new is not None else None
    if old_flat is not None and new_flat is not None:
        for key in _GROUP_OPTIONAL:
            old_flat.setdefault(key, "")
            new_flat.setdefault(key, "")
    fields = field_diffs(old_flat or {}, new_flat or {}, False)
    objects: list[Obj] = []
    objects += primitive_object_set_diff(
        o.get("Constraints"), n.get("Constraints"), "Constraint", contextual
    )
    objects += primitive_object_set_diff(
        o.get("Affinities"), n.get("Affinities"), "Affinity", contextual
    )
    for key in ("RestartPolicy", "ReschedulePolicy", "EphemeralDisk", "Consul"):
        _optional(objects, primitive_object_diff(o.get(key), n.get(key), key, contextual))
    _optional(
        objects,
        primitive_object_diff(o.get("Update"), n.get("Update"), "Update", contextual, ("Stagger",)),
    )
    _optional(
        objects,
        primitive_object_diff(o.get("Disconnect"), n.get("Disconnect"), "Disconnect", contextual),
    )
    objects += network_diffs(o.get("Networks"), n.get("Networks"), contextual)
    _optional(
        objects, primitive_object_diff(o.get("Scaling"), n.get("Scaling"), "Scaling", contextual)
    )
    objects += service_diffs(o.get("Services"), n.get("Services"), contextual)
    tasks = _named_pairs(o.get("Tasks"), n.get("Tasks"))
    kind = _kind(old, new) if old is None or new is None else (EDITED if old != new else NONE)
    return {
        "Fields": fields or None,
        "Name": name,
        "Objects": _sort_objects(objects) or None,
        "Tasks": [task_diff(a, b, contextual) for a, b in tasks] or None,
        "Type": kind,
        "Updates": None,
    }


def _named_pairs(old: list[Any] | None, new: list[Any] | None) -> list[tuple[Any, Any]]:
    a = {x["Name"]: x for x in old or []}
    b = {x["Name"]: x for x in new or []}
    return [(a.get(name), b.get(name)) for name in sorted(set(a) | set(b))]


def job_diff(old: Obj | None, new: Obj, contextual: bool = True) -> Obj:
    """The diff of the stored job ``old`` (``None`` if new) against the submitted ``new``."""
    o = old or {}
    fields = field_diffs(flatten(old, _JOB_FILTER) if old else {}, flatten(new, _JOB_FILTER), False)
    objects: list[Obj] = []
    dcs = string_set_diff(o.get("Datacenters"), new.get("Datacenters"), "Datacenters", contextual)
    if dcs is not None and dcs["Type"] != NONE:
        objects.append(dcs)
    objects += primitive_object_set_diff(
        o.get("Constraints"), new.get("Constraints"), "Constraint", contextual
    )
    objects += primitive_object_set_diff(
        o.get("Affinities"), new.get("Affinities"), "Affinity", contextual
    )
    groups = [
        group_diff(a, b, contextual)
        for a, b in _named_pairs(o.get("TaskGroups"), new["TaskGroups"])
    ]
    periodic = _with_sets(
        o.get("Periodic"), new.get("Periodic"), "Periodic", ("Specs",), contextual
    )
    _optional(objects, periodic)
    param = _with_sets(
        o.get("ParameterizedJob"),
        new.get("ParameterizedJob"),
        "ParameterizedJob",
        ("MetaRequired", "MetaOptional"),
        contextual,
    )
    _optional(objects, param)
    if old is None:
        kind = ADDED
    elif (
        any(f["Type"] != NONE for f in fields)
        or any(x["Type"] != NONE for x in objects)
        or any(g["Type"] != NONE for g in groups)
    ):
        kind = EDITED
    else:
        kind = NONE
    return {
        "Fields": fields or None,
        "ID": new["ID"],
        "Objects": _sort_objects(objects) or None,
        "TaskGroups": groups or None,
        "Type": kind,
    }


def _with_sets(
    old: Obj | None, new: Obj | None, name: str, sets: tuple[str, ...], contextual: bool
) -> Obj | None:
    if old == new:
        return None
    fields = field_diffs(flatten(old), flatten(new), contextual)
    objects = []
    for key in sets:
        diff = string_set_diff((old or {}).get(key), (new or {}).get(key), key, contextual)
        if diff is not None and diff["Type"] != NONE:
            objects.append(diff)
    return _object(name, _kind(old, new), fields, objects)


# -- annotations (scheduler/annotate.go) -------------------------------------------------------


def annotate(diff: Obj, desired: dict[str, dict[str, int]]) -> Obj:
    """The scheduler's annotations on a job diff, from the plan's desired updates."""
    for group in diff["TaskGroups"] or []:
        counts = desired.get(group["Name"]) or {}
        updates = {UPDATE_KEYS[k]: v for k, v in counts.items() if v and k in UPDATE_KEYS}
        group["Updates"] = updates or None
        for f in group["Fields"] or []:
            if f["Name"] == "Count":
                old, new = int(f["Old"] or 0), int(f["New"] or 0)
                if old != new:
                    f["Annotations"] = [FORCES_CREATE if old < new else FORCES_DESTROY]
        for task in group["Tasks"] or []:
            _annotate_task(task, group)
    return diff


def _annotate_task(task: Obj, group: Obj) -> None:
    if task["Type"] == NONE:
        return
    if group["Type"] in (ADDED, DELETED) and task["Type"] in (ADDED, DELETED):
        task["Annotations"] = [FORCES_CREATE if task["Type"] == ADDED else FORCES_DESTROY]
        return
    destructive = any(f["Name"] != "KillTimeout" for f in task["Fields"] or [])
    if not destructive:
        for obj in task["Objects"] or []:
            if obj["Name"] in ("Service", "Constraint", "Affinity", "Spread"):
                continue
            if obj["Name"] == "LogConfig":
                if any(f["Name"] == "Disabled" for f in obj["Fields"] or []):
                    destructive = True
                    break
                continue
            destructive = True
            break
    task["Annotations"] = [FORCES_DESTRUCTIVE if destructive else FORCES_INPLACE]
