"""The outbox publisher: PENDING rows → bus every ``outbox_interval_seconds``; retries, then FAILED.

A failed publish is retried after ``outbox_retry_seconds`` up to ``outbox_max_retries`` times (Kafka's
``retries=3``: four attempts in all), then the row is marked FAILED. One process publishes at a time
(a short Redis leader lease per pass); duplicates after a crash are absorbed by idempotent consumers.
The ``stuck_outbox`` fault keeps the publisher from ever running.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os

import orjson
from sqlalchemy import select, update

from infra.sut import metrics
from infra.sut.context import Services
from infra.sut.tables import payment_outbox, utcnow

log = logging.getLogger("infra.sut.outbox")


async def publish_once(svc: Services) -> int:
    """One pass over due PENDING rows; returns how many were published."""
    s = svc.settings
    leader = svc.key("outbox", "leader")
    me = f"{os.getpid()}"
    if not await svc.redis.set(leader, me, nx=True, px=30_000):
        return -1
    try:
        async with svc.db.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        payment_outbox.c.id,
                        payment_outbox.c.aggregate_id,
                        payment_outbox.c.event_type,
                        payment_outbox.c.payload,
                        payment_outbox.c.attempts,
                    )
                    .where(payment_outbox.c.status == "PENDING", payment_outbox.c.next_attempt_at <= utcnow())
                    .order_by(payment_outbox.c.id)
                    .limit(s.outbox_batch)
                )
            ).all()
        published, failed = [], []
        for r in rows:
            try:
                await svc.bus.publish(r.event_type, f"outbox:{r.id}", orjson.loads(r.payload))
                published.append(r.id)
                metrics.OUTBOX_PUBLISHED.labels(r.event_type).inc()
            except Exception as e:  # noqa: BLE001 - any bus failure is retried later
                metrics.OUTBOX_PUBLISH_ERRORS.inc()
                failed.append((r, str(e)[:250]))
        now = utcnow()
        if published or failed:
            async with svc.db.begin() as conn:
                if published:
                    await conn.execute(
                        update(payment_outbox)
                        .where(payment_outbox.c.id.in_(published))
                        .values(status="PUBLISHED", published_at=now)
                    )
                for r, err in failed:
                    attempts = r.attempts + 1
                    values = {"attempts": attempts, "last_error": err}
                    if attempts > s.outbox_max_retries:
                        values["status"] = "FAILED"
                    else:
                        values["next_attempt_at"] = now + dt.timedelta(seconds=s.outbox_retry_seconds)
                    await conn.execute(update(payment_outbox).where(payment_outbox.c.id == r.id).values(**values))
        return len(published)
    finally:
        await svc.redis.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1,
            leader,
            me,
        )


async def run_publisher(svc: Services) -> None:
    """Poll on the interval; a nudge (a consumer wrote a follow-up command) runs a pass at once."""
    if svc.fault("stuck_outbox"):
        log.warning("stuck_outbox fault: the outbox publisher never runs")
        return
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(svc.outbox_wake.wait(), svc.settings.outbox_interval_seconds)
        nudged = svc.outbox_wake.is_set()
        svc.outbox_wake.clear()
        try:
            for _ in range(20 if nudged else 1):
                if await publish_once(svc) >= 0:
                    break
                await asyncio.sleep(0.05)  # another process is publishing: try again shortly
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("outbox pass failed")


async def outbox_backlog(svc: Services) -> tuple[int, float, int]:
    """(pending rows, age in s of the oldest pending row, FAILED rows)."""
    from sqlalchemy import func

    async with svc.db.connect() as conn:
        n, oldest = (
            await conn.execute(
                select(func.count(), func.min(payment_outbox.c.created_at)).where(payment_outbox.c.status == "PENDING")
            )
        ).one()
        failed = (await conn.execute(select(func.count()).where(payment_outbox.c.status == "FAILED"))).scalar()
    age = (utcnow() - oldest).total_seconds() if oldest else 0.0
    return int(n), max(0.0, age), int(failed or 0)
