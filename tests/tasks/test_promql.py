"""The PromQL subset the scrape collector evaluates itself (tasks.promql), without any server."""

from __future__ import annotations

import math

import pytest

from tasks.promql import aggregate, histogram_quantile, parse_expr


def test_the_forms_a_metric_map_uses_parse():
    e = parse_expr('sum(rate(http_requests_total{status=~"5..", route!="/health"}[1m])) * 60')
    assert (e.name, e.agg, e.fn, e.factor) == ("http_requests_total", "sum", "rate", 60.0)
    assert e.matches({"status": "503", "route": "/api"}) and not e.matches({"status": "503", "route": "/health"})
    assert not e.matches({"status": "200", "route": "/api"})
    assert parse_expr("hikaricp_connections_active / 1e3").factor == pytest.approx(1e-3)
    q = parse_expr('histogram_quantile(0.95, sum by (le) (rate(req_seconds_bucket{route="/x"}[30s])))')
    assert (q.name, q.quantile, q.fn, q.matchers) == ("req_seconds_bucket", 0.95, "rate", (("route", "=", "/x"),))


@pytest.mark.parametrize("text", ["rate(a[1m]) + rate(b[1m])", "topk(3, a)", "a{label=unquoted}", "sum by (x) (a)"])
def test_what_a_scrape_cannot_answer_is_refused_by_name(text):
    with pytest.raises(ValueError, match="beyond what a /metrics scrape can evaluate|bad label matcher"):
        parse_expr(text)


def test_aggregations():
    values = [1.0, 2.0, 6.0]
    assert [aggregate(a, values) for a in ("sum", "max", "min", "avg", "count")] == [9.0, 6.0, 1.0, 3.0, 3.0]


def test_histogram_quantile_interpolates_as_prometheus_does():
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)  # rank 50 ends the first bucket
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.1 + 0.4 * (70 - 50) / 40)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.5 + 0.5 * 5 / 10)
    # a rank that falls in +Inf answers the highest finite bound
    assert histogram_quantile(0.99, [(0.1, 10.0), (math.inf, 20.0)]) == pytest.approx(0.1)
