"""Server metrics into `server_samples`, under the campaign's KPI names.

Three sources, one shape (`Sample`):

* `ScrapeCollector` reads a ``/metrics`` URL (Prometheus text format, parsed by prometheus_client);
* `PrometheusCollector` asks a Prometheus server's HTTP API (range queries over the window since the
  last call, or any window afterwards);
* `CloudWatchCollector` calls GetMetricData (RDS CPUUtilization, ElastiCache memory, ALB RequestCount
  and TargetResponseTime, MSK MaxOffsetLag / SumOffsetLag / EstimatedMaxTimeLag …);
* `KafkaLagCollector` reads consumer lag from the Kafka cluster itself: committed group offsets against
  log-end offsets through the admin API (`soundcheck.kafka_lag`), per group, topic and partition. When it
  runs it owns the consumer-lag KPIs; the other sources' entries for them are dropped.

A *metric map* says which metric is which KPI. Its values are PromQL; the scrape collector evaluates
the subset a bare ``/metrics`` endpoint can answer itself (`tasks.promql`), so the same map serves a
scrape and a Prometheus server. Two maps ship in
``deployments/metric_maps/``: ``reference`` (the reference service) and ``spring-boot`` (Micrometer).

`Sampler` runs the collectors on a background thread during the load: bounded in time, stoppable,
tolerant of failing scrapes (counted, never raised), cheap (its CPU time is measured), with an
optional callback per batch so the safety watcher sees samples live.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any, Protocol

import httpx
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, insert

from infra.endpoints import Endpoints
from soundcheck.paths import DEPLOYMENTS
from soundcheck.profile import CloudWatchQuery, Profile
from soundcheck.store import server_samples
from tasks.promql import Expr, aggregate, histogram_quantile, parse_expr

log = logging.getLogger(__name__)

METRIC_MAPS = DEPLOYMENTS / "metric_maps"


@dataclass(frozen=True)
class Sample:
    ts: float  # epoch seconds
    kpi: str
    value: float
    source: str  # scrape | prometheus | cloudwatch
    labels: dict[str, str] | None = None


class Collector(Protocol):
    source: str
    #: Calling more often than this is pointless (CloudWatch publishes per minute).
    min_interval_s: float

    def collect(self) -> list[Sample]: ...


# ---------------------------------------------------------------------------------------------------- maps
def load_metric_map(spec: str | dict[str, str]) -> dict[str, str]:
    """A map given inline, by preset name (``reference``, ``spring-boot``) or as a path to a YAML file."""
    if isinstance(spec, dict):
        return dict(spec)
    path = METRIC_MAPS / f"{spec}.yaml"
    if not path.exists():
        path = Path(spec)
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in METRIC_MAPS.glob("*.yaml")))
        raise ValueError(f"unknown metric map {spec!r}; known: {known}, or a path to a YAML file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"metric map {path} must map KPI names to metric expressions")
    return {str(k): v for k, v in data.items()}


# ---------------------------------------------------------------------------------------------------- scrape
class ScrapeCollector:
    """GET a /metrics URL and evaluate the map on the parsed samples."""

    source = "scrape"
    min_interval_s = 0.0

    def __init__(
        self, url: str, metric_map: dict[str, str], *, timeout_s: float = 5.0, client: httpx.Client | None = None
    ):
        self.url = url
        self.exprs = {kpi: parse_expr(e) for kpi, e in metric_map.items()}
        self._client = client or httpx.Client(timeout=timeout_s, trust_env=False)
        self._previous: dict[tuple[str, tuple], tuple[float, float]] = {}  # for rate(): series → (ts, value)
        self._buckets: dict[str, dict[float, float]] = {}  # for histogram_quantile(): expression → le → count

    def fetch(self) -> tuple[float, dict[str, list[tuple[dict[str, str], float]]]]:
        r = self._client.get(self.url)
        r.raise_for_status()
        ts = time.time()
        wanted = {e.name for e in self.exprs.values()}
        series: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(r.text):
            for s in family.samples:
                if s.name in wanted:
                    series.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
        return ts, series

    def collect(self) -> list[Sample]:
        ts, series = self.fetch()
        out: list[Sample] = []
        for kpi, e in self.exprs.items():
            matched = [(lab, v) for lab, v in series.get(e.name, []) if e.matches(lab)]
            if e.quantile is not None:
                q = self._quantile(e, ts, matched)
                if q is not None:
                    out.append(Sample(ts, kpi, q, self.source))
                continue
            if e.fn:
                matched = self._rates(e, ts, matched)
            matched = [(lab, v) for lab, v in matched if not math.isnan(v)]
            if not matched:
                continue
            if e.agg:
                out.append(Sample(ts, kpi, aggregate(e.agg, [v for _, v in matched]) * e.factor, self.source))
            else:
                out.extend(Sample(ts, kpi, v * e.factor, self.source, lab or None) for lab, v in matched)
        return out

    def _rates(self, e: Expr, ts: float, matched: list[tuple[dict[str, str], float]]):
        out = []
        for labels, value in matched:
            key = (repr(e), tuple(sorted(labels.items())))  # per expression: two KPIs may rate one counter
            prev = self._previous.get(key)
            self._previous[key] = (ts, value)
            if prev is None or ts <= prev[0]:
                continue
            delta = value - prev[1]
            if delta < 0:  # counter reset (service restarted): the new value is the increase
                delta = value
            out.append((labels, delta / (ts - prev[0]) if e.fn == "rate" else delta))
        return out

    def _quantile(self, e: Expr, _ts: float, matched: list[tuple[dict[str, str], float]]) -> float | None:
        """Prometheus' histogram_quantile over the bucket increases since the previous scrape."""
        by_le: dict[float, float] = {}
        for labels, value in matched:
            le = float(labels.get("le", "nan"))
            if not math.isnan(le):
                by_le[le] = by_le.get(le, 0.0) + value
        key = e.name + repr(e.matchers)
        old = self._buckets.get(key)
        self._buckets[key] = by_le
        if old is None:
            return None
        inc = sorted((le, c - old.get(le, 0.0) if c >= old.get(le, 0.0) else c) for le, c in by_le.items())
        if not inc or inc[-1][1] <= 0:
            return None  # nothing observed in the window
        return histogram_quantile(e.quantile or 1.0, inc)

    def close(self) -> None:
        self._client.close()


