"""The per-process services every handler and background loop shares."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from infra.sut.bus import Bus
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

    def key(self, *parts) -> str:
        return self.settings.redis_prefix + ":".join(str(p) for p in parts)

    def fault(self, name: str) -> bool:
        return self.settings.fault(name)
