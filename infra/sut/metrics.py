"""Prometheus metrics of the service, correct across worker processes.

With more than one worker the launcher sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports
prometheus-client, so counters and histograms are summed over processes and per-process gauges use
``livesum``. Values that describe shared state (Redis memory, bus lag, outbox backlog, queue sizes) are
computed at scrape time by whichever process answers, so they are never double counted.
"""

from __future__ import annotations

import collections
import gc
import os
import re
import time

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)

REQUEST_LATENCY = Histogram(
    "sut_http_request_duration_seconds",
    "HTTP request latency by route and status.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
POOL_SIZE = Gauge("sut_db_pool_size", "DB pool size (sum over processes).", multiprocess_mode="livesum")
POOL_IN_USE = Gauge("sut_db_pool_in_use", "DB connections checked out.", multiprocess_mode="livesum")
POOL_WAITING = Gauge("sut_db_pool_waiting", "Requests waiting for a DB connection.", multiprocess_mode="livesum")
POOL_TIMEOUTS = Counter("sut_db_pool_timeouts", "Pool exhaustion: waits for a connection that timed out.")
RSS = Gauge("sut_process_resident_memory_bytes", "Resident memory (sum over processes).", multiprocess_mode="livesum")
CPU = Counter("sut_process_cpu_seconds", "CPU seconds used by the service processes.")
GC_PAUSE = Histogram(
    "sut_gc_pause_seconds",
    "Python garbage-collector pauses.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
#: The longest pause is kept this long, so every scrape at least this often sees every pause exactly.
GC_PAUSE_WINDOW_S = 10.0
GC_PAUSE_MAX = Gauge(
    "sut_gc_pause_max_seconds",
    f"Longest Python GC pause in the last {GC_PAUSE_WINDOW_S:.0f} s (exact; max over processes).",
    multiprocess_mode="livemax",
)
GC_FROZEN = Gauge(
    "sut_gc_frozen_objects",
    "Objects moved out of the collector's generations at start-up "
    "(gc.freeze; 0 with --no-gc-freeze), sum over processes.",
    multiprocess_mode="livesum",
)
LOCK_TIMEOUTS = Counter("sut_lock_wait_timeouts", "Seat-lock waits that timed out (409 LOCK_TIMEOUT).")
LOCK_WAIT = Histogram(
    "sut_lock_wait_seconds",
    "Time to take all seat locks of a reservation.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0),
)
SAGA_DURATION = Histogram(
    "sut_saga_duration_seconds",
    "Payment request to terminal state.",
    ["outcome"],
    buckets=(0.5, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 60),
)
OUTBOX_PUBLISHED = Counter("sut_outbox_published", "Outbox rows published to the bus.", ["event_type"])
OUTBOX_PUBLISH_ERRORS = Counter("sut_outbox_publish_errors", "Failed publish attempts.")
CONSUMED = Counter("sut_bus_consumed", "Bus messages handled.", ["group", "event_type", "outcome"])
RESERVATIONS = Counter("sut_reservations", "Reservation answers by code.", ["code"])

_last_cpu = [0.0]
_gc_start = [0.0]
# Pauses measured by the GC callback, not yet in the metrics. The callback only appends here: it may run
# inside any allocation, also while this thread holds a prometheus-client value lock (not reentrant),
# so taking a metric's lock there could deadlock. drain_gc_pauses() moves them into the metrics.
_gc_pending: collections.deque[tuple[float, float]] = collections.deque(maxlen=100_000)
_gc_recent: collections.deque[tuple[float, float]] = collections.deque()  # (end, pause) in the window


def _gc_callback(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    elif _gc_start[0]:
        end = time.perf_counter()
        _gc_pending.append((end, end - _gc_start[0]))
        _gc_start[0] = 0.0


def freeze_startup_heap() -> int:
    """Collect once, then move every live object to the permanent generation (gc.freeze): the modules,
    the engine, the app — alive for the whole run — are no longer scanned by each gen-2 collection, which
    otherwise walks the whole heap (100-200 ms on this machine under load). Returns the objects frozen."""
    gc.collect()
    gc.freeze()
    n = gc.get_freeze_count()
    GC_FROZEN.set(n)
    return n


def drain_gc_pauses(now: float | None = None) -> float:
    """Pauses since the last call into the histogram; the gauge to the longest of the window. Returns it."""
    while _gc_pending:
        end, pause = _gc_pending.popleft()
        GC_PAUSE.observe(pause)
        _gc_recent.append((end, pause))
    now = time.perf_counter() if now is None else now
    while _gc_recent and _gc_recent[0][0] < now - GC_PAUSE_WINDOW_S:
        _gc_recent.popleft()
    longest = max((p for _, p in _gc_recent), default=0.0)
    GC_PAUSE_MAX.set(longest)
    return longest


def install_gc_hook() -> None:
    if _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)


def refresh_process_gauges(pool_size: int, in_use: int, waiting: int) -> None:
    """Per-process gauges, refreshed on an interval by every worker."""
    import psutil

    proc = psutil.Process()
    RSS.set(proc.memory_info().rss)
    t = proc.cpu_times()
    cpu = t.user + t.system
    if cpu > _last_cpu[0]:
        CPU.inc(cpu - _last_cpu[0])
        _last_cpu[0] = cpu
    POOL_SIZE.set(pool_size)
    POOL_IN_USE.set(in_use)
    POOL_WAITING.set(waiting)
    drain_gc_pauses()


def mark_process_dead(pid: int) -> None:
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class _Snapshot:
    """Scrape-time gauges of shared state, yielded as metric families."""

    def __init__(self, gauges: list[tuple[str, str, dict[str, str], float]]):
        self.gauges = gauges

    def collect(self):
        families: dict[str, GaugeMetricFamily] = {}
        for name, help_, labels, value in self.gauges:
            fam = families.get(name)
            if fam is None:
                fam = families[name] = GaugeMetricFamily(name, help_, labels=list(labels))
            fam.add_metric([labels[k] for k in labels], value)
        yield from families.values()


def render(shared_gauges: list[tuple[str, str, dict[str, str], float]]) -> bytes:
    """The /metrics body: process metrics (merged across workers) plus shared-state gauges."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        body = generate_latest(reg)
    else:
        body = generate_latest(REGISTRY)
    extra = CollectorRegistry()
    extra.register(_Snapshot(shared_gauges))
    return body + generate_latest(extra)


#: Foreign mode: the reference service's metrics under the names a Spring Boot service exposes through
#: Actuator and micrometer-registry-prometheus (deployments/metric_maps/spring-boot.yaml reads them). Every
#: other sut_* family is dropped, as a real service would not have it.
MICROMETER_NAMES = {
    "sut_db_pool_size": "hikaricp_connections_max",
    "sut_db_pool_in_use": "hikaricp_connections_active",
    "sut_db_pool_waiting": "hikaricp_connections_pending",
    "sut_db_pool_timeouts": "hikaricp_connections_timeout",
    "sut_process_resident_memory_bytes": "process_resident_memory_bytes",
    "sut_gc_pause_max_seconds": "jvm_gc_pause_seconds_max",
    "sut_bus_consumer_lag_messages": "kafka_consumer_fetch_manager_records_lag_max",
    "sut_http_request_duration_seconds": "http_server_requests_seconds",
}
_FAMILY = re.compile(rb"^(# (?:HELP|TYPE) )?(sut_[a-z_]+?)(_total|_created|_bucket|_count|_sum)?([ {])")


def as_micrometer(body: bytes) -> bytes:
    """`body` (Prometheus text) with the reference names turned into Micrometer's; unmapped sut_* dropped."""
    out = []
    for line in body.split(b"\n"):
        m = _FAMILY.match(line)
        if m is None:
            out.append(line)
            continue
        base = m.group(2).decode()
        new = MICROMETER_NAMES.get(base)
        if new is None:
            continue
        out.append(line.replace(m.group(2), new.encode(), 1))
    return b"\n".join(out)
