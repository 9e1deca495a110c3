# Least-privilege Consul ACL policy of the `waitlist` controller.
# It reads the users' requests and owns the waiting list: manticore/waiting/data and its pages
# manticore/waiting/data-<n> (one prefix, so one recursive read sees the whole list).

key_prefix "manticore/requests/data/" {
  policy = "read"
}

key_prefix "manticore/waiting/data" {
  policy = "write"
}

# Status entries (reconciler/status/waitlist/<id>), the leader lock and the fencing
# check-session in every write transaction.
key_prefix "reconciler/status/waitlist/" {
  policy = "write"
}

key "reconciler/leader/waitlist" {
  policy = "write"
}

# Sessions are created on the local agent's node.
session_prefix "" {
  policy = "write"
}
