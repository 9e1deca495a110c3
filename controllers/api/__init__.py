"""The KV contract of Manticore: every value the controllers and the intake API read or write.

One module per KV prefix. Each model is strict (``extra="forbid"``, ids and every string that
reaches Nomad, HAProxy or AWS validated), and ``make schemas`` publishes it as
``crds-equivalent-schemas/<name>.schema.json`` through the controller that declares it.

=====================================  =============  ==========================================
key                                    writer         model
=====================================  =============  ==========================================
``manticore/requests/data/<id>``       intake API     :class:`~.requests.UserRequest`
``manticore/waiting/data`` (+ pages)   waitlist       :class:`~.waiting.WaitingPage`
``manticore/allocations/data/<id>``    allocations    :class:`~.allocations.UserAllocation`
``manticore/routes/data/<id>``         haproxy-kv     :class:`~.haproxy.RouteReservation`
``manticore/routes/tcp/<port>``        haproxy-kv     user id text: the port's unique claim
``manticore/routes/subdomains/<s>``    haproxy-kv     user id text: the subdomain's claim
``haproxy/data/<id>``                  haproxy-kv     :class:`~.haproxy.UserRoutes`
``haproxy/webAppAddresses/<i>``        haproxy-kv     ``ip:port`` text (:data:`~.haproxy.Address`)
``haproxy/domainName``                 haproxy-kv     domain text (:data:`~.haproxy.DomainName`)
``haproxy/mainPort``                   haproxy-kv     port text
``manticore/elb/data/<id>``            elb            :class:`~.elb.ListenerRecord`
``manticore/expiry/data/<id>``         expiry         :class:`~.expiry.ExpiryRecord`
=====================================  =============  ==========================================
"""

from __future__ import annotations

from pydantic import BaseModel

from controllers.api.allocations import UserAllocation
from controllers.api.elb import ListenerRecord
from controllers.api.expiry import ExpiryRecord
from controllers.api.haproxy import RouteReservation, UserRoutes
from controllers.api.requests import UserRequest
from controllers.api.waiting import WaitingPage

KV_MODELS: dict[str, type[BaseModel]] = {
    "manticore-request": UserRequest,
    "manticore-waiting-list": WaitingPage,
    "manticore-allocation": UserAllocation,
    "manticore-route-reservation": RouteReservation,
    "haproxy-user-routes": UserRoutes,
    "manticore-elb-listener": ListenerRecord,
    "manticore-expiry": ExpiryRecord,
}
