# Least-privilege Consul ACL policy of the intake API (manticore-api).
# It writes the users' requests (create, activity, delete), reads what it reports to users,
# and registers itself as the web app service. It is not leader-elected: no session, no lock.

key_prefix "manticore/requests/data/" {
  policy = "write"
}

key_prefix "manticore/waiting/data" {
  policy = "read"
}

key_prefix "manticore/elb/data/" {
  policy = "read"
}

key_prefix "manticore/expiry/data/" {
  policy = "read"
}

key_prefix "haproxy/" {
  policy = "read"
}

# Its own registration (MANTICORE_WEB_APP_SERVICE) on the local agent.
service "manticore-service" {
  policy = "write"
}
