"""The shipped profiles validate; a bad environment or metrics section is one sentence naming the key."""

from __future__ import annotations

import pytest

from soundcheck.profile import ProfileError, load_profile, parse_profile


def test_shipped_profiles_validate():
    local = load_profile("deployments/local.yaml")
    assert local.environment.kind == "local" and local.metrics.source == "scrape" and local.metrics.map == "reference"
    assert local.environment.local.settings["db_pool_size"] == 5
    staging = load_profile("deployments/staging.yaml")
    assert staging.environment.kind == "aws" and staging.metrics.map == "spring-boot"
    q = staging.metrics.cloudwatch.queries
    assert q["db_cpu_percent"].namespace == "AWS/RDS" and q["db_cpu_percent"].metric == "CPUUtilization"
    assert q["redis_memory_bytes"].namespace == "AWS/ElastiCache"
    assert {q["alb_request_count"].metric, q["alb_target_response_time_s"].metric} == {
        "RequestCount",
        "TargetResponseTime",
    }
    assert {
        q[k].metric for k in ("consumer_lag_messages", "consumer_lag_max_partition_messages", "consumer_lag_seconds")
    } == {"SumOffsetLag", "MaxOffsetLag", "EstimatedMaxTimeLag"}
    assert "${SOUNDCHECK_DB_RO_PASSWORD}" in staging.environment.aws.database_url  # the secret is not in the file


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"environment": {"local": {"workres": 2}}}, "unknown key 'environment.local.workres'"),
        ({"environment": {"aws": {"stack": "x"}}}, "unknown key 'environment.aws.stack'"),
        (
            {
                "metrics": {
                    "cloudwatch": {
                        "queries": {"db_cpu_percent": {"namespace": "AWS/RDS", "metric": "C", "metrik": "C"}}
                    }
                }
            },
            "unknown key 'metrics.cloudwatch.queries.db_cpu_percent.metrik'",
        ),
        ({"environment": {"local": {"workers": "many"}}}, "key 'environment.local.workers' is invalid"),
        ({"environment": {"local": {"prometheus": "maybe"}}}, "key 'environment.local.prometheus' is invalid"),
        ({"metrics": {"interval_s": 0}}, "key 'metrics.interval_s' is invalid: must be greater than 0"),
        ({"metrics": {"source": "graphite"}}, "key 'metrics.source' is invalid"),
        ({"environment": {"kind": "kubernetes"}}, "key 'environment.kind' is invalid"),
        ({"metrics": {"source": "prometheus"}}, "key 'metrics.prometheus_url' is required when metrics.source is"),
        ({"metrics": {"source": "cloudwatch"}}, "key 'metrics.cloudwatch.queries' is required"),
        ({"environment": {"kind": "external"}}, "key 'target.base_url' is required"),
        ({"metrics": {"map": "jboss"}}, "key 'metrics.map' is invalid: no map named 'jboss'"),
        (
            {"metrics": {"cloudwatch": {"queries": {"x": {"metric": "CPUUtilization"}}}}},
            "required key 'metrics.cloudwatch.queries.x.namespace' is missing",
        ),
    ],
)
def test_bad_environment_and_metrics_sections_name_the_key(data, needle):
    with pytest.raises(ProfileError) as e:
        parse_profile({"name": "p", **data}, "profile p.yaml")
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith("profile p.yaml: ")


def test_prometheus_url_may_come_from_the_local_stack():
    p = parse_profile(
        {"name": "p", "environment": {"local": {"prometheus": True}}, "metrics": {"source": "prometheus"}}
    )
    assert p.metrics.prometheus_url is None
