# The allocations controller as its own Nomad job: passing core-hmi-<id>-<role> services ->
# manticore/allocations/data/<id>.
#
#   nomad var put nomad/jobs/manticore-allocations consul_token=<secret of a token from
#       charts/policies/allocations.hcl>
#   nomad job run -var image=registry.example/manticore-reconciler:0.1.0 charts/allocations.nomad.hcl
#
# It needs Consul only (one pattern health watch, two KV watches), no Nomad token.
# Two replicas on distinct hosts elect one leader through Consul (reconciler/leader/allocations);
# the standby keeps its watches warm and takes over at once when the leader is stopped
# (SIGTERM releases the lock). Every setting is validated at start: a bad value stops the task
# with a message naming the variable.

variable "image" {
  type        = string
  description = "The manticore-reconciler image (it has the reconciler command)"
}

variable "replicas" {
  type    = number
  default = 2
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "manticore-allocations" {
  datacenters = var.datacenters
  type        = "service"

  group "allocations" {
    count = var.replicas

    # Never two replicas on one host: losing a host must not take the standby with it.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    update {
      max_parallel     = 1
      min_healthy_time = "10s"
      healthy_deadline = "2m"
    }

    network {
      port "metrics" {}
    }

    service {
      name = "reconciler"
      port = "metrics"
      tags = ["metrics", "allocations"]
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

    task "allocations" {
      driver = "docker"

      # SIGTERM releases the lock at once; in-flight reconciles are idempotent.
      kill_signal  = "SIGTERM"
      kill_timeout = "35s"

      config {
        image   = var.image
        command = "reconciler"
        args    = ["run", "allocations"]
        ports   = ["metrics"]
      }

      # The Consul token made from charts/policies/allocations.hcl, from a Nomad variable: never in
      # the job file, never in the environment of other tasks.
      template {
        destination = "secrets/consul.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/manticore-allocations" }}CONSUL_HTTP_TOKEN={{ .consul_token }}{{ end }}
        EOT
      }

      env {
        CONSUL_HTTP_ADDR         = "${attr.unique.network.ip-address}:8500"
        RECONCILER_METRICS_ADDR  = "0.0.0.0:${NOMAD_PORT_metrics}"
        RECONCILER_IDENTITY      = "${node.unique.name}/${NOMAD_ALLOC_ID}"
        RECONCILER_LOG_FORMAT    = "json"

      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
