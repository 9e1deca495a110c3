# One controller (or several sharing a process) as its own Nomad job: two replicas, one leader.
#
#   nomad job run -var controllers=greeter -var image=registry.example/manticore-reconciler:0.1.0 \
#       charts/controller.nomad.hcl
#
# Replicas elect a leader through Consul (reconciler/leader/<controller>); the standby keeps its
# watches warm and takes over at once when the leader is stopped (SIGTERM releases the lock).

variable "controllers" {
  type        = string
  description = "Space-separated controller names for `reconciler run`"
}

variable "image" {
  type = string
}

variable "replicas" {
  type    = number
  default = 2
}

variable "consul_token" {
  type        = string
  default     = ""
  description = "A token carrying the controller's least-privilege policy (charts/policies/)"
}

job "reconciler-${replace(var.controllers, " ", "-")}" {
  type = "service"

  group "controller" {
    count = var.replicas

    # Never two replicas on one host: losing a host must not take the standby with it.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "metrics" {}
    }

    service {
      name = "reconciler"
      port = "metrics"
      tags = ["metrics", "${var.controllers}"]
      meta {
        metrics_path = "/metrics"
      }
      check {
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "reconciler" {
      driver = "docker"

      # SIGTERM, then up to the drain timeout for in-flight reconciles, then SIGKILL.
      kill_signal  = "SIGTERM"
      kill_timeout = "35s"

      config {
        image   = var.image
        command = "reconciler"
        args    = ["run", var.controllers]
        ports   = ["metrics"]
      }

      env {
        CONSUL_HTTP_ADDR         = "${attr.unique.network.ip-address}:8500"
        CONSUL_HTTP_TOKEN        = var.consul_token
        NOMAD_ADDR               = "http://${attr.unique.network.ip-address}:4646"
        RECONCILER_METRICS_ADDR  = "0.0.0.0:${NOMAD_PORT_metrics}"
        RECONCILER_IDENTITY      = "${node.unique.name}/${NOMAD_ALLOC_ID}"
        RECONCILER_LOG_FORMAT    = "json"
        RECONCILER_DRAIN_TIMEOUT = "30"
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
