# The jobs controller as its own Nomad job: every claimed user -> one Nomad job core-hmi-<id>
# from the job template (registered with EnforceIndex, purged when the user leaves).
#
#   nomad var put nomad/jobs/manticore-jobs \
#       consul_token=<secret of a token from charts/policies/jobs.hcl> \
#       nomad_token=<secret of a token from charts/policies/jobs-nomad.hcl>
#   nomad job run -var image=registry.example/manticore-reconciler:0.1.0 charts/jobs.nomad.hcl
#
# It submits and purges the users' jobs only (its Nomad token can do nothing else), and touches
# only jobs carrying Meta.manticore_owner = manticore-reconciler.
# Two replicas on distinct hosts elect one leader through Consul (reconciler/leader/jobs); the
# standby keeps its watches warm and takes over at once when the leader is stopped (SIGTERM
# releases the lock). Every setting and the job template are validated at start: a bad value
# stops the task with a message naming the variable.

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

variable "domain_name" {
  type        = string
  default     = "manticore.example.com"
  description = "DOMAIN_NAME, the template's {{domain}}"
}

variable "job_template" {
  type        = string
  default     = ""
  description = "Path of the users' job template in the image; empty = the production template"
}

variable "core_versions" {
  type    = string
  default = "8.2.0"
}

variable "hmi_versions" {
  type    = string
  default = "master"
}

job "manticore-jobs" {
  datacenters = var.datacenters
  type        = "service"

  group "jobs" {
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
      tags = ["metrics", "jobs"]
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

    task "jobs" {
      driver = "docker"

      # SIGTERM releases the lock at once; in-flight reconciles are idempotent.
      kill_signal  = "SIGTERM"
      kill_timeout = "35s"

      config {
        image   = var.image
        command = "reconciler"
        args    = ["run", "jobs"]
        ports   = ["metrics"]
      }

      # The Consul and Nomad tokens made from charts/policies/jobs.hcl and jobs-nomad.hcl, from
      # a Nomad variable: never in the job file, never in the environment of other tasks.
      template {
        destination = "secrets/tokens.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/manticore-jobs" }}CONSUL_HTTP_TOKEN={{ .consul_token }}
          NOMAD_TOKEN={{ .nomad_token }}{{ end }}
        EOT
      }

      env {
        CONSUL_HTTP_ADDR                = "${attr.unique.network.ip-address}:8500"
        NOMAD_ADDR                      = "http://${attr.unique.network.ip-address}:4646"
        RECONCILER_METRICS_ADDR         = "0.0.0.0:${NOMAD_PORT_metrics}"
        RECONCILER_IDENTITY             = "${node.unique.name}/${NOMAD_ALLOC_ID}"
        RECONCILER_LOG_FORMAT           = "json"
        DOMAIN_NAME                     = var.domain_name
        MANTICORE_DATACENTERS           = var.user_datacenters
        MANTICORE_JOB_TEMPLATE          = var.job_template
        MANTICORE_CORE_VERSIONS         = var.core_versions
        MANTICORE_HMI_VERSIONS          = var.hmi_versions
      }

      resources {
        cpu    = 300
        memory = 192
      }
    }
  }
}
