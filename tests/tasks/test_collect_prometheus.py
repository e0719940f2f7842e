"""The Prometheus collector against a real Prometheus server scraping the reference service.

The local stack starts both (Debian's `prometheus` package); skipped when the binary is absent.
"""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from infra.local_stack import LocalStack
from soundcheck.profile import parse_profile
from tasks.collect import PrometheusCollector, Sampler, build_collectors, load_metric_map

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary on PATH")


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    profile = parse_profile(
        {
            "name": "prom-test",
            "environment": {"local": {"seed_users": 50, "prometheus": True}},
            "metrics": {"source": "prometheus", "interval_s": 1.0},
        }
    )
    stack = LocalStack(profile, tmp_path_factory.mktemp("prom") / "run")
    try:
        ep = stack.start()
        # wait for a few scrapes of the service
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = httpx.get(f"{ep.prometheus_url}/api/v1/query", params={"query": 'count_over_time(up{job="sut"}[1m])'})
            res = r.json()["data"]["result"]
            if res and float(res[0]["value"][1]) >= 3:
                break
            time.sleep(0.5)
        else:
            pytest.fail("Prometheus did not scrape the service 3 times in 30 s")
        with httpx.Client(timeout=5) as c:
            for _ in range(20):
                c.get(ep.base_url + "/api/v1/concerts/")
        time.sleep(1.5)
        yield profile, ep
    finally:
        stack.stop()


@pytest.mark.slow
def test_range_queries_return_every_kpi_over_the_window(running):
    profile, ep = running
    assert ep.prometheus_url and ep.prometheus_url.startswith("http://127.0.0.1:")
    c = PrometheusCollector(ep.prometheus_url, load_metric_map("reference"), step_s=1.0)
    end = time.time()
    samples = c.collect_range(end - 3, end)
    by_kpi: dict[str, list] = {}
    for s in samples:
        by_kpi.setdefault(s.kpi, []).append(s)
    assert len(by_kpi["db_pool_size"]) >= 3  # one point per step
    assert {s.value for s in by_kpi["db_pool_size"]} == {5.0}
    assert all(s.source == "prometheus" for s in samples)
    assert min(s.value for s in by_kpi["rss_bytes"]) > 10e6
    assert by_kpi["redis_memory_bytes"][-1].value > 100e3
    assert all(0 <= s.value < 400 for s in by_kpi["cpu_percent"])
    steps = sorted(s.ts for s in by_kpi["db_pool_size"])
    assert all(abs((b - a) - 1.0) < 1e-6 for a, b in zip(steps, steps[1:], strict=False))
    c.close()


def test_sampler_reads_prometheus_live_without_duplicates(running):
    profile, ep = running
    collectors = build_collectors(profile, ep)
    # Lag comes from the broker itself when the stack runs a Kafka bus, from Prometheus otherwise.
    kafka = ["KafkaLagCollector"] if ep.extra.get("kafka_bootstrap") else []
    assert [type(c).__name__ for c in collectors] == [*kafka, "PrometheusCollector"]
    prometheus = collectors[-1]
    assert bool(kafka) != any(k.startswith("consumer_lag") for k in prometheus.map)
    sampler = Sampler(collectors, interval_s=1.0)
    with sampler:
        time.sleep(3.5)
    assert sampler.stats.failures == {}
    pool = [s.ts for s in sampler.recent if s.kpi == "db_pool_size"]
    assert len(pool) >= 3 and len(pool) == len(set(pool))


def test_a_bad_expression_is_reported_not_hidden(running):
    _, ep = running
    c = PrometheusCollector(ep.prometheus_url, {"db_pool_size": "sum(sut_db_pool_size"}, step_s=1.0)
    with pytest.raises(RuntimeError, match="db_pool_size.*(parse|unclosed|expected)"):
        c.collect_range(time.time() - 3, time.time())
