# Least-privilege Consul ACL policy of the `jobs` controller.
# It reads the users' requests and the waiting list; what it writes lives in Nomad (the users'
# jobs), so in Consul it owns only its status entries and its leader lock.

key_prefix "manticore/requests/data/" {
  policy = "read"
}

key_prefix "manticore/waiting/data" {
  policy = "read"
}

# Status entries (reconciler/status/jobs/<id>), the leader lock and the fencing check-session.
key_prefix "reconciler/status/jobs/" {
  policy = "write"
}

key "reconciler/leader/jobs" {
  policy = "write"
}

# Sessions are created on the local agent's node.
session_prefix "" {
  policy = "write"
}
