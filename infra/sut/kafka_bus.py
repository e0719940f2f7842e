"""The bus on a Kafka-protocol broker (aiokafka): the plan's Saga as it runs in production.

* Topics ``{prefix}{topic}`` with ``kafka_partitions`` partitions (the plan's 3); keys are the outbox
  row or reply id, so one payment's messages keep their order within a partition.
* Producer ``acks=all``; the outbox's own retry loop is the plan's ``retries=3``. The idempotent producer
  is off: Tansu refuses InitProducerId, and duplicates are absorbed by idempotent consumers anyway.
* Each reader is one consumer in the group (``consumer_concurrency`` of them per process), so raising
  the concurrency adds parallelism up to the partition count and no further, as in Kafka.
* ``ack`` commits the message's offset + 1; a message whose handler failed is not committed: its
  partition is rewound to it (`retry_later`) and it is read again, after ``consumer_claim_idle_seconds``.
* ``lag`` is committed offset against log-end offset (`soundcheck.kafka_lag`), shared by every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

import orjson

from infra.sut.bus import GROUPS, ROUTES, Message
from soundcheck.kafka_lag import GroupLagReader

log = logging.getLogger("infra.sut.kafka_bus")


def topic_name(prefix: str, topic: str) -> str:
    """Kafka topic names allow [a-zA-Z0-9._-]: the Redis-style prefix ``sc:run:`` becomes ``sc.run.``."""
    return re.sub(r"[^a-zA-Z0-9._-]", ".", prefix) + topic


class KafkaBus:
    ordered = True  # a failed message holds back the rest of its partition (offsets are positions)

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        partitions: int = 3,
        retry_after_s: float = 30.0,
        session_timeout_ms: int = 6000,
    ):
        self.bootstrap, self.prefix, self.partitions = bootstrap, prefix, partitions
        self.session_timeout_ms = session_timeout_ms
        self.retry_after_s = retry_after_s
        self._producer = None
        self._consumers: dict[str, object] = {}
        self._lag = GroupLagReader(bootstrap)
        self._lock = asyncio.Lock()
        self._held: dict[tuple[str, int], float] = {}  # partition → when a failed message may be retried

    def topic(self, topic: str) -> str:
        return topic_name(self.prefix, topic)

    async def _producer_client(self):
        from aiokafka import AIOKafkaProducer

        async with self._lock:
            if self._producer is None:
                p = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    acks="all",
                    enable_idempotence=False,
                    linger_ms=0,
                    request_timeout_ms=10_000,
                )
                await p.start()
                self._producer = p
        return self._producer

    async def publish(self, type_: str, key: str, payload: dict) -> str:
        producer = await self._producer_client()
        md = await producer.send_and_wait(
            self.topic(ROUTES[type_]), orjson.dumps({"type": type_, "payload": payload}), key=key.encode()
        )
        return f"{md.partition}:{md.offset}"

    async def ensure_group(self, topic: str, group: str) -> None:
        """Create the topic with the plan's partitions (the group itself exists once a consumer joins)."""
        from aiokafka.admin import NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = await self._lag.admin()  # one admin connection: the lag reader's
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(self.topic(topic), self.partitions, 1)])

    async def _consumer(self, topic: str, group: str, consumer: str, count: int):
        from aiokafka import AIOKafkaConsumer

        c = self._consumers.get(consumer)
        if c is None:
            c = AIOKafkaConsumer(
                self.topic(topic),
                bootstrap_servers=self.bootstrap,
                group_id=group,
                client_id=consumer,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=count,
                request_timeout_ms=10_000,
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=max(100, self.session_timeout_ms // 6),
            )
            await c.start()
            self._consumers[consumer] = c
        return c

    async def read(self, topic, group, consumer, count, block_ms):
        from aiokafka import TopicPartition

        c = await self._consumer(topic, group, consumer, count)
        now = time.monotonic()
        for key, until in list(self._held.items()):
            if key[0] == consumer and until <= now:
                del self._held[key]
                tp = TopicPartition(self.topic(topic), key[1])
                if tp in c.assignment():
                    c.resume(tp)
        batch = await c.getmany(timeout_ms=block_ms, max_records=count)
        out: list[Message] = []
        for tp, records in batch.items():
            for r in records:
                body = orjson.loads(r.value)
                key = r.key.decode() if r.key else ""
                out.append(Message(f"{tp.partition}:{r.offset}", topic, body["type"], key, body["payload"]))
        return out

    def _tp(self, topic: str, message_id: str):
        from aiokafka import TopicPartition

        partition, offset = (int(x) for x in message_id.split(":"))
        return TopicPartition(self.topic(topic), partition), offset

    async def ack(self, topic, group, consumer, message_id):
        from aiokafka.structs import OffsetAndMetadata

        tp, offset = self._tp(topic, message_id)
        await self._consumers[consumer].commit({tp: OffsetAndMetadata(offset + 1, "")})

    async def retry_later(self, topic, group, consumer, msg: Message) -> None:
        """Rewind the failed message's partition to it and pause the partition for the redelivery delay."""
        tp, offset = self._tp(topic, msg.id)
        c = self._consumers[consumer]
        if tp in c.assignment():
            c.seek(tp, offset)
            c.pause(tp)
            self._held[(consumer, tp.partition)] = time.monotonic() + self.retry_after_s

    async def claim_stale(self, topic, group, consumer, min_idle_ms, count):
        return []  # Kafka redelivers by position: see retry_later and rebalances

    async def lag(self, topic: str, group: str) -> tuple[int, float]:
        rows = await self._lag.read({group: [self.topic(topic)]})
        ages = [r.age_s for r in rows if r.age_s is not None]
        return sum(r.lag for r in rows), max(ages, default=0.0)

    async def reset(self) -> None:
        """Skip everything already on the topics (a reset service starts from an empty backlog): each
        group's offsets go to the log end, as ``kafka-consumer-groups --reset-offsets --to-latest`` does.
        Running consumers move themselves; with none running, a group-less client commits for the group."""

        for topic in GROUPS:
            await self.ensure_group(topic, GROUPS[topic])
        if self._consumers:
            for c in self._consumers.values():
                parts = c.assignment()
                if parts:
                    await c.seek_to_end(*parts)
                    await c.commit({tp: await c.position(tp) for tp in parts})
            return
        from aiokafka import TopicPartition

        for topic, group in GROUPS.items():
            rows = await self._lag.read({group: [self.topic(topic)]})
            if not sum(r.lag for r in rows):
                continue  # nothing behind: nothing to skip (and no commit a lingering group would refuse)
            await self._commit_ends(group, [TopicPartition(r.topic, r.partition) for r in rows])

    async def _commit_ends(self, group: str, tps: list, wait_s: float = 10.0) -> None:
        """Commit the log ends for a group. Kafka accepts it only from an empty group, and a restarted
        service's old members linger until their session expires: retry until then (bounded), else warn
        and go on (the old messages are then redelivered; consumers are idempotent)."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        deadline = time.monotonic() + wait_s
        while True:
            c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False)
            await c.start()
            try:
                ends = await c.end_offsets(tps)
                c.assign(tps)
                await c.commit(dict(ends.items()))
                return
            except KafkaError as e:
                if time.monotonic() > deadline:
                    log.warning("could not move %s's offsets to the log end (%s); old messages stay", group, e)
                    return
            finally:
                await c.stop()
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        for c in list(self._consumers.values()):
            with contextlib.suppress(Exception):
                await c.stop()
        self._consumers.clear()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        await self._lag.close()
