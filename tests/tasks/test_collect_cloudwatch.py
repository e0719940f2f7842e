"""The CloudWatch collector (GetMetricData) against moto in server mode, with the staging profile's queries."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from soundcheck.profile import CloudWatchQuery, load_profile
from tasks.collect import CloudWatchCollector, build_collectors
from tests.moto_fixture import moto_url, session  # noqa: F401 - fixture

OUTPUTS = {
    "DbInstanceId": "sc-db-1",
    "CacheReplicationGroupId": "sc-cache",
    "LoadBalancer": "app/sc-alb/50dc6c49",
    "AutoScalingGroupName": "sc-asg",
    "KafkaClusterName": "sc-kafka",
}


def _put(cw, namespace: str, metric: str, dims: dict[str, str], points: list[tuple[float, float]]) -> None:
    cw.put_metric_data(
        Namespace=namespace,
        MetricData=[
            {
                "MetricName": metric,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
                "Timestamp": datetime.fromtimestamp(ts, UTC),
                "Value": v,
            }
            for ts, v in points
        ],
    )


def test_staging_queries_read_rds_elasticache_alb_and_msk(moto_url):  # noqa: F811
    cw = session().client("cloudwatch", endpoint_url=moto_url)
    now = (int(time.time()) // 60) * 60
    t1, t2 = now - 180, now - 120
    kafka = {"Cluster Name": "sc-kafka", "Consumer Group": "payment-saga", "Topic": "payment-events"}
    _put(cw, "AWS/RDS", "CPUUtilization", {"DBInstanceIdentifier": "sc-db-1"}, [(t1, 35.0), (t2, 91.5)])
    _put(cw, "AWS/RDS", "CPUUtilization", {"DBInstanceIdentifier": "another-db"}, [(t1, 5.0)])
    _put(cw, "AWS/ElastiCache", "BytesUsedForCache", {"CacheClusterId": "sc-cache-001"}, [(t1, 3.0e8), (t2, 3.2e8)])
    _put(cw, "AWS/ApplicationELB", "RequestCount", {"LoadBalancer": "app/sc-alb/50dc6c49"}, [(t1, 100.0), (t1, 50.0)])
    _put(cw, "AWS/Kafka", "SumOffsetLag", kafka, [(t1, 120.0), (t2, 40.0)])
    _put(cw, "AWS/Kafka", "MaxOffsetLag", kafka, [(t2, 17.0)])
    _put(cw, "AWS/Kafka", "EstimatedMaxTimeLag", kafka, [(t2, 0.8)])

    profile = load_profile("deployments/staging.yaml")
    queries = {
        k: q.model_copy(update={"stat": "Maximum" if q.stat.startswith("p") else q.stat})
        for k, q in profile.metrics.cloudwatch.queries.items()
    }  # moto computes no percentiles
    c = CloudWatchCollector(
        queries,
        region="ap-northeast-2",
        placeholders=OUTPUTS,
        client=session().client("cloudwatch", endpoint_url=moto_url),
    )
    got: dict[str, list[tuple[float, float]]] = {}
    for s in c.collect_range(now - 600, now):
        got.setdefault(s.kpi, []).append((s.ts, s.value))
        assert s.source == "cloudwatch"
    assert sorted(got["db_cpu_percent"]) == [(t1, 35.0), (t2, 91.5)]  # the other instance is not mixed in
    assert sorted(got["redis_memory_bytes"]) == [(t1, 3.0e8), (t2, 3.2e8)]
    assert got["alb_request_count"] == [(t1, 150.0)]  # Sum over the minute
    assert sorted(got["consumer_lag_messages"]) == [(t1, 120.0), (t2, 40.0)]
    assert got["consumer_lag_max_partition_messages"] == [(t2, 17.0)]
    assert got["consumer_lag_seconds"] == [(t2, 0.8)]
    assert "cpu_percent" not in got  # nothing was published for the group

    # live use: a second call returns only datapoints it has not returned before
    assert len(c.collect()) == sum(len(v) for v in got.values())
    _put(cw, "AWS/RDS", "CPUUtilization", {"DBInstanceIdentifier": "sc-db-1"}, [(now - 60, 50.0)])
    assert [(s.kpi, s.value) for s in c.collect()] == [("db_cpu_percent", 50.0)]


def test_scale_turns_milliseconds_into_seconds(moto_url):  # noqa: F811
    cw = session().client("cloudwatch", endpoint_url=moto_url)
    now = (int(time.time()) // 60) * 60
    _put(cw, "Custom/App", "OutboxAgeMs", {"Service": "pay"}, [(now - 120, 2500.0)])
    q = CloudWatchQuery(
        namespace="Custom/App", metric="OutboxAgeMs", dimensions={"Service": "pay"}, stat="Maximum", scale=0.001
    )
    c = CloudWatchCollector({"outbox_oldest_age_s": q}, region="ap-northeast-2", client=cw)
    assert [(s.kpi, s.value) for s in c.collect_range(now - 600, now)] == [("outbox_oldest_age_s", 2.5)]


def test_a_dimension_naming_a_missing_output_is_a_clear_error():
    q = CloudWatchQuery(namespace="AWS/RDS", metric="CPUUtilization", dimensions={"DBInstanceIdentifier": "${DbId}"})
    with pytest.raises(ValueError, match="DBInstanceIdentifier.*'DbId'.*does not output"):
        CloudWatchCollector({"db_cpu_percent": q}, region="ap-northeast-2", placeholders={}, client=object())


def test_staging_profile_builds_prometheus_and_cloudwatch_collectors(monkeypatch):
    from infra.endpoints import Endpoints

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    profile = load_profile("deployments/staging.yaml")
    ep = Endpoints(base_url="http://internal-alb", database_url=None, metrics_url=None, redis_url=None, extra=OUTPUTS)
    kinds = [type(c).__name__ for c in build_collectors(profile, ep)]
    assert kinds == ["PrometheusCollector", "CloudWatchCollector"]
