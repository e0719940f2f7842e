"""Consumer lag read the Kafka way (tasks.collect.KafkaLagCollector over soundcheck.kafka_lag): a group's
committed offsets against the log-end offsets, per group, topic and partition, on a real broker."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.endpoints import Endpoints
from soundcheck.allowlist import AllowlistError, check_profile_urls
from soundcheck.profile import parse_profile
from tasks.collect import CloudWatchCollector, KafkaLagCollector, ScrapeCollector, build_collectors


@pytest.fixture(scope="module")
def broker(kafka_broker):
    return kafka_broker


async def _setup(bootstrap: str, topic: str, group: str, produce: int, commit_per_partition: int) -> dict[int, int]:
    """`produce` records over 3 partitions; the group commits `commit_per_partition` on each. → end offsets."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 3, 1)])
    await admin.close()
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await p.start()
    for i in range(produce):
        await p.send_and_wait(topic, b"x", key=f"k{i}".encode())
    await p.stop()
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    tps = [TopicPartition(topic, i) for i in range(3)]
    c.assign(tps)
    ends = await c.end_offsets(tps)
    await c.commit({tp: min(commit_per_partition, ends[tp]) for tp in tps})
    await c.stop()
    return {tp.partition: n for tp, n in ends.items()}


def test_lag_is_log_end_minus_committed_per_partition_with_the_age_of_the_oldest_record(broker):
    ends = asyncio.run(_setup(broker.bootstrap, "lag.payments", "payment-service", 60, 5))
    time.sleep(1.0)
    c = KafkaLagCollector(broker.bootstrap, {"payment-service": ["lag.payments"]})
    try:
        samples = c.collect()
    finally:
        c.close()
    by = {s.kpi: s for s in samples if s.labels is None}
    expected = {p: max(0, n - 5) for p, n in ends.items()}
    assert by["consumer_lag_messages"].value == sum(expected.values()) == 60 - 15
    assert by["consumer_lag_max_partition_messages"].value == max(expected.values())
    assert by["consumer_lag_seconds"].value >= 1.0  # the oldest uncommitted record was written ≥ 1 s ago
    parts = {
        (s.labels["group"], s.labels["topic"], s.labels["partition"]): s.value
        for s in samples
        if s.kpi == "consumer_lag_partition_messages"
    }
    assert parts == {("payment-service", "lag.payments", str(p)): float(n) for p, n in expected.items()}
    assert {s.source for s in samples} == {"kafka"}


def test_groups_and_their_topics_are_discovered_when_the_profile_names_none(broker):
    asyncio.run(_setup(broker.bootstrap, "lag.points", "point-service", 30, 2))
    c = KafkaLagCollector(broker.bootstrap)
    try:
        samples = c.collect()
    finally:
        c.close()
    seen = {(s.labels["group"], s.labels["topic"]) for s in samples if s.labels}
    assert ("point-service", "lag.points") in seen
    assert ("point-service", "lag.payments") not in seen  # a topic the group never touched is not its lag


def test_a_caught_up_group_has_no_lag_and_no_age(broker):
    ends = asyncio.run(_setup(broker.bootstrap, "lag.done", "done-service", 12, 10_000))
    assert sum(ends.values()) == 12
    c = KafkaLagCollector(broker.bootstrap, {"done-service": ["lag.done"]})
    try:
        by = {s.kpi: s.value for s in c.collect() if s.labels is None}
    finally:
        c.close()
    assert by == {
        "consumer_lag_messages": 0.0,
        "consumer_lag_max_partition_messages": 0.0,
        "consumer_lag_seconds": 0.0,
    }


def _endpoints(extra: dict) -> Endpoints:
    base = "http://127.0.0.1:1"
    return Endpoints(base_url=base, database_url=None, metrics_url=base + "/metrics", redis_url=None, extra=extra)


def test_with_kafka_the_other_sources_no_longer_give_lag():
    prof = parse_profile(
        {
            "name": "k",
            "metrics": {
                "cloudwatch": {
                    "queries": {
                        "consumer_lag_messages": {"namespace": "AWS/Kafka", "metric": "SumOffsetLag"},
                        "cpu_percent": {"namespace": "AWS/EC2", "metric": "CPUUtilization"},
                    }
                }
            },
        }
    )
    ep = _endpoints({"kafka_bootstrap": "127.0.0.1:9"})
    kinds = {type(c): c for c in build_collectors(prof, ep)}
    try:
        assert set(kinds) == {ScrapeCollector, CloudWatchCollector, KafkaLagCollector}
        assert "consumer_lag_messages" not in kinds[ScrapeCollector].exprs
        assert set(kinds[CloudWatchCollector].queries) == {"cpu_percent"}
    finally:
        kinds[KafkaLagCollector].close()
    without = build_collectors(prof, _endpoints({}))  # Redis Streams: the map's lag
    assert {type(c) for c in without} == {ScrapeCollector, CloudWatchCollector}
    assert "consumer_lag_messages" in next(c for c in without if isinstance(c, ScrapeCollector)).exprs


def test_a_broker_off_the_allowlist_is_refused_before_a_connection():
    prof = parse_profile({"name": "k", "metrics": {"kafka": {"bootstrap_servers": "127.0.0.1:9092,10.1.2.3:9092"}}})
    with pytest.raises(AllowlistError, match="'10.1.2.3' is not on the allowlist"):
        check_profile_urls(prof)


def test_the_bootstrap_may_name_a_stack_output_and_is_checked_once_resolved():
    from tasks.collect import kafka_bootstrap

    prof = parse_profile({"name": "k", "metrics": {"kafka": {"bootstrap_servers": "${KafkaBootstrapBrokers}"}}})
    check_profile_urls(prof)  # unknown before the stack exists: checked when resolved
    assert kafka_bootstrap(prof, _endpoints({"KafkaBootstrapBrokers": "127.0.0.1:9094"})) == "127.0.0.1:9094"
    with pytest.raises(AllowlistError, match="'10.0.3.7' is not on the allowlist"):
        kafka_bootstrap(prof, _endpoints({"KafkaBootstrapBrokers": "127.0.0.1:9094,10.0.3.7:9094"}))
    with pytest.raises(ValueError, match="names a stack output the stack does not have"):
        kafka_bootstrap(prof, _endpoints({}))
    off = parse_profile({"name": "k", "metrics": {"kafka": {"enabled": False, "bootstrap_servers": "10.0.3.7:9094"}}})
    assert kafka_bootstrap(off, _endpoints({"kafka_bootstrap": "127.0.0.1:1"})) is None
