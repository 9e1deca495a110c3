# Least-privilege Nomad ACL policy of the `jobs` controller: the users' jobs live in the
# default namespace; it lists, reads, registers and purges jobs there, and nothing else (no
# nodes, no other namespaces, no allocation lifecycle).

namespace "default" {
  capabilities = ["list-jobs", "read-job", "submit-job"]
}
