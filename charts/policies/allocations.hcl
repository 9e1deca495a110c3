# Least-privilege Consul ACL policy of the `allocations` controller.
# It reads the users' requests and the health of their core-hmi-* services, and owns
# manticore/allocations/data/<id>.

key_prefix "manticore/requests/data/" {
  policy = "read"
}

key_prefix "manticore/allocations/data/" {
  policy = "write"
}

# The pattern health watch: every check of the datacenter (/v1/health/state/any), the catalog
# of services and each node's registrations. Consul filters what a token may not read, so the
# token sees the core-hmi-* services and nothing else of other teams.
service_prefix "core-hmi-" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}

# Status entries (reconciler/status/allocations/<id>), the leader lock and the fencing
# check-session in every write transaction.
key_prefix "reconciler/status/allocations/" {
  policy = "write"
}

key "reconciler/leader/allocations" {
  policy = "write"
}

# Sessions are created on the local agent's node.
session_prefix "" {
  policy = "write"
}
