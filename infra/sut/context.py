"""The per-process services every handler and background loop shares."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from infra.sut.bus import Bus, RedisStreamsBus
from infra.sut.db import Database
from infra.sut.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    redis: aioredis.Redis
    bus: Bus
    outbox_wake: asyncio.Event = field(default_factory=asyncio.Event)
    leak: list[bytes] = field(default_factory=list)
    token_writer: object | None = None  # queue.TokenWriter on SQLite (group commit)

    scripts: dict = field(default_factory=dict)

    async def run_script(self, text: str, keys: list, args: list):
        """EVALSHA with the script loaded once (EVAL would ship and hash the whole body on every call)."""
        script = self.scripts.get(text)
        if script is None:
            script = self.scripts[text] = self.redis.register_script(text)
        return await script(keys=keys, args=args)

    def key(self, *parts) -> str:
        return self.settings.redis_prefix + ":".join(str(p) for p in parts)

    def fault(self, name: str) -> bool:
        return self.settings.fault(name)


def make_bus(settings, redis: aioredis.Redis) -> Bus:
    """Kafka when the settings name a broker, else Redis Streams on the service's Redis."""
    if settings.kafka_bootstrap:
        from infra.sut.kafka_bus import KafkaBus

        return KafkaBus(
            settings.kafka_bootstrap,
            settings.redis_prefix,
            partitions=settings.kafka_partitions,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            retry_after_s=settings.consumer_claim_idle_seconds,
        )
    return RedisStreamsBus(redis, settings.redis_prefix)
