# Least-privilege Consul ACL policy of the `elb` controller.
# It reads the users' routes (their TCP ports) and owns manticore/elb/data/<id>. Its AWS rights
# are separate: see charts/policies/elb-iam.json.

key_prefix "haproxy/data/" {
  policy = "read"
}

key_prefix "manticore/elb/data/" {
  policy = "write"
}

key_prefix "reconciler/status/elb/" {
  policy = "write"
}

key "reconciler/leader/elb" {
  policy = "write"
}

session_prefix "" {
  policy = "write"
}
