"""``PUT /v1/txn``: the HTTP face of the transactions every leader fence is made of.

A transaction with no writes is fast-pathed as a read: it parses the read options (``?stale``,
``?consistent``...), returns KnownLeader/LastContact, and its body is Consul's
``TxnReadResponse``, whose embedded query metadata Go serialises into the JSON too. One with
writes returns no metadata. A rollback is a 409 listing every failing operation.
"""

from __future__ import annotations

from aiohttp import web

from devstack.consul.api.common import (
    authorizer,
    core_of,
    parse_query_options,
    token_sent,
)
from devstack.consul.api.reads import forward, meta_headers
from devstack.consul.encoding import dumps
from devstack.consul.errors import ConsulError, bad_request
from devstack.consul.gojson import GoJSONError, decode
from devstack.consul.txn import MAX_TXN_LEN, WRITE_VERBS, apply_ops, parse_ops

_DOCS = "https://www.consul.io/docs/agent/config/config-files#txn_max_req_len"


async def txn(request: web.Request) -> web.Response:
    core = core_of(request)
    length = request.content_length
    if length is not None and length > MAX_TXN_LEN:
        raise ConsulError(
            413,
            f"Request body({length} bytes) too large, max size: {MAX_TXN_LEN} bytes. See {_DOCS}.",
        )
    raw = await request.read()
    if len(raw) > MAX_TXN_LEN:
        raise ConsulError(
            413, f"Request body too large, max size: {MAX_TXN_LEN} bytes. See {_DOCS}."
        )
    try:
        ops = parse_ops(decode(raw))
    except GoJSONError as exc:
        raise bad_request(f"Failed to parse body: {exc}") from exc
    read_only = all(not isinstance(op, str) and op.verb not in WRITE_VERBS for op in ops)
    dc = request.query.get("dc", "")
    if read_only:
        opts = parse_query_options(request, core)
        forward(core, opts.datacenter, opts.stale)
    else:
        forward(core, dc)
    authz = authorizer(request)
    results, errors, filtered = apply_ops(core.state, ops, authz)
    body: dict[str, object] = {"Results": results or None, "Errors": errors or None}
    headers: dict[str, str] = {}
    if read_only:
        headers = meta_headers(core, None, None)
        # Go embeds QueryMeta in TxnReadResponse, so its fields are part of the body.
        shown = filtered and token_sent(request)
        body.update(
            Index=0,
            LastContact=0,
            KnownLeader=core.has_leader(),
            ConsistencyLevel="",
            NotModified=False,
            Backend=0,
            ResultsFilteredByACLs=shown,
        )
        if shown:
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    status = 409 if errors else 200
    return web.Response(
        body=dumps(body), status=status, headers=headers, content_type="application/json"
    )
