"""Prometheus metrics, named exactly as controller-runtime and client-go name theirs.

Existing controller-runtime dashboards and alerts work unchanged. Everything is registered once,
on the default registry, like controller-runtime's global ``metrics.Registry``; label children
are pre-initialised to zero by :func:`init_controller` so a scrape right after start already
shows every series (an absent series cannot be alerted on).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RESULTS = ("success", "error", "requeue", "requeue_after")

# controller-runtime's reconcile-time buckets (pkg/internal/controller/metrics).
RECONCILE_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8,
    0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30,
    40, 50, 60,
)  # fmt: skip
# client-go's workqueue buckets: prometheus.ExponentialBuckets(10e-9, 10, 12).
WORKQUEUE_BUCKETS = tuple(10e-9 * 10**i for i in range(12))

RECONCILE_TOTAL = Counter(
    "controller_runtime_reconcile_total",
    "Total number of reconciliations per controller",
    ["controller", "result"],
)
RECONCILE_ERRORS = Counter(
    "controller_runtime_reconcile_errors_total",
    "Total number of reconciliation errors per controller",
    ["controller"],
)
TERMINAL_RECONCILE_ERRORS = Counter(
    "controller_runtime_terminal_reconcile_errors_total",
    "Total number of terminal reconciliation errors per controller",
    ["controller"],
)
RECONCILE_PANICS = Counter(
    "controller_runtime_reconcile_panics_total",
    "Total number of reconciliation panics (unexpected exceptions) per controller",
    ["controller"],
)
RECONCILE_TIME = Histogram(
    "controller_runtime_reconcile_time_seconds",
    "Length of time per reconciliation per controller",
    ["controller"],
    buckets=RECONCILE_BUCKETS,
)
MAX_CONCURRENT_RECONCILES = Gauge(
    "controller_runtime_max_concurrent_reconciles",
    "Maximum number of concurrent reconciles per controller",
    ["controller"],
)
ACTIVE_WORKERS = Gauge(
    "controller_runtime_active_workers",
    "Number of currently used workers per controller",
    ["controller"],
)

WORKQUEUE_DEPTH = Gauge("workqueue_depth", "Current depth of workqueue", ["name", "controller"])
WORKQUEUE_ADDS = Counter(
    "workqueue_adds_total", "Total number of adds handled by workqueue", ["name", "controller"]
)
WORKQUEUE_QUEUE_DURATION = Histogram(
    "workqueue_queue_duration_seconds",
    "How long in seconds an item stays in workqueue before being requested",
    ["name", "controller"],
    buckets=WORKQUEUE_BUCKETS,
)
WORKQUEUE_WORK_DURATION = Histogram(
    "workqueue_work_duration_seconds",
    "How long in seconds processing an item from workqueue takes",
    ["name", "controller"],
    buckets=WORKQUEUE_BUCKETS,
)
WORKQUEUE_UNFINISHED_WORK = Gauge(
    "workqueue_unfinished_work_seconds",
    "How many seconds of work has been done that is in progress and hasn't been observed by "
    "work_duration. Large values indicate stuck threads.",
    ["name", "controller"],
)
WORKQUEUE_LONGEST_RUNNING = Gauge(
    "workqueue_longest_running_processor_seconds",
    "How many seconds has the longest running processor for workqueue been running.",
    ["name", "controller"],
)
WORKQUEUE_RETRIES = Counter(
    "workqueue_retries_total",
    "Total number of retries handled by workqueue",
    ["name", "controller"],
)

LEADER_STATUS = Gauge(
    "leader_election_master_status",
    "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, "
    "1 indicates master. 'name' is the string used to identify the lease.",
    ["name"],
)

# Our own: watches (sources), fencing and rejected input.
WATCH_REQUESTS = Counter(
    "reconciler_watch_requests_total",
    "Long-poll or stream requests issued by a source",
    ["controller", "source"],
)
WATCH_ERRORS = Counter(
    "reconciler_watch_errors_total",
    "Failed requests of a source (each is retried with backoff)",
    ["controller", "source"],
)
WATCH_INDEX_RESETS = Counter(
    "reconciler_watch_index_resets_total",
    "Times a source saw the index go backwards and reset it to 0",
    ["controller", "source"],
)
WATCH_EVENTS = Counter(
    "reconciler_watch_events_total",
    "Changes a source turned into keys for the work queue",
    ["controller", "source"],
)
WATCH_LAST_SUCCESS = Gauge(
    "reconciler_watch_last_success_timestamp_seconds",
    "Unix time of the last successful poll of a source; a stale value means a dead watch",
    ["controller", "source"],
)
SOURCE_READY = Gauge(
    "reconciler_source_ready",
    "1 once a source has completed its first successful read",
    ["controller", "source"],
)
FENCED_WRITES = Counter(
    "reconciler_fenced_writes_total",
    "KV writes made through a lock-checking transaction, by outcome",
    ["controller", "outcome"],
)
MAPPER_ERRORS = Counter(
    "reconciler_mapper_errors_total",
    "Changed items whose key mapper raised (the item was skipped; a bug in the controller)",
    ["controller", "watch"],
)
STATUS_WRITES = Counter(
    "reconciler_status_writes_total",
    "Writes of reconciler/status/<controller>/<key> entries, by outcome",
    ["controller", "outcome"],
)
INVALID_INPUT = Counter(
    "reconciler_invalid_input_total",
    "Values read from Consul/Nomad that failed validation and were skipped",
    ["controller", "kind"],
)

FENCING_OUTCOMES = ("committed", "rejected", "conflict")
# The kinds reconciler.kv.decode() reports; a controller may add its own.
INVALID_KINDS = ("malformed-json", "schema", "empty", "oversized")


def init_controller(name: str) -> None:
    """Create every per-controller series at zero, so dashboards see them before any event."""
    for result in RESULTS:
        RECONCILE_TOTAL.labels(controller=name, result=result)
    RECONCILE_ERRORS.labels(controller=name)
    TERMINAL_RECONCILE_ERRORS.labels(controller=name)
    RECONCILE_PANICS.labels(controller=name)
    RECONCILE_TIME.labels(controller=name)
    MAX_CONCURRENT_RECONCILES.labels(controller=name)
    ACTIVE_WORKERS.labels(controller=name)
    for outcome in FENCING_OUTCOMES:
        FENCED_WRITES.labels(controller=name, outcome=outcome)
    for kind in INVALID_KINDS:
        INVALID_INPUT.labels(controller=name, kind=kind)
    for outcome in STATUS_OUTCOMES:
        STATUS_WRITES.labels(controller=name, outcome=outcome)
    init_workqueue(name)


def init_leader(name: str) -> Gauge:
    """The leader-status series of one leader-elected controller (only those have it)."""
    return LEADER_STATUS.labels(name=name)


def init_workqueue(name: str) -> None:
    # controller-runtime labels its work queues with both ``name`` and ``controller``.
    for metric in (
        WORKQUEUE_DEPTH,
        WORKQUEUE_ADDS,
        WORKQUEUE_QUEUE_DURATION,
        WORKQUEUE_WORK_DURATION,
        WORKQUEUE_UNFINISHED_WORK,
        WORKQUEUE_LONGEST_RUNNING,
        WORKQUEUE_RETRIES,
    ):
        metric.labels(name=name, controller=name)


STATUS_OUTCOMES = ("written", "cleared", "failed")


def init_source(controller: str, source: str) -> None:
    WATCH_REQUESTS.labels(controller=controller, source=source)
    WATCH_ERRORS.labels(controller=controller, source=source)
    WATCH_INDEX_RESETS.labels(controller=controller, source=source)
    WATCH_EVENTS.labels(controller=controller, source=source)
    WATCH_LAST_SUCCESS.labels(controller=controller, source=source)
    SOURCE_READY.labels(controller=controller, source=source)
