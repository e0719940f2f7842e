"""Runs the consumer groups: ``consumer_concurrency`` readers per group per process.

Each reader pulls up to ``consumer_batch`` messages (Kafka's max-poll-records), handles them one by one
and acknowledges each after its handler succeeded (on Kafka: commits its offset). A message whose handler
failed is delivered again after ``consumer_claim_idle_seconds`` (handlers are idempotent); on Kafka the
rest of its partition waits behind it, since an offset commit covers everything before it.
"""

from __future__ import annotations

import asyncio
import logging
import os

from redis.exceptions import ResponseError

from infra.sut import metrics
from infra.sut.bus import GROUPS
from infra.sut.context import Services
from infra.sut.saga import HANDLERS

log = logging.getLogger("infra.sut.consumers")


async def _handle(svc: Services, topic: str, group: str, consumer: str, msgs) -> None:
    held: set[str] = set()  # partitions behind a failed message (ordered buses)
    for msg in msgs:
        partition = msg.id.split(":")[0]
        if partition in held:
            continue
        try:
            await HANDLERS[topic](svc, msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.CONSUMED.labels(group, msg.type, "error").inc()
            log.exception("handler failed for %s %s (delivered again later)", msg.type, msg.key)
            await svc.bus.retry_later(topic, group, consumer, msg)
            if svc.bus.ordered:
                held.add(partition)
            continue
        await svc.bus.ack(topic, group, consumer, msg.id)
        metrics.CONSUMED.labels(group, msg.type, "ok").inc()


async def _reader(svc: Services, topic: str, group: str, name: str, claims: bool) -> None:
    s = svc.settings
    idle_ms = int(s.consumer_claim_idle_seconds * 1000)
    loop = asyncio.get_running_loop()
    next_claim = loop.time() + s.consumer_claim_idle_seconds
    while True:
        try:
            msgs = await svc.bus.read(topic, group, name, s.consumer_batch, s.consumer_block_ms)
            await _handle(svc, topic, group, name, msgs)
            if claims and loop.time() >= next_claim:
                next_claim = loop.time() + max(1.0, s.consumer_claim_idle_seconds / 2)
                await _handle(
                    svc, topic, group, name, await svc.bus.claim_stale(topic, group, name, idle_ms, s.consumer_batch)
                )
        except asyncio.CancelledError:
            raise
        except ResponseError as e:
            if "NOGROUP" in str(e):  # stream deleted (admin reset): recreate and go on
                await svc.bus.ensure_group(topic, group)
            else:
                log.exception("bus read failed")
                await asyncio.sleep(0.5)
        except Exception:
            log.exception("consumer %s failed", name)
            await asyncio.sleep(0.5)


async def start_consumers(svc: Services) -> list[asyncio.Task]:
    tasks = []
    for topic, group in GROUPS.items():
        await svc.bus.ensure_group(topic, group)
        for i in range(svc.settings.consumer_concurrency):
            name = f"{group}-{os.getpid()}-{i}"
            tasks.append(asyncio.create_task(_reader(svc, topic, group, name, claims=(i == 0)), name=name))
    return tasks