# ---------------------------------------------------------------------------------------------------- Prometheus
class PrometheusCollector:
    """Range queries against a Prometheus server's HTTP API (``/api/v1/query_range``)."""

    source = "prometheus"

    def __init__(
        self,
        url: str,
        metric_map: dict[str, str],
        *,
        step_s: float = 2.0,
        timeout_s: float = 10.0,
        client: httpx.Client | None = None,
    ):
        self.url = url.rstrip("/")
        self.map = dict(metric_map)
        self.step_s = max(step_s, 1.0)
        self.min_interval_s = self.step_s
        self._client = client or httpx.Client(timeout=timeout_s, trust_env=False)
        self._last_end: float | None = None

    def query_range(self, expr: str, start: float, end: float, step_s: float | None = None) -> list[dict]:
        r = self._client.get(
            f"{self.url}/api/v1/query_range",
            params={"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s or self.step_s:g}s"},
        )
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != 200 or body.get("status") != "success":
            detail = body.get("error", r.text[:200])
            raise RuntimeError(f"Prometheus query {expr!r} failed: HTTP {r.status_code} {detail}")
        return list(body["data"]["result"])

    def collect_range(self, start: float, end: float, step_s: float | None = None) -> list[Sample]:
        """Every KPI of the map over [start, end] at `step_s`; a failing expression does not stop the others."""
        out: list[Sample] = []
        errors = []
        for kpi, expr in self.map.items():
            try:
                result = self.query_range(expr, start, end, step_s)
            except (httpx.HTTPError, RuntimeError) as e:
                errors.append(f"{kpi}: {e}")
                continue
            for series in result:
                labels = {k: v for k, v in series.get("metric", {}).items() if k != "__name__"} or None
                for ts, value in series.get("values", []):
                    v = float(value)
                    if not math.isnan(v):
                        out.append(Sample(float(ts), kpi, v, self.source, labels))
        if errors and not out:
            raise RuntimeError("; ".join(errors))
        return out

    def collect(self) -> list[Sample]:
        """The window since the previous call (the last `step` on the first call)."""
        end = time.time()
        start = self._last_end + self.step_s if self._last_end is not None else end - self.step_s
        if start > end:
            return []
        samples = self.collect_range(start, end)
        self._last_end = end
        return samples

    def close(self) -> None:
        self._client.close()


# ---------------------------------------------------------------------------------------------------- CloudWatch
def resolve_dimensions(query: CloudWatchQuery, values: dict[str, str]) -> dict[str, str]:
    """Fill ``${Output}`` placeholders (stack outputs such as DbInstanceId) in dimension values."""
    out = {}
    for k, v in query.dimensions.items():
        try:
            out[k] = Template(v).substitute(values)
        except KeyError as e:
            raise ValueError(
                f"CloudWatch dimension {k}={v!r} names {e.args[0]!r}, which the stack does not output"
            ) from None
    return out


