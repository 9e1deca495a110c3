"""The HTTP API of the embedded Consul: one module of handlers per endpoint family.

Handlers parse the request, check the token, call the logic below (``devstack.consul.kv``,
``sessions``, ``txn``, ``catalog``, ``local``...) and shape the answer; the route table is in
``devstack.consul.app``.
"""
