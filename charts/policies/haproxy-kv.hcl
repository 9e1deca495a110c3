# Least-privilege Consul ACL policy of the `haproxy-kv` controller.
# It reads requests and allocation records and the health of the web app; it owns haproxy/
# (routes, webAppAddresses, domainName, mainPort) and manticore/routes/ (reservations and the
# claim keys that keep ports and subdomains unique).

key_prefix "manticore/requests/data/" {
  policy = "read"
}

key_prefix "manticore/allocations/data/" {
  policy = "read"
}

key_prefix "manticore/routes/" {
  policy = "write"
}

key_prefix "haproxy/" {
  policy = "write"
}

# The web app's instances (MANTICORE_WEB_APP_SERVICE, manticore-service by default).
service "manticore-service" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}

key_prefix "reconciler/status/haproxy-kv/" {
  policy = "write"
}

key "reconciler/leader/haproxy-kv" {
  policy = "write"
}

session_prefix "" {
  policy = "write"
}
