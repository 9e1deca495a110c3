"""``PUT /v1/txn``: the HTTP face of the transactions every leader fence is made of.

A transaction with no writes is fast-pathed as a read (metadata headers, ``?stale`` honoured);
one with writes returns no metadata. A rollback is a 409 listing every failing operation.
"""

from __future__ import annotations

import json

from aiohttp import web

from devstack.consul.api.common import authorizer, core_of, parse_query_options, token_sent
from devstack.consul.api.reads import meta_headers
from devstack.consul.encoding import dumps
from devstack.consul.errors import ConsulError, bad_request
from devstack.consul.txn import MAX_TXN_LEN, READ_VERBS, apply_ops, parse_ops


async def txn(request: web.Request) -> web.Response:
    core = core_of(request)
    opts = parse_query_options(request, core)
    length = request.content_length
    if length is not None and length > MAX_TXN_LEN:
        raise ConsulError(
            413,
            f"Request body({length} bytes) too large, max size: {MAX_TXN_LEN} bytes. See "
            "https://developer.hashicorp.com/docs/agent/config/config-files#txn_max_req_len.",
        )
    raw = await request.read()
    if len(raw) > MAX_TXN_LEN:
        raise ConsulError(413, f"Request body({len(raw)} bytes) too large")
    try:
        data = json.loads(raw) if raw.strip() else []
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"Failed to parse body: {exc}") from exc
    ops = parse_ops(data)
    authz = authorizer(request)
    read_only = all(not isinstance(op, str) and op.verb in READ_VERBS for op in ops)
    core.require_leader(read_only and opts.stale)
    results, errors, filtered = apply_ops(core.state, ops, authz)
    headers: dict[str, str] = {}
    if read_only:
        headers = meta_headers(core, opts, None)
    if filtered and token_sent(request):
        headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    if errors:
        body = dumps({"Results": None, "Errors": errors})
        return web.Response(body=body, status=409, headers=headers, content_type="application/json")
    body = dumps({"Results": results or None, "Errors": None})
    return web.Response(body=body, headers=headers, content_type="application/json")
