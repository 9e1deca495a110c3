"""``POST /v1/jobs/parse``: HCL2 job files to the API's JSON job, as ``nomad job run`` uses it."""

from __future__ import annotations

import httpx
import pytest

from .helpers import SECOND, allocs, register, wait_for

pytestmark = pytest.mark.contract

JOB_FILE = """
job "%(id)s" {
  datacenters = ["dc1"]
  type        = "service"

  meta {
    owner = "manticore"
  }

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  update {
    max_parallel     = 1
    min_healthy_time = "5s"
  }

  group "pair" {
    count = 2

    network {
      port "http" {
        to = 8080
      }
    }

    restart {
      attempts = 1
      delay    = "1s"
    }

    ephemeral_disk {
      size = 20
    }

    service {
      name     = "%(id)s-http"
      port     = "http"
      provider = "nomad"
      tags = ["v1"]

      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "core" {
      driver = "docker"

      config {
        image = "smartdevicelink/manticore-sdl-core:develop"
        ports = ["http"]
      }

      env {
        MODE = "prod"
      }

      resources {
        cpu    = 100
        memory = 64

        network {
          port "broker" {}
        }
      }
    }
  }
}
"""


def _parse(http: httpx.Client, text: str, canonicalize: bool = False) -> httpx.Response:
    return http.post("/v1/jobs/parse", json={"JobHCL": text, "Canonicalize": canonicalize})


def test_parse_maps_the_common_blocks(nomad_http: httpx.Client, job_id: str) -> None:
    resp = _parse(nomad_http, JOB_FILE % {"id": job_id})
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert (job["ID"], job["Name"], job["Type"]) == (job_id, job_id, "service")
    assert job["Datacenters"] == ["dc1"]
    assert job["Meta"] == {"owner": "manticore"}
    assert job["Constraints"][0]["LTarget"] == "${attr.kernel.name}"
    assert job["Constraints"][0]["RTarget"] == "linux"
    assert job["Constraints"][0]["Operand"] == "="
    assert job["Update"]["MaxParallel"] == 1
    assert job["Update"]["MinHealthyTime"] == 5 * SECOND
    group = job["TaskGroups"][0]
    assert (group["Name"], group["Count"]) == ("pair", 2)
    assert group["Networks"][0]["DynamicPorts"] == [{"Label": "http", "To": 8080}]
    assert group["RestartPolicy"]["Attempts"] == 1
    assert group["RestartPolicy"]["Delay"] == SECOND
    assert group["EphemeralDisk"]["SizeMB"] == 20
    service = group["Services"][0]
    assert (service["Name"], service["PortLabel"], service["Tags"]) == (
        f"{job_id}-http",
        "http",
        ["v1"],
    )
    assert service["Provider"] == "nomad"
    check = service["Checks"][0]
    assert (check["Type"], check["Path"], check["Interval"], check["Timeout"]) == (
        "http",
        "/health",
        10 * SECOND,
        2 * SECOND,
    )
    task = group["Tasks"][0]
    assert (task["Name"], task["Driver"]) == ("core", "docker")
    assert task["Config"]["ports"] == ["http"]
    assert task["Env"] == {"MODE": "prod"}
    assert (task["Resources"]["CPU"], task["Resources"]["MemoryMB"]) == (100, 64)
    assert task["Resources"]["Networks"][0]["DynamicPorts"] == [{"Label": "broker"}]


def test_parsed_job_registers_and_runs(nomad_http: httpx.Client, job_id: str) -> None:
    job = _parse(nomad_http, JOB_FILE % {"id": job_id}, canonicalize=True).json()
    assert job["Priority"] == 50
    assert job["Region"] == "global"
    register(nomad_http, job)
    stubs = wait_for(lambda: len(a := allocs(nomad_http, job_id)) == 2 and a)
    full = nomad_http.get(f"/v1/allocation/{stubs[0]['ID']}").json()
    assert full["AllocatedResources"]["Shared"]["Ports"][0]["Label"] == "http"
    assert full["AllocatedResources"]["Tasks"]["core"]["Networks"][0]["DynamicPorts"][0]["Value"]


