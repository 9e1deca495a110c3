# The elb controller as its own Nomad job: the users' TCP ports in haproxy/data -> Classic ELB
# listeners, recorded in manticore/elb/data/<id>.
#
#   nomad var put nomad/jobs/manticore-elb consul_token=<secret of a token from
#       charts/policies/elb.hcl>
#   nomad job run -var image=registry.example/manticore-reconciler:0.1.0 charts/elb.nomad.hcl
#
# AWS credentials come from the host's instance profile (the standard AWS chain), with the
# rights of charts/policies/elb-iam.json; nothing AWS-secret is in this file.
# Two replicas on distinct hosts elect one leader through Consul (reconciler/leader/elb);
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

variable "load_balancers" {
  type        = string
  description = "ELB_MANTICORE_NAME: Classic ELB name(s), comma-separated"
}

variable "aws_region" {
  type        = string
  description = "AWS_REGION of the load balancers"
}

variable "ws_port" {
  type        = string
  default     = ""
  description = "ELB_WS_PORT: websocket listener port (empty: none)"
}

variable "ssl_port" {
  type        = string
  default     = ""
  description = "ELB_SSL_PORT: SSL listener port (empty: none)"
}

variable "certificate_arn" {
  type        = string
  default     = ""
  description = "SSL_CERTIFICATE_ARN of encrypted listeners"
}

variable "listener_quota" {
  type        = number
  default     = 100
  description = "MANTICORE_ELB_LISTENER_QUOTA: listeners per load balancer"
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

job "manticore-elb" {
  datacenters = var.datacenters
  type        = "service"

  group "elb" {
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
      tags = ["metrics", "elb"]
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

    task "elb" {
      driver = "docker"

      # SIGTERM releases the lock at once; in-flight reconciles are idempotent.
      kill_signal  = "SIGTERM"
      kill_timeout = "35s"

      config {
        image   = var.image
        command = "reconciler"
        args    = ["run", "elb"]
        ports   = ["metrics"]
      }

      # The Consul token made from charts/policies/elb.hcl, from a Nomad variable: never in
      # the job file, never in the environment of other tasks.
      template {
        destination = "secrets/consul.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/manticore-elb" }}CONSUL_HTTP_TOKEN={{ .consul_token }}{{ end }}
        EOT
      }

      env {
        CONSUL_HTTP_ADDR         = "${attr.unique.network.ip-address}:8500"
        RECONCILER_METRICS_ADDR  = "0.0.0.0:${NOMAD_PORT_metrics}"
        RECONCILER_IDENTITY      = "${node.unique.name}/${NOMAD_ALLOC_ID}"
        RECONCILER_LOG_FORMAT    = "json"
        ELB_MANTICORE_NAME       = var.load_balancers
        AWS_REGION               = var.aws_region
        ELB_WS_PORT              = var.ws_port
        ELB_SSL_PORT             = var.ssl_port
        SSL_CERTIFICATE_ARN      = var.certificate_arn
        MANTICORE_ELB_LISTENER_QUOTA = "${var.listener_quota}"
        HAPROXY_HTTP_LISTEN      = "${var.haproxy_http_port}"
        TCP_PORT_RANGE_START     = "${var.tcp_port_range_start}"
        TCP_PORT_RANGE_END       = "${var.tcp_port_range_end}"
      }

      resources {
        cpu    = 200
        memory = 192
      }
    }
  }
}
