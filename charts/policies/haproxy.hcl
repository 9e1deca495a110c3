# Least-privilege Consul ACL policy of the `haproxy` controller (one replica per HAProxy host).
# It only reads: haproxy/ as haproxy-kv writes it (routes, webAppAddresses, domainName,
# mainPort). It holds no leader lock (every replica drives its own HAProxy), opens no session and
# writes no status entries, so a stolen token can change nothing in Consul.

key_prefix "haproxy/" {
  policy = "read"
}
