# The intake API (manticore-api) as a Nomad job: several stateless instances behind HAProxy.
#
#   nomad var put nomad/jobs/manticore-api \
#       consul_token=<secret of a token from charts/policies/manticore-api.hcl> \
#       jwt_secret=<the HS256 secret of the users' tokens, or empty>
#   nomad job run -var image=registry.example/manticore-reconciler:0.1.0 \
#       -var domain_name=manticore.example.com charts/manticore-api.nomad.hcl
#
# Each instance registers itself in Consul as the web app service (MANTICORE_WEB_APP_SERVICE,
# with an HTTP check on /healthz) once its watches are warm, and deregisters on SIGTERM before it
# stops answering; haproxy-kv publishes the passing instances in haproxy/webAppAddresses. Nomad
# registers only the metrics service. Everything an instance knows comes from Consul, so any
# number of instances serve any user and a restart loses nothing.

variable "image" {
  type        = string
  description = "The manticore-reconciler image (it has the manticore-api command)"
}

variable "instances" {
  type    = number
  default = 2
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "domain_name" {
  type        = string
  description = "DOMAIN_NAME: users reach <subdomain>.<DOMAIN_NAME>"
}

variable "web_app_service" {
  type        = string
  default     = "manticore-service"
  description = "MANTICORE_WEB_APP_SERVICE: the service haproxy-kv publishes"
}

variable "public_scheme" {
  type        = string
  default     = "http"
  description = "MANTICORE_PUBLIC_SCHEME: https behind a TLS-terminating load balancer"
}

variable "usage_duration" {
  type        = string
  default     = "3600"
  description = "USAGE_DURATION, as the expiry controller has it (shown to users)"
}

variable "warning_duration" {
  type        = string
  default     = "60"
  description = "WARNING_DURATION, as the expiry controller has it"
}

variable "reset_timer_allowed" {
  type        = string
  default     = "false"
  description = "RESET_TIMER_ALLOWED, as the expiry controller has it"
}

job "manticore-api" {
  datacenters = var.datacenters
  type        = "service"

  group "api" {
    count = var.instances

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
      port "http" {}
    }

    service {
      name = "manticore-api-metrics"
      port = "http"
      tags = ["metrics", "manticore-api"]
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

    task "api" {
      driver = "docker"

      # SIGTERM: deregister, end the event streams (browsers reconnect elsewhere), finish.
      kill_signal  = "SIGTERM"
      kill_timeout = "15s"

      config {
        image   = var.image
        command = "manticore-api"
        args    = ["--log-format", "json"]
        ports   = ["http"]
      }

      template {
        destination = "secrets/tokens.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/manticore-api" }}CONSUL_HTTP_TOKEN={{ .consul_token }}
          JWT_SECRET={{ .jwt_secret }}{{ end }}
        EOT
      }

      env {
        CONSUL_HTTP_ADDR                = "${attr.unique.network.ip-address}:8500"
        HTTP_PORT                       = "${NOMAD_PORT_http}"
        MANTICORE_API_BIND_ADDRESS      = "0.0.0.0"
        MANTICORE_API_ADVERTISE_ADDRESS = "${NOMAD_IP_http}"
        MANTICORE_API_SERVICE_ID        = "manticore-api-${NOMAD_ALLOC_ID}"
        MANTICORE_WEB_APP_SERVICE       = var.web_app_service
        MANTICORE_PUBLIC_SCHEME         = var.public_scheme
        DOMAIN_NAME                     = var.domain_name
        USAGE_DURATION                  = var.usage_duration
        WARNING_DURATION                = var.warning_duration
        RESET_TIMER_ALLOWED             = var.reset_timer_allowed
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
