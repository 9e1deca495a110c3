"""The haproxy controller: ``haproxy/`` in Consul KV -> the HAProxy running beside it.

``controller`` is resolved lazily, so the devstack can use :mod:`controllers.haproxy.process`
(how HAProxy is validated and reloaded) without importing the framework.
"""
