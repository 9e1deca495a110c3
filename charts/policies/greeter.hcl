# Least-privilege Consul ACL policy of the `greeter` example controller.
# It reads its input, owns its output, and holds its leader lock through a session.

key_prefix "examples/greetings/in/" {
  policy = "read"
}

key_prefix "examples/greetings/out/" {
  policy = "write"
}

# Leader lock and the fencing check-session in every write transaction.
key "reconciler/leader/greeter" {
  policy = "write"
}

# Sessions are created on the local agent's node.
session_prefix "" {
  policy = "write"
}
