# Least-privilege Nomad ACL policy of the `waitlist` controller: it only reads.
# Free capacity is every node's resources minus every live allocation on it, whatever the
# namespace (other teams' jobs use the same nodes), so it reads allocations everywhere.

namespace "*" {
  capabilities = ["read-job"]
}

node {
  policy = "read"
}