def test_parameterized_and_periodic_blocks(nomad_http: httpx.Client) -> None:
    text = """
    job "batchy" {
      type = "batch"
      parameterized {
        payload       = "required"
        meta_required = ["user"]
        meta_optional = ["note"]
      }
      group "g" {
        task "t" {
          driver = "raw_exec"
          config {
            command = "/bin/true"
          }
        }
      }
    }
    """
    job = _parse(nomad_http, text).json()
    assert job["ParameterizedJob"] == {
        "Payload": "required",
        "MetaRequired": ["user"],
        "MetaOptional": ["note"],
    }
    periodic = _parse(
        nomad_http,
        text.replace(
            'parameterized {\n        payload       = "required"\n        '
            'meta_required = ["user"]\n        meta_optional = ["note"]\n      }',
            'periodic {\n        cron = "*/5 * * * *"\n        prohibit_overlap = true\n      }',
        ),
    ).json()
    assert periodic["Periodic"]["Spec"] == "*/5 * * * *"
    assert periodic["Periodic"]["SpecType"] == "cron"
    assert periodic["Periodic"]["ProhibitOverlap"] is True


def test_parse_errors_are_400(nomad_http: httpx.Client) -> None:
    empty = nomad_http.post("/v1/jobs/parse", json={"JobHCL": ""})
    assert empty.status_code == 400
    bogus = _parse(nomad_http, 'job "x" {\n  bogus = 1\n  group "g" {}\n}\n')
    assert bogus.status_code == 400
    assert 'An argument named "bogus" is not expected here' in bogus.text
    broken = _parse(nomad_http, 'job "x" {\n  group "g" {\n')
    assert broken.status_code == 400


VARIABLES_FILE = """
variable "image" {
  type        = string
  description = "the container image"
  default     = "nginx:1.27"
}

variable "replicas" {
  type    = number
  default = 1
}

variable "dcs" {
  type    = list(string)
  default = ["dc1"]
}

variable "owner" {
  type = string
}

locals {
  service_name = "${var.owner}-web"
  tier         = var.replicas > 2 ? "large" : "small"
}

job "vars-demo" {
  datacenters = var.dcs

  group "web" {
    count = var.replicas

    meta {
      tier   = local.tier
      node   = "${node.unique.name}"
      pinned = "$${literal}"
    }

    service {
      name     = local.service_name
      provider = "nomad"
    }

    task "server" {
      driver = "docker"

      config {
        image = var.image
        args  = ["--name", upper(var.owner), format("%s:%d", "port", 8080)]
      }

      env {
        IMAGE_TAG = "image is ${var.image}"
        ALLOC     = "${NOMAD_ALLOC_INDEX}"
      }

      template {
        data        = <<EOF
owner = ${var.owner}
EOF
        destination = "local/owner.txt"
      }
    }
  }
}
"""


def _parse_vars(http: httpx.Client, text: str, variables: str) -> httpx.Response:
    return http.post("/v1/jobs/parse", json={"JobHCL": text, "Variables": variables})


def test_variables_defaults_and_locals_are_evaluated(nomad_http: httpx.Client) -> None:
    resp = _parse_vars(nomad_http, VARIABLES_FILE, 'owner = "ops"\n')
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["Datacenters"] == ["dc1"]
    group = job["TaskGroups"][0]
    assert group["Count"] == 1
    assert group["Meta"] == {"tier": "small", "node": "${node.unique.name}", "pinned": "${literal}"}
    assert group["Services"][0]["Name"] == "ops-web"
    task = group["Tasks"][0]
    assert task["Config"]["image"] == "nginx:1.27"
    assert task["Config"]["args"] == ["--name", "OPS", "port:8080"]
    assert task["Env"] == {"IMAGE_TAG": "image is nginx:1.27", "ALLOC": "${NOMAD_ALLOC_INDEX}"}
    assert task["Templates"][0]["EmbeddedTmpl"] == "owner = ops\n"


