"""What an SRE watches on an HAProxy host: reloads and why, failures, slots, runtime updates.

Registered once on the default registry (served by the framework's ``/metrics``) and
pre-initialised, so every series exists from the first scrape and can be alerted on
(``charts/prometheus/haproxy-alerts.yml``).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RELOAD_REASONS = ("start", "shape", "slots", "change", "periodic", "repair")
FAILURE_KINDS = ("invalid", "rejected", "start")
RUNTIME_OPS = ("server-addr", "server-state", "shutdown-sessions", "map-add", "map-set", "map-del")
POOLS = ("http", "tcp", "web")
PATHS = ("runtime", "reload")

RELOADS = Counter(
    "manticore_haproxy_reloads_total",
    "HAProxy reloads (or starts) that took effect, by reason",
    ["reason"],
)
RELOAD_FAILURES = Counter(
    "manticore_haproxy_reload_failures_total",
    "Configurations that did not take effect: invalid (haproxy -c), rejected by the master, "
    "or a start that failed; the previous configuration keeps serving",
    ["kind"],
)
CONFIG_VALID = Gauge(
    "manticore_haproxy_config_valid",
    "1 when the last rendered configuration passed haproxy -c and took effect, 0 when not",
)
RUNTIME_UPDATES = Counter(
    "manticore_haproxy_runtime_updates_total",
    "Runtime API commands applied instead of reloads, by operation",
    ["op"],
)
SLOTS_IN_USE = Gauge(
    "manticore_haproxy_slots_in_use", "Pre-provisioned slots holding a route", ["pool"]
)
SLOTS_TOTAL = Gauge("manticore_haproxy_slots_total", "Pre-provisioned slots", ["pool"])
LAST_RELOAD = Gauge(
    "manticore_haproxy_last_reload_timestamp_seconds",
    "Unix time of the last reload (or start) that took effect",
)
ROUTES = Gauge(
    "manticore_haproxy_routes", "Routes HAProxy serves (http, tcp, web app instances)", ["pool"]
)
APPLY_SECONDS = Histogram(
    "manticore_haproxy_apply_duration_seconds",
    "Time to apply a change: runtime API batch and files, or render, validate and reload",
    ["path"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
DRIFT = Counter(
    "manticore_haproxy_drift_total",
    "Checks that found the running HAProxy or its files differing from what was applied "
    "(each is repaired by a full reload)",
)
PENDING = Gauge(
    "manticore_haproxy_pending_changes",
    "1 while a change waits for the debounce or for a failed reload to be retried",
)


def init() -> None:
    """Create every labelled series at zero."""
    for reason in RELOAD_REASONS:
        RELOADS.labels(reason=reason)
    for kind in FAILURE_KINDS:
        RELOAD_FAILURES.labels(kind=kind)
    for op in RUNTIME_OPS:
        RUNTIME_UPDATES.labels(op=op)
    for pool in POOLS:
        SLOTS_IN_USE.labels(pool=pool)
        SLOTS_TOTAL.labels(pool=pool)
        ROUTES.labels(pool=pool)
    for path in PATHS:
        APPLY_SECONDS.labels(path=path)


init()