class CloudWatchCollector:
    """GetMetricData for the profile's queries; each returned datapoint is one sample."""

    source = "cloudwatch"

    def __init__(
        self,
        queries: dict[str, CloudWatchQuery],
        *,
        region: str,
        endpoint_url: str | None = None,
        placeholders: dict[str, str] | None = None,
        lookback_s: float = 600.0,
        min_interval_s: float = 60.0,
        client: Any = None,
    ):
        import boto3

        self.queries = queries
        self.dimensions = {kpi: resolve_dimensions(q, placeholders or {}) for kpi, q in queries.items()}
        self.client = client or boto3.client("cloudwatch", region_name=region, endpoint_url=endpoint_url)
        self.lookback_s = lookback_s  # CloudWatch publishes late; re-read this much and drop what was seen
        self.min_interval_s = min_interval_s
        self._seen: set[tuple[str, float]] = set()

    def _request(self) -> list[dict]:
        out = []
        for i, (kpi, q) in enumerate(self.queries.items()):
            out.append(
                {
                    "Id": f"m{i}",
                    "Label": kpi,
                    "ReturnData": True,
                    "MetricStat": {
                        "Metric": {
                            "Namespace": q.namespace,
                            "MetricName": q.metric,
                            "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions[kpi].items()],
                        },
                        "Period": q.period_s,
                        "Stat": q.stat,
                    },
                }
            )
        return out

    def collect_range(self, start: float, end: float) -> list[Sample]:
        queries = self._request()
        by_id = {q["Id"]: q["Label"] for q in queries}
        out: list[Sample] = []
        kwargs: dict[str, Any] = {
            "MetricDataQueries": queries,
            "StartTime": datetime.fromtimestamp(start, UTC),
            "EndTime": datetime.fromtimestamp(end, UTC),
            "ScanBy": "TimestampAscending",
        }
        while True:
            resp = self.client.get_metric_data(**kwargs)
            for res in resp.get("MetricDataResults", []):
                kpi = by_id[res["Id"]]
                scale = self.queries[kpi].scale
                for ts, v in zip(res.get("Timestamps", []), res.get("Values", []), strict=False):
                    out.append(
                        Sample(ts.timestamp(), kpi, float(v) * scale, self.source, dict(self.dimensions[kpi]) or None)
                    )
            token = resp.get("NextToken")
            if not token:
                return out
            kwargs["NextToken"] = token

    def collect(self) -> list[Sample]:
        end = time.time()
        fresh = []
        for s in self.collect_range(end - self.lookback_s, end):
            key = (s.kpi, s.ts)
            if key not in self._seen:
                self._seen.add(key)
                fresh.append(s)
        return fresh


# ---------------------------------------------------------------------------------------------------- store
# ---------------------------------------------------------------------------------------------------- Kafka
#: The KPIs the Kafka collector owns (MSK's SumOffsetLag, MaxOffsetLag, EstimatedMaxTimeLag).
KAFKA_LAG_KPIS = ("consumer_lag_messages", "consumer_lag_max_partition_messages", "consumer_lag_seconds")


class KafkaLagCollector:
    """Consumer lag the Kafka way, at the sampler's interval: the totals under the campaign's lag KPIs and
    one ``consumer_lag_partition_messages`` sample per group, topic and partition (labelled)."""

    source = "kafka"
    min_interval_s = 0.0

    def __init__(
        self, bootstrap: str, groups: dict[str, list[str]] | None = None, security_protocol: str = "PLAINTEXT"
    ):
        from soundcheck.kafka_lag import BlockingGroupLagReader

        self.groups = groups or None
        self.reader = BlockingGroupLagReader(bootstrap, security_protocol=security_protocol)

    def collect(self) -> list[Sample]:
        from soundcheck.kafka_lag import summarize

        lags = self.reader.read(self.groups)
        ts = time.time()
        out = [Sample(ts, k, v, self.source) for k, v in summarize(lags).items()]
        out += [
            Sample(
                ts,
                "consumer_lag_partition_messages",
                float(x.lag),
                self.source,
                {"group": x.group, "topic": x.topic, "partition": str(x.partition)},
            )
            for x in lags
        ]
        return out

    def close(self) -> None:
        self.reader.close()