def test_request_variables_override_defaults_with_their_types(nomad_http: httpx.Client) -> None:
    assigned = 'owner = "web"\nimage = "redis:7"\nreplicas = "3"\ndcs = ["dc1", "dc2"]\n'
    resp = _parse_vars(nomad_http, VARIABLES_FILE, assigned)
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["Datacenters"] == ["dc1", "dc2"]
    group = job["TaskGroups"][0]
    assert group["Count"] == 3  # the string "3" converted to the declared number type
    assert group["Meta"]["tier"] == "large"
    assert group["Tasks"][0]["Config"]["image"] == "redis:7"
    # Assigning a variable the file does not declare is not an error through the API.
    extra = _parse_vars(nomad_http, VARIABLES_FILE, 'owner = "x"\nnot_declared = 1\n')
    assert extra.status_code == 200, extra.text


def test_variable_errors_are_400_with_hcl_diagnostics(nomad_http: httpx.Client) -> None:
    unset = _parse_vars(nomad_http, VARIABLES_FILE, "")
    assert unset.status_code == 400
    assert 'Unset variable "owner"' in unset.text
    assert "must be set or have a default value" in unset.text

    undeclared = _parse_vars(
        nomad_http, VARIABLES_FILE.replace("image = var.image", "image = var.imag"), 'owner = "x"'
    )
    assert undeclared.status_code == 400
    assert "Unsupported attribute" in undeclared.text
    assert 'does not have an attribute named "imag"' in undeclared.text
    assert "input.hcl:" in undeclared.text

    bad_local = _parse_vars(
        nomad_http, VARIABLES_FILE.replace("= local.tier", "= local.tierr"), 'owner = "x"'
    )
    assert bad_local.status_code == 400
    assert 'does not have an attribute named "tierr"' in bad_local.text

    wrong_type = _parse_vars(nomad_http, VARIABLES_FILE, 'owner = "x"\nreplicas = "many"\n')
    assert wrong_type.status_code == 400
    assert "Invalid value for variable" in wrong_type.text
    assert "a number is required" in wrong_type.text

    broken_vars = _parse_vars(nomad_http, VARIABLES_FILE, "owner = \n")
    assert broken_vars.status_code == 400
    for resp in (unset, undeclared, bad_local, wrong_type, broken_vars):
        assert resp.text.startswith("Failed to parse job: "), resp.text
        assert not resp.headers.get("content-type", "").startswith("application/json")


