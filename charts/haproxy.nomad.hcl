# The haproxy controller beside HAProxy on every HAProxy host: a Nomad system job.
#
#   consul acl policy create -name haproxy -rules @charts/policies/haproxy.hcl
#   nomad var put nomad/jobs/manticore-haproxy \
#       consul_token=$(consul acl token create -policy-name haproxy -format json | jq -r .SecretID)
#   nomad job run -var image=registry.example/manticore-reconciler:0.1.0 \
#       -var domain_name=manticore.example.com charts/haproxy.nomad.hcl
#
# The task runs `reconciler run haproxy`, which starts HAProxy (master-worker) from the image when
# none runs for its config directory, renders haproxy/ into it, and keeps it current: map files
# and pre-provisioned slots over the runtime API for users coming and going, a validated hitless
# reload when the shape changes. HAProxy runs detached from the controller, so a controller that
# crashes and restarts adopts it without a reload; stopping the job stops both. Read-only on
# Consul (charts/policies/haproxy.hcl): not leader-elected, no session, no status entries.
#
# Only nodes whose meta.haproxy is "true" run it (the ones the load balancer sends traffic to).
# The image needs the haproxy binary (2.6 or later) besides the reconciler command. HAProxy's
# frontends bind the host network: mainPort for HTTP and websockets (and the load balancer's
# health check on /haproxy), the whole TCP_PORT_RANGE for the users' core connections.

variable "image" {
  type        = string
  description = "The manticore-reconciler image with the haproxy binary"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "domain_name" {
  type        = string
  description = "DOMAIN_NAME: users reach <subdomain>.<DOMAIN_NAME> (haproxy/domainName wins)"
}

variable "haproxy_http_port" {
  type        = number
  default     = 8080
  description = "HAPROXY_HTTP_LISTEN: the main (HTTP) port (haproxy/mainPort wins)"
}

variable "tcp_port_range_start" {
  type    = number
  default = 20000
}

variable "tcp_port_range_end" {
  type    = number
  default = 20999
}

variable "update_mode" {
  type        = string
  default     = "runtime"
  description = "MANTICORE_HAPROXY_UPDATE_MODE: runtime (maps and slots) or reload (every change)"
}

job "manticore-haproxy" {
  datacenters = var.datacenters
  type        = "system"

  constraint {
    attribute = "${meta.haproxy}"
    value     = "true"
  }

  update {
    max_parallel = 1
    # One HAProxy host at a time, and only once the previous one routes again.
    min_healthy_time = "20s"
    healthy_deadline = "3m"
  }

  group "haproxy" {
    network {
      mode = "host"
      port "metrics" {}
      port "stats" {}
      # mainPort, reserved on the host; the TCP range should be kept out of Nomad's dynamic
      # ports (client reserved.reserved_ports) so no task takes a user's port.
      port "http" {
        static = var.haproxy_http_port
      }
    }

    service {
      name = "reconciler"
      port = "metrics"
      tags = ["metrics", "haproxy"]
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

    # What the load balancer checks: HAProxy itself answering on mainPort.
    service {
      name = "manticore-haproxy"
      port = "http"
      check {
        type     = "http"
        path     = "/haproxy"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "haproxy" {
      driver = "docker"

      # SIGTERM stops the controller; HAProxy (same container) stops with the task.
      kill_signal  = "SIGTERM"
      kill_timeout = "35s"

      config {
        image        = var.image
        command      = "reconciler"
        args         = ["run", "haproxy"]
        network_mode = "host"
        # HAProxy needs about two file descriptors per connection.
        ulimit {
          nofile = "65536:65536"
        }
      }

      template {
        destination = "secrets/consul.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/manticore-haproxy" }}CONSUL_HTTP_TOKEN={{ .consul_token }}{{ end }}
        EOT
      }

      env {
        CONSUL_HTTP_ADDR                = "${attr.unique.network.ip-address}:8500"
        RECONCILER_METRICS_ADDR         = "0.0.0.0:${NOMAD_PORT_metrics}"
        RECONCILER_IDENTITY             = "${node.unique.name}/${NOMAD_ALLOC_ID}"
        RECONCILER_LOG_FORMAT           = "json"
        DOMAIN_NAME                     = var.domain_name
        HAPROXY_HTTP_LISTEN             = "${var.haproxy_http_port}"
        TCP_PORT_RANGE_START            = "${var.tcp_port_range_start}"
        TCP_PORT_RANGE_END              = "${var.tcp_port_range_end}"
        MANTICORE_HAPROXY_CONFIG_DIR    = "${NOMAD_ALLOC_DIR}/haproxy"
        MANTICORE_HAPROXY_BIND_ADDRESS  = "0.0.0.0"
        MANTICORE_HAPROXY_STATS_PORT    = "${NOMAD_PORT_stats}"
        MANTICORE_HAPROXY_UPDATE_MODE   = var.update_mode
        MANTICORE_HAPROXY_MAXCONN       = "20000"
        MANTICORE_HAPROXY_HARD_STOP_AFTER = "3600"
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
