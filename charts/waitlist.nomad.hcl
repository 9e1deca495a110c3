# The waitlist controller as its own Nomad job: requests + Nomad's free capacity ->
# manticore/waiting/data (FIFO, paged, written with CAS).
#
#   nomad var put nomad/jobs/manticore-waitlist \
#       consul_token=<secret of a token from charts/policies/waitlist.hcl> \
#       nomad_token=<secret of a token from charts/policies/waitlist-nomad.hcl>
#   nomad job run -var image=registry.example/manticore-reconciler:0.1.0 charts/waitlist.nomad.hcl
#
# It reads Nomad (nodes and allocations, to count free capacity) and never changes it.
# Two replicas on distinct hosts elect one leader through Consul (reconciler/leader/waitlist);
# the standby keeps its watches warm and takes over at once when the leader is stopped
# (SIGTERM releases the lock). Every setting and the job template are validated at start: a bad
# value stops the task with a message naming the variable.

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

variable "user_datacenters" {
  type        = string
  default     = "dc1"
  description = "Comma-separated datacenters the users' jobs run in (MANTICORE_DATACENTERS)"
}

variable "max_users" {
  type        = string
  default     = ""
  description = "MAX_USERS: claimed users at most; empty = as many as Nomad can place"
}

variable "job_template" {
  type        = string
  default     = ""
  description = "Path of the users' job template in the image; empty = the production template"
}

job "manticore-waitlist" {
  datacenters = var.datacenters
  type        = "service"

  group "waitlist" {
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
      tags = ["metrics", "waitlist"]
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

    task "waitlist" {
      driver = "docker"

      # SIGTERM releases the lock at once; in-flight reconciles are idempotent.
      kill_signal  = "SIGTERM"
      kill_timeout = "35s"

      config {
        image   = var.image
        command = "reconciler"
        args    = ["run", "waitlist"]
        ports   = ["metrics"]
      }

      # The Consul and Nomad tokens made from charts/policies/waitlist.hcl and
      # waitlist-nomad.hcl, from a Nomad variable: never in the job file, never in the
      # environment of other tasks.
      template {
        destination = "secrets/tokens.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/manticore-waitlist" }}CONSUL_HTTP_TOKEN={{ .consul_token }}
          NOMAD_TOKEN={{ .nomad_token }}{{ end }}
        EOT
      }

      env {
        CONSUL_HTTP_ADDR         = "${attr.unique.network.ip-address}:8500"
        NOMAD_ADDR               = "http://${attr.unique.network.ip-address}:4646"
        RECONCILER_METRICS_ADDR  = "0.0.0.0:${NOMAD_PORT_metrics}"
        RECONCILER_IDENTITY      = "${node.unique.name}/${NOMAD_ALLOC_ID}"
        RECONCILER_LOG_FORMAT    = "json"
        MAX_USERS                = var.max_users
        MANTICORE_DATACENTERS    = var.user_datacenters
        MANTICORE_JOB_TEMPLATE   = var.job_template
      }

      resources {
        cpu    = 300
        memory = 192
      }
    }
  }
}
