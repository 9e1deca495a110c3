"""The intake API's Prometheus series (``manticore_api_*``), beside the framework's watch ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "manticore_api_requests_total",
    "HTTP requests answered by the intake API",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "manticore_api_request_duration_seconds",
    "Time to answer an HTTP request (event streams: time to the first byte)",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REJECTED = Counter(
    "manticore_api_rejected_total",
    "Requests refused before reaching anyone's keys, by reason",
    ["reason"],
)
STREAMS = Gauge("manticore_api_open_streams", "Open event streams")
EVENTS = Counter("manticore_api_events_total", "Status events handed to open streams")
CONSUL_WRITES = Counter(
    "manticore_api_consul_writes_total",
    "Writes of users' request keys by kind and outcome",
    ["kind", "outcome"],
)
INVALID = Counter(
    "manticore_api_invalid_values_total",
    "KV values the API could not decode (ignored), by kind",
    ["kind"],
)
REGISTERED = Gauge(
    "manticore_api_registered", "1 while this instance is registered as the web app in Consul"
)

REASONS = ("auth", "forbidden", "too-large", "validation", "not-offered", "conflict", "streams")
for _reason in REASONS:
    REJECTED.labels(reason=_reason)
for _kind in ("create", "activity", "delete"):
    for _outcome in ("ok", "conflict", "error"):
        CONSUL_WRITES.labels(kind=_kind, outcome=_outcome)
for _kind in ("request", "routes", "elb", "expiry"):
    INVALID.labels(kind=_kind)
# The routes, so every series exists from the first scrape (an absent series alerts on nothing).
ROUTES = (
    ("POST", "/api/v1/requests"),
    ("GET", "/api/v1/requests/{user_id}"),
    ("GET", "/api/v1/requests/{user_id}/events"),
    ("POST", "/api/v1/requests/{user_id}/activity"),
    ("DELETE", "/api/v1/requests/{user_id}"),
    ("GET", "/api/v1/options"),
)
for _method, _route in ROUTES:
    REQUESTS.labels(route=_route, method=_method, status="200")
    LATENCY.labels(route=_route)
