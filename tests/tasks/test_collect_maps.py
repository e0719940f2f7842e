"""Metric maps and the PromQL subset a bare /metrics scrape evaluates, on fixed exposition text."""

from __future__ import annotations

import math

import httpx
import pytest

from tasks.collect import ScrapeCollector, histogram_quantile, load_metric_map, parse_expr

SPRING = """\
# HELP hikaricp_connections_active Active connections
# TYPE hikaricp_connections_active gauge
hikaricp_connections_active{pool="HikariPool-1",} 4.0
hikaricp_connections_active{pool="HikariPool-2",} 1.0
# TYPE hikaricp_connections_max gauge
hikaricp_connections_max{pool="HikariPool-1",} 5.0
hikaricp_connections_max{pool="HikariPool-2",} 5.0
# TYPE hikaricp_connections_pending gauge
hikaricp_connections_pending{pool="HikariPool-1",} 3.0
# TYPE hikaricp_connections_timeout_total counter
hikaricp_connections_timeout_total{pool="HikariPool-1",} 2.0
# TYPE jvm_memory_used_bytes gauge
jvm_memory_used_bytes{area="heap",id="G1 Eden Space",} 1.0E8
jvm_memory_used_bytes{area="heap",id="G1 Old Gen",} 3.0E8
jvm_memory_used_bytes{area="nonheap",id="Metaspace",} 9.0E7
# TYPE jvm_memory_max_bytes gauge
jvm_memory_max_bytes{area="heap",id="G1 Eden Space",} -1.0
jvm_memory_max_bytes{area="heap",id="G1 Old Gen",} 4.294967296E9
# TYPE jvm_gc_pause_seconds_max gauge
jvm_gc_pause_seconds_max{action="end of minor GC",cause="G1 Evacuation Pause",} 0.012
jvm_gc_pause_seconds_max{action="end of major GC",cause="G1 Compaction Pause",} 0.087
# TYPE process_cpu_usage gauge
process_cpu_usage 0.25
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 6.5E8
# TYPE kafka_consumer_fetch_manager_records_lag_max gauge
kafka_consumer_fetch_manager_records_lag_max{client_id="c-0",} 40.0
kafka_consumer_fetch_manager_records_lag_max{client_id="c-1",} 2.0
"""


def _collector(texts: list[str], metric_map: dict[str, str]) -> ScrapeCollector:
    it = iter(texts)
    transport = httpx.MockTransport(lambda req: httpx.Response(200, text=next(it)))
    return ScrapeCollector("http://127.0.0.1:9/metrics", metric_map, client=httpx.Client(transport=transport))


def test_spring_boot_map_on_micrometer_names():
    got = {s.kpi: s.value for s in _collector([SPRING], load_metric_map("spring-boot")).collect()}
    assert got == {
        "db_pool_size": 10.0,
        "db_pool_in_use": 5.0,
        "db_pool_waiting": 3.0,
        "db_pool_timeouts_total": 2.0,
        "heap_used_bytes": 4.0e8,
        "heap_max_bytes": 4.294967296e9 - 1,
        "gc_pause_max_s": 0.087,
        "rss_bytes": 6.5e8,
        "cpu_percent": 25.0,
        "consumer_lag_messages": 42.0,
    }


def test_rate_and_counter_reset_and_labels_without_aggregation():
    m = {
        "cpu_percent": "sum(rate(cpu_seconds_total[30s])) * 100",
        "per_pool": 'pool_in_use{pool=~"a|b"}',
        "cpu_s": "sum(increase(cpu_seconds_total[30s]))",
    }
    texts = [
        'cpu_seconds_total 10\npool_in_use{pool="a"} 1\npool_in_use{pool="c"} 9\n',
        'cpu_seconds_total 10.5\npool_in_use{pool="a"} 2\npool_in_use{pool="b"} 3\n',
        "cpu_seconds_total 0.2\n",
    ]
    c = _collector(texts, m)
    first = c.collect()
    assert [(s.kpi, s.value, s.labels) for s in first] == [("per_pool", 1.0, {"pool": "a"})]
    c._previous = {k: (ts - 1.0, v) for k, (ts, v) in c._previous.items()}  # pretend one second passed
    second = {(s.kpi, (s.labels or {}).get("pool")): s.value for s in c.collect()}
    assert second[("per_pool", "a")] == 2.0 and second[("per_pool", "b")] == 3.0
    assert second[("cpu_percent", None)] == pytest.approx(50.0, rel=0.05)
    assert second[("cpu_s", None)] == pytest.approx(0.5)  # the same counter, a second expression
    c._previous = {k: (ts - 1.0, v) for k, (ts, v) in c._previous.items()}
    third = {s.kpi: s.value for s in c.collect()}  # the counter restarted from 0: its value is the increase
    assert third["cpu_percent"] == pytest.approx(20.0, rel=0.05)
    assert third["cpu_s"] == pytest.approx(0.2)


def test_histogram_quantile_over_bucket_increases():
    m = {"gc_pause_max_s": "histogram_quantile(1, sum by (le) (rate(gc_pause_seconds_bucket[30s])))"}

    def text(counts):
        les = ["0.001", "0.01", "0.1", "+Inf"]
        return "".join(
            f'gc_pause_seconds_bucket{{gen="{g}",le="{le}"}} {n}\n'
            for g in ("0", "1")
            for le, n in zip(les, counts, strict=True)
        )

    c = _collector([text([5, 6, 6, 6]), text([5, 6, 6, 6]), text([5, 8, 9, 9])], m)
    assert c.collect() == []  # no previous scrape
    assert c.collect() == []  # nothing observed since
    [s] = c.collect()
    assert s.value == pytest.approx(0.1)  # a pause landed in the (0.01, 0.1] bucket
    assert histogram_quantile(0.5, [(1.0, 0), (2.0, 10), (math.inf, 10)]) == 1.5
    assert histogram_quantile(0.99, [(1.0, 10), (math.inf, 20)]) == 1.0  # top bucket: its lower edge


@pytest.mark.parametrize("bad", ["rate(x[1m]) + rate(y[1m])", "sum by (a) (x)", "topk(3, x)", 'x{a="b"'])
def test_expressions_beyond_the_subset_are_refused_with_the_expression(bad):
    with pytest.raises(ValueError, match="beyond what a /metrics scrape can evaluate|bad label matcher"):
        parse_expr(bad)


def test_maps_by_name_path_or_inline(tmp_path):
    assert load_metric_map("reference")["db_pool_in_use"] == "sum(sut_db_pool_in_use)"
    f = tmp_path / "m.yaml"
    f.write_text("db_pool_in_use: sum(my_pool_active)\n")
    assert load_metric_map(str(f)) == {"db_pool_in_use": "sum(my_pool_active)"}
    assert load_metric_map({"a": "b"}) == {"a": "b"}
    with pytest.raises(ValueError, match="unknown metric map 'nope'; known: reference, spring-boot"):
        load_metric_map("nope")
    for name in ("reference", "spring-boot"):  # every shipped expression is evaluable by a bare scrape
        for expr in load_metric_map(name).values():
            parse_expr(expr)