def kafka_bootstrap(profile: Profile, endpoints: Endpoints | None) -> str | None:
    """The cluster to read lag from: the profile's (``${Output}`` names a stack output, e.g. MSK's
    ``${KafkaBootstrapBrokers}``), else the local stack's broker; None: no Kafka. Every broker host is
    checked against the target's allowlist before a connection."""
    from soundcheck.allowlist import check_host

    k = profile.metrics.kafka
    if not k.enabled:
        return None
    extra = (endpoints.extra or {}) if endpoints else {}
    bootstrap = Template(k.bootstrap_servers).safe_substitute(extra) if k.bootstrap_servers else None
    bootstrap = bootstrap or extra.get("kafka_bootstrap")
    if bootstrap:
        if "${" in bootstrap:
            raise ValueError(
                f"metrics.kafka.bootstrap_servers names a stack output the stack does not have: {bootstrap}"
            )
        for server in bootstrap.split(","):
            check_host(server.strip().rsplit(":", 1)[0], profile.target.allowlist)
    return bootstrap


def write_samples(engine: Engine, run_id: str, samples: Iterable[Sample], scenario_run_id: int | None = None) -> int:
    rows = [
        {
            "run_id": run_id,
            "scenario_run_id": scenario_run_id,
            "ts": s.ts,
            "kpi": s.kpi,
            "value": s.value,
            "labels": s.labels,
            "source": s.source,
        }
        for s in samples
    ]
    if rows:
        with engine.begin() as c:
            c.execute(insert(server_samples), rows)
    return len(rows)


