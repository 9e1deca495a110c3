# The expiry controller as its own Nomad job: claimed users -> usage deadlines in
# manticore/expiry/data/<id>; warns, then deletes the request when the time is up.
#
#   nomad var put nomad/jobs/manticore-expiry \
#       consul_token=<secret of a token from charts/policies/expiry.hcl>
#   nomad job run -var image=registry.example/manticore-reconciler:0.1.0 \
#       -var usage_duration=3600 charts/expiry.nomad.hcl
#
# It needs Consul only. Two replicas on distinct hosts elect one leader through Consul
# (reconciler/leader/expiry); deadlines live in KV, so a restart or a new leader keeps everyone's
# clock. Every setting is validated at start: a bad value stops the task naming the variable.

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

variable "usage_duration" {
  type        = string
  default     = "3600"
  description = "USAGE_DURATION: seconds of use before the warning"
}

variable "warning_duration" {
  type        = string
  default     = "60"
  description = "WARNING_DURATION: seconds between the warning and the end"
}

variable "reset_timer_allowed" {
  type        = string
  default     = "false"
  description = "RESET_TIMER_ALLOWED: user activity restarts the usage clock"
}

job "manticore-expiry" {
  datacenters = var.datacenters
  type        = "service"

  group "expiry" {
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
      tags = ["metrics", "expiry"]
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

    task "expiry" {
      driver = "docker"

      # SIGTERM releases the lock at once; in-flight reconciles are idempotent.
      kill_signal  = "SIGTERM"
      kill_timeout = "35s"

      config {
        image   = var.image
        command = "reconciler"
        args    = ["run", "expiry"]
        ports   = ["metrics"]
      }

      # The Consul token made from charts/policies/expiry.hcl, from a Nomad variable: never in
      # the job file, never in the environment of other tasks.
      template {
        destination = "secrets/tokens.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/manticore-expiry" }}CONSUL_HTTP_TOKEN={{ .consul_token }}{{ end }}
        EOT
      }

      env {
        CONSUL_HTTP_ADDR        = "${attr.unique.network.ip-address}:8500"
        RECONCILER_METRICS_ADDR = "0.0.0.0:${NOMAD_PORT_metrics}"
        RECONCILER_IDENTITY     = "${node.unique.name}/${NOMAD_ALLOC_ID}"
        RECONCILER_LOG_FORMAT   = "json"
        USAGE_DURATION          = var.usage_duration
        WARNING_DURATION        = var.warning_duration
        RESET_TIMER_ALLOWED     = var.reset_timer_allowed
      }

      resources {
        cpu    = 200
        memory = 160
      }
    }
  }
}
