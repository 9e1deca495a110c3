"""The job template: parsing, the naming contract it enforces, placeholders, the spec hash."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from controllers.settings import Settings
from controllers.templates import (
    OWNER,
    TEMPLATE_META,
    JobTemplate,
    TemplateError,
    TemplateValues,
    UserResources,
    spec_hash,
)
from devstack.fakes import RAW_EXEC_TEMPLATE
from reconciler.clients.errors import ConfigError

BUILTIN = Path(__file__).resolve().parents[2] / "controllers/templates/core-hmi.docker.json"


def values(user: str = "ada", **overrides: Any) -> TemplateValues:
    base: dict[str, Any] = {
        "user": user,
        "core_version": "8.2.0",
        "core_build": "default",
        "hmi_type": "generic",
        "hmi_version": "master",
        "domain": "manticore.example.com",
        "datacenters": ("dc1", "dc2"),
        "variables": {"python": "/usr/bin/python3"},
    }
    base.update(overrides)
    return TemplateValues(**base)


def builtin_json() -> dict[str, Any]:
    return dict(json.loads(BUILTIN.read_text()))


def parse(doc: dict[str, Any]) -> JobTemplate:
    return JobTemplate.parse(json.dumps(doc), variables={"python": "x"})


def test_production_template_uses_manticores_images_and_ports() -> None:
    template = JobTemplate.load()
    assert template.source == "builtin:core-hmi.docker.json"
    job = template.render(values())
    assert job["ID"] == job["Name"] == "core-hmi-ada"
    assert job["Datacenters"] == ["dc1", "dc2"]
    (group,) = job["TaskGroups"]
    tasks = {t["Name"]: t for t in group["Tasks"]}
    assert tasks["core"]["Driver"] == tasks["hmi"]["Driver"] == "docker"
    assert tasks["core"]["Config"]["image"] == "smartdevicelink/manticore-sdl-core:default-8.2.0"
    assert tasks["hmi"]["Config"]["image"] == "smartdevicelink/manticore-hmi-generic:master"
    ports = {p["Label"]: p["To"] for p in group["Networks"][0]["DynamicPorts"]}
    assert ports == {"hmi": 8080, "broker": 9000, "core": 12345, "file": 3001}
    # Nomad's own runtime variables pass through for Nomad to fill in.
    assert tasks["hmi"]["Env"]["BROKER_ADDR"] == "ws://${NOMAD_HOST_ADDR_broker}"
    assert template.roles == {"hmi": "http", "broker": "http", "core": "tcp", "file": "none"}
    assert template.resources == UserResources(cpu=160, memory_mb=325, disk_mb=1030)
    assert job["Meta"]["manticore_owner"] == OWNER
    assert job["Meta"]["manticore_user"] == "ada"


def test_devstack_template_runs_the_fakes() -> None:
    template = JobTemplate.load(RAW_EXEC_TEMPLATE, variables={"python": "/venv/bin/python"})
    job = template.render(values(variables={"python": "/venv/bin/python"}))
    tasks = {t["Name"]: t for t in job["TaskGroups"][0]["Tasks"]}
    assert tasks["core"]["Config"] == {
        "command": "/venv/bin/python",
        "args": ["-m", "devstack.fakes.core", "--user", "ada"],
    }
    assert tasks["hmi"]["Config"]["args"][-2:] == ["--core", "${NOMAD_ADDR_core}"]
    assert template.resources == UserResources(cpu=150, memory_mb=128, disk_mb=50)


def test_every_service_follows_the_naming_contract() -> None:
    job = JobTemplate.load().render(values("bob"))
    services = job["TaskGroups"][0]["Services"]
    for svc in services:
        role = svc["Meta"]["manticore_role"]
        route = svc["Meta"]["manticore_route"]
        assert svc["Name"] == f"core-hmi-bob-{role}"
        assert svc["Meta"]["manticore_user"] == "bob"
        assert svc["Tags"] == ["manticore", f"route-{route}"]
        assert svc["Checks"]
        if route in ("http", "tcp"):
            assert route in [c["Type"] for c in svc["Checks"]]


def test_the_hash_names_the_rendered_spec() -> None:
    template = JobTemplate.load()
    a = template.render(values("ada"))
    assert a == template.render(values("ada")), "rendering is deterministic"
    assert a["Meta"][TEMPLATE_META] == spec_hash(a)
    b = template.render(values("ada", core_version="9.0.0"))
    assert b["Meta"][TEMPLATE_META] != a["Meta"][TEMPLATE_META]
    edited = builtin_json()
    edited["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"]["CPU"] = 200
    c = parse(edited).render(values("ada"))
    assert c["Meta"][TEMPLATE_META] != a["Meta"][TEMPLATE_META]


def test_values_cannot_break_out_of_their_string() -> None:
    template = JobTemplate.load()
    job = template.render(values(domain='x", "Evil": "1'))
    assert job["Meta"]["manticore_domain"] == 'x", "Evil": "1'
    assert "Evil" not in job


def test_bare_job_object_is_accepted() -> None:
    assert parse(builtin_json()["Job"]).roles == parse(builtin_json()).roles


def _broken(edit: Any) -> dict[str, Any]:
    doc = copy.deepcopy(builtin_json())
    edit(doc["Job"])
    return doc


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda j: j.update(ID="other-{{user}}"), '"ID" must be "{{job_id}}"'),
        (lambda j: j["Meta"].update(x="{{nope}}"), "unknown placeholder {{nope}}"),
        (lambda j: j["Meta"].update(x="{{var.missing}}"), "'missing' is not set"),
        (lambda j: j["Meta"].update(x="a-{{datacenters}}"), "is a list"),
        (lambda j: j["TaskGroups"].append(j["TaskGroups"][0]), "exactly one task group"),
        (lambda j: j["TaskGroups"][0].update(Count=2), '"Count" must be 1'),
        (lambda j: j["TaskGroups"][0]["Tasks"][0].pop("Driver"), "has no Driver"),
        (lambda j: j["TaskGroups"][0]["Services"].pop(0), "missing service role 'hmi'"),
        (
            lambda j: j["TaskGroups"][0]["Services"][0].update(Name="hmi-{{user}}"),
            "Name must be",
        ),
        (
            lambda j: j["TaskGroups"][0]["Services"][1]["Meta"].update(manticore_user="x"),
            "Meta.manticore_user must be",
        ),
        (
            lambda j: j["TaskGroups"][0]["Services"][1]["Meta"].update(manticore_route="udp"),
            "must be http|tcp|none",
        ),
        (
            lambda j: j["TaskGroups"][0]["Services"][2].update(Tags=["manticore"]),
            "must include 'route-tcp'",
        ),
        (lambda j: j["TaskGroups"][0]["Services"][2].update(Checks=[]), "needs a health check"),
        (
            lambda j: j["TaskGroups"][0]["Services"][0]["Checks"][0].update(Type="tcp"),
            "a http route needs a http check",
        ),
        (
            lambda j: j["TaskGroups"][0]["Services"].append(j["TaskGroups"][0]["Services"][0]),
            "defined twice",
        ),
    ],
)
def test_template_errors_are_clear(edit: Any, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("(", r"\(").replace("{", r"\{")):
        parse(_broken(edit))


def test_unreadable_or_invalid_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        JobTemplate.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        JobTemplate.load(bad)
    bad.write_text('{"Job": {"ID": "x"}}')
    with pytest.raises(ConfigError, match="Nomad's JSON job format"):
        JobTemplate.load(bad)


def test_user_id_length_fits_service_names() -> None:
    template = JobTemplate.load()
    assert template.max_user_id_length == 63 - len("core-hmi-") - len("-broker")


def test_job_vars_setting() -> None:
    s = Settings.from_env({"MANTICORE_JOB_VARS": "python=/usr/bin/python3, region=eu=1"})
    assert s.jobs.variables == {"python": "/usr/bin/python3", "region": "eu=1"}
    with pytest.raises(ConfigError, match="MANTICORE_JOB_VARS"):
        Settings.from_env({"MANTICORE_JOB_VARS": "novalue"})
