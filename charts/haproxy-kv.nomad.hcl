# The haproxy-kv controller as its own Nomad job: allocations -> haproxy/data/<id>, the web app
# addresses, haproxy/domainName and haproxy/mainPort.
#
#   nomad var put nomad/jobs/manticore-haproxy-kv consul_token=<secret of a token from
#       charts/policies/haproxy-kv.hcl>
#   nomad job run -var image=registry.example/manticore-reconciler:0.1.0 charts/haproxy-kv.nomad.hcl
#
# It needs Consul only. The routing settings must be the ones the haproxy and elb controllers
# get (same range, same main port).
# Two replicas on distinct hosts elect one leader through Consul (reconciler/leader/haproxy-kv);
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

variable "domain_name" {
  type        = string
  description = "DOMAIN_NAME: users reach <subdomain>.<DOMAIN_NAME>"
}

variable "tcp_port_range_start" {
  type        = number
  default     = 20000
  description = "TCP_PORT_RANGE_START: first external TCP port of a user"
}

variable "tcp_port_range_end" {
  type        = number
  default     = 20999
  description = "TCP_PORT_RANGE_END: last external TCP port (inclusive)"
}

variable "haproxy_http_port" {
  type        = number
  default     = 8080
  description = "HAPROXY_HTTP_LISTEN: HAProxy's main (HTTP) port"
}

variable "web_app_service" {
  type        = string
  default     = "manticore-service"
  description = "MANTICORE_WEB_APP_SERVICE: the web app's Consul service"
}

job "manticore-haproxy-kv" {
  datacenters = var.datacenters
  type        = "service"

  group "haproxy-kv" {
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
      tags = ["metrics", "haproxy-kv"]
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

    task "haproxy-kv" {
      driver = "docker"

      # SIGTERM releases the lock at once; in-flight reconciles are idempotent.
      kill_signal  = "SIGTERM"
      kill_timeout = "35s"

      config {
        image   = var.image
        command = "reconciler"
        args    = ["run", "haproxy-kv"]
        ports   = ["metrics"]
      }

      # The Consul token made from charts/policies/haproxy-kv.hcl, from a Nomad variable: never in
      # the job file, never in the environment of other tasks.
      template {
        destination = "secrets/consul.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/manticore-haproxy-kv" }}CONSUL_HTTP_TOKEN={{ .consul_token }}{{ end }}
        EOT
      }

      env {
        CONSUL_HTTP_ADDR         = "${attr.unique.network.ip-address}:8500"
        RECONCILER_METRICS_ADDR  = "0.0.0.0:${NOMAD_PORT_metrics}"
        RECONCILER_IDENTITY      = "${node.unique.name}/${NOMAD_ALLOC_ID}"
        RECONCILER_LOG_FORMAT    = "json"
        DOMAIN_NAME              = var.domain_name
        HAPROXY_HTTP_LISTEN      = "${var.haproxy_http_port}"
        TCP_PORT_RANGE_START     = "${var.tcp_port_range_start}"
        TCP_PORT_RANGE_END       = "${var.tcp_port_range_end}"
        MANTICORE_WEB_APP_SERVICE = var.web_app_service
      }

      resources {
        cpu    = 200
        memory = 160
      }
    }
  }
}