def test_hclv1_flag_is_not_read(nomad_http: httpx.Client) -> None:
    # Nomad 1.9 removed HCLv1: the flag is ignored and the text parsed as HCL2.
    resp = nomad_http.post(
        "/v1/jobs/parse",
        json={"JobHCL": VARIABLES_FILE, "Variables": 'owner = "v"', "HCLv1": True},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["TaskGroups"][0]["Services"][0]["Name"] == "v-web"


def test_bad_values_are_400_not_500(nomad_http: httpx.Client) -> None:
    for text in (
        'job "x" {\n  group "g" {\n    count = "lots"\n  }\n}\n',
        'job "x" {\n  priority = [1]\n}\n',
        'job "x" {\n  group "g" {\n    count = var.n\n  }\n}\n',
        'job "x" {\n  group "g" {\n    count = nosuch(1)\n  }\n}\n',
    ):
        resp = _parse(nomad_http, text)
        assert resp.status_code == 400, (text, resp.status_code, resp.text)
        assert resp.text.startswith("Failed to parse job: ")


def test_migrate_block(nomad_http: httpx.Client) -> None:
    text = """
    job "movable" {
      group "g" {
        migrate {
          max_parallel     = 2
          health_check     = "task_states"
          min_healthy_time = "3s"
          healthy_deadline = "1m"
        }
        task "t" {
          driver = "docker"
          config {
            image = "nginx:1.27"
          }
        }
      }
    }
    """
    resp = _parse(nomad_http, text, canonicalize=True)
    assert resp.status_code == 200, resp.text
    assert resp.json()["TaskGroups"][0]["Migrate"] == {
        "MaxParallel": 2,
        "HealthCheck": "task_states",
        "MinHealthyTime": 3 * SECOND,
        "HealthyDeadline": 60 * SECOND,
    }


VALIDATED = """
variable "replicas" {
  type    = number
  default = 2

  validation {
    condition     = var.replicas >= 1 && var.replicas <= 5
    error_message = "Replicas must be between 1 and 5."
  }
}

variable "image" {
  type    = string
  default = "nginx:1.27"

  validation {
    condition     = startswith(var.image, "nginx:")
    error_message = "Only nginx images are allowed."
  }
}

job "validated" {
  group "g" {
    count = var.replicas
    task "t" {
      driver = "docker"
      config {
        image = var.image
      }
    }
  }
}
"""


def test_variable_validation_rules(nomad_http: httpx.Client) -> None:
    ok = _parse_vars(nomad_http, VALIDATED, "replicas = 3\n")
    assert ok.status_code == 200, ok.text
    assert ok.json()["TaskGroups"][0]["Count"] == 3
    too_many = _parse_vars(nomad_http, VALIDATED, "replicas = 9\n")
    assert too_many.status_code == 400
    assert "Replicas must be between 1 and 5." in too_many.text
    assert "This was checked by the validation rule at input.hcl:" in too_many.text
    wrong = _parse_vars(nomad_http, VALIDATED, 'image = "redis:7"\n')
    assert wrong.status_code == 400
    assert "Only nginx images are allowed." in wrong.text
    bad_rule = VALIDATED.replace("var.replicas >= 1 && var.replicas <= 5", "true")
    resp = _parse_vars(nomad_http, bad_rule, "")
    assert resp.status_code == 400
    assert 'The condition for variable "replicas" must refer to var.replicas' in resp.text


DYNAMIC = """
variable "ports" {
  type    = list(string)
  default = ["http", "grpc"]
}

variable "regions" {
  type    = map(string)
  default = { eu = "eu-west-1", us = "us-east-1" }
}

job "dynamic" {
  dynamic "group" {
    for_each = var.regions
    labels   = ["edge-${group.key}"]

    content {
      count = 1

      meta {
        aws_region = group.value
      }

      network {
        dynamic "port" {
          for_each = var.ports
          iterator = p
          labels   = [p.value]
          content {
            to = 8000 + p.key
          }
        }
      }

      task "proxy" {
        driver = "docker"
        config {
          image = "haproxy:3.0"
          args  = ["--region", group.value, "--node", "${node.unique.name}"]
        }
      }
    }
  }
}
"""


def test_dynamic_blocks_are_expanded(nomad_http: httpx.Client) -> None:
    resp = _parse_vars(nomad_http, DYNAMIC, 'ports = ["http", "grpc", "admin"]\n')
    assert resp.status_code == 200, resp.text
    groups = {g["Name"]: g for g in resp.json()["TaskGroups"]}
    assert sorted(groups) == ["edge-eu", "edge-us"]
    eu = groups["edge-eu"]
    assert eu["Meta"] == {"aws_region": "eu-west-1"}
    assert eu["Networks"][0]["DynamicPorts"] == [
        {"Label": "http", "To": 8000},
        {"Label": "grpc", "To": 8001},
        {"Label": "admin", "To": 8002},
    ]
    args = eu["Tasks"][0]["Config"]["args"]
    assert args == ["--region", "eu-west-1", "--node", "${node.unique.name}"]
    assert groups["edge-us"]["Meta"] == {"aws_region": "us-east-1"}
    bad = _parse_vars(nomad_http, DYNAMIC.replace("for_each = var.ports", "for_each = 3"), "")
    assert bad.status_code == 400
    assert "for_each" in bad.text