# ---------------------------------------------------------------------------------------------------- sampler
@dataclass
class SamplerStats:
    ticks: int = 0
    samples: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # per source, plus "store" and "callback"
    last_error: str | None = None
    cpu_s: float = 0.0  # CPU time the sampling thread used
    wall_s: float = 0.0

    @property
    def cpu_share(self) -> float:
        """CPU seconds per wall second (1.0 = one core busy)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


class Sampler:
    """Runs collectors every `interval_s` on a daemon thread until stopped or `max_duration_s` is up."""

    def __init__(
        self,
        collectors: list[Collector],
        *,
        interval_s: float = 2.0,
        engine: Engine | None = None,
        run_id: str | None = None,
        scenario_run_id: int | None = None,
        on_batch: Callable[[list[Sample]], None] | None = None,
        max_duration_s: float = 4 * 3600,
        keep_last: int = 10_000,
    ):
        if engine is not None and run_id is None:
            raise ValueError("writing samples needs the run_id")
        self.collectors = collectors
        self.interval_s = max(0.05, interval_s)
        self.engine, self.run_id, self.scenario_run_id = engine, run_id, scenario_run_id
        self.on_batch = on_batch
        self.max_duration_s = max_duration_s
        self.stats = SamplerStats()
        self.recent: deque[Sample] = deque(maxlen=keep_last)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._due = [0.0] * len(collectors)

    def start(self) -> Sampler:
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._thread = threading.Thread(target=self._run, name="soundcheck-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 15.0) -> SamplerStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.stats

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _fail(self, what: str, err: BaseException) -> None:
        self.stats.failures[what] = self.stats.failures.get(what, 0) + 1
        self.stats.last_error = f"{what}: {type(err).__name__}: {err}"[:500]
        if self.stats.failures[what] in (1, 10, 100, 1000):
            log.warning("sampler %s failed (%d so far): %s", what, self.stats.failures[what], err)

    def tick(self) -> list[Sample]:
        """One round: every collector that is due; errors counted, never raised."""
        cpu0 = time.thread_time()
        batch: list[Sample] = []
        now = time.monotonic()
        for i, c in enumerate(self.collectors):
            if now < self._due[i]:
                continue
            self._due[i] = now + max(self.interval_s, c.min_interval_s) - 0.01
            try:
                batch.extend(c.collect())
            except Exception as e:
                self._fail(c.source, e)
        if batch and self.engine is not None:
            try:
                write_samples(self.engine, self.run_id or "", batch, self.scenario_run_id)
            except Exception as e:
                self._fail("store", e)
        if batch and self.on_batch is not None:
            try:
                self.on_batch(batch)
            except Exception as e:
                self._fail("callback", e)
        self.recent.extend(batch)
        self.stats.ticks += 1
        self.stats.samples += len(batch)
        self.stats.cpu_s += time.thread_time() - cpu0
        return batch

    def _run(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.max_duration_s
        next_at = t0
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.tick()
            self.stats.wall_s = time.monotonic() - t0
            next_at += self.interval_s
            delay = next_at - time.monotonic()
            if delay < 0:  # a slow round: skip the missed slots instead of bursting
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)
        self.stats.wall_s = time.monotonic() - t0
        close_all(self.collectors)


def close_all(collectors: Iterable[Collector]) -> None:
    """Release the collectors' connections (HTTP clients, the Kafka reader's loop); errors ignored."""
    for c in collectors:
        close = getattr(c, "close", None)
        if close is not None:
            try:
                close()
            except Exception as e:  # noqa: BLE001 - closing must not fail a stage
                log.debug("closing %s collector: %s", c.source, e)


# ---------------------------------------------------------------------------------------------------- from a profile
def build_collectors(profile: Profile, endpoints: Endpoints | None = None) -> list[Collector]:
    """The collectors a profile asks for: its `metrics.source` plus CloudWatch when it has queries."""
    m = profile.metrics
    out: list[Collector] = []
    metric_map = load_metric_map(m.map)
    queries = dict(m.cloudwatch.queries)
    bootstrap = kafka_bootstrap(profile, endpoints)
    if bootstrap:  # lag from the cluster itself; the other sources' lag entries would count it twice
        metric_map = {k: v for k, v in metric_map.items() if k not in KAFKA_LAG_KPIS}
        queries = {k: v for k, v in queries.items() if k not in KAFKA_LAG_KPIS}
        out.append(KafkaLagCollector(bootstrap, m.kafka.groups, m.kafka.security_protocol))
    if m.source == "scrape":
        url = (
            m.scrape_url
            or (endpoints.metrics_url if endpoints else None)
            or (f"{endpoints.base_url.rstrip('/')}/metrics" if endpoints else None)
        )
        if not url:
            raise ValueError("metrics.scrape_url is needed: no target endpoints to derive it from")
        from soundcheck.allowlist import guarded_client

        # The scrape goes to the target: the same allowlist as the load (refused before connecting).
        client = guarded_client(profile.target.allowlist, timeout=5.0, trust_env=False)
        out.append(ScrapeCollector(url, metric_map, client=client))
    elif m.source == "prometheus":
        url = m.prometheus_url or (endpoints.prometheus_url if endpoints else None)
        if not url:
            raise ValueError("metrics.prometheus_url is needed: the environment runs no Prometheus server")
        out.append(PrometheusCollector(url, metric_map, step_s=m.interval_s))
    if queries:
        out.append(
            CloudWatchCollector(
                queries,
                region=m.cloudwatch.region,
                endpoint_url=m.cloudwatch.endpoint_url,
                placeholders=endpoints.extra if endpoints else {},
            )
        )
    return out


def start_sampler(
    profile: Profile,
    endpoints: Endpoints | None,
    engine: Engine,
    run_id: str,
    scenario_run_id: int | None = None,
    on_batch: Callable[[list[Sample]], None] | None = None,
    max_duration_s: float = 4 * 3600,
) -> Sampler:
    """A started Sampler for a scenario stage; call ``.stop()`` when the load ends."""
    return Sampler(
        build_collectors(profile, endpoints),
        interval_s=profile.metrics.interval_s,
        engine=engine,
        run_id=run_id,
        scenario_run_id=scenario_run_id,
        on_batch=on_batch,
        max_duration_s=max_duration_s,
    ).start()


def backfill(
    profile: Profile,
    endpoints: Endpoints | None,
    engine: Engine,
    run_id: str,
    start: float,
    end: float,
    scenario_run_id: int | None = None,
) -> int:
    """After a stage: read [start, end] again from sources that keep history (Prometheus, CloudWatch).

    CloudWatch publishes minutes late, so its samples for a stage are complete only afterwards.
    """
    n = 0
    collectors = build_collectors(profile, endpoints)
    try:
        for c in collectors:
            if isinstance(c, PrometheusCollector | CloudWatchCollector):
                n += write_samples(engine, run_id, c.collect_range(start, end), scenario_run_id)
    finally:
        close_all(collectors)
    return n


# ---------------------------------------------------------------------------------------------------- Prefect
@task(name="collect-server-metrics-once", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def collect_once_task(
    profile: Profile, endpoints: Endpoints | None, store_url: str, run_id: str, scenario_run_id: int | None = None
) -> int:
    from soundcheck.store import open_store

    engine = open_store(store_url)
    collectors = build_collectors(profile, endpoints)
    try:
        samples = [s for c in collectors for s in c.collect()]
    finally:
        close_all(collectors)
    return write_samples(engine, run_id, samples, scenario_run_id)


@task(name="backfill-server-metrics", retries=3, retry_delay_seconds=10, cache_policy=NO_CACHE)
def backfill_task(
    profile: Profile,
    endpoints: Endpoints | None,
    store_url: str,
    run_id: str,
    start: float,
    end: float,
    scenario_run_id: int | None = None,
) -> int:
    from soundcheck.store import open_store

    return backfill(profile, endpoints, open_store(store_url), run_id, start, end, scenario_run_id)
