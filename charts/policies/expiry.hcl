# Least-privilege Consul ACL policy of the `expiry` controller.
# It reads who is claimed, owns the deadlines, and deletes the request of a user whose time is
# up (Consul has no delete-only grant: write on the requests is the narrowest there is).

key_prefix "manticore/requests/data/" {
  policy = "write"
}

key_prefix "manticore/waiting/data" {
  policy = "read"
}

key_prefix "manticore/expiry/data/" {
  policy = "write"
}

# Status entries, the leader lock and the fencing check-session in every write transaction.
key_prefix "reconciler/status/expiry/" {
  policy = "write"
}

key "reconciler/leader/expiry" {
  policy = "write"
}

# Sessions are created on the local agent's node.
session_prefix "" {
  policy = "write"
}
