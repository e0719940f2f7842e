"""The outbox publisher's retry rule and the idempotent consumers it feeds (in-process, against SQLite
and an embedded Redis)."""

from __future__ import annotations

import asyncio
import datetime as dt

import redis.asyncio as aioredis
from sqlalchemy import insert, select

from infra.sut import outbox, saga
from infra.sut.bus import Message
from infra.sut.context import Services
from infra.sut.db import Database
from infra.sut.redis_server import EmbeddedRedis
from infra.sut.settings import Settings
from infra.sut.tables import payment_outbox, point_history, point_wallet, utcnow


class RecordingBus:
    def __init__(self, fail: bool = False):
        self.fail, self.sent = fail, []

    async def publish(self, type_, key, payload):
        if self.fail:
            raise ConnectionError("bus down")
        self.sent.append((type_, key, payload))
        return "1-0"


async def _services(tmp_path, bus, **settings) -> tuple[Services, EmbeddedRedis]:
    emb = EmbeddedRedis().start()
    s = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'unit.db'}", redis_url=emb.url, **settings)
    db = Database(s)
    await db.create_schema(drop=True)
    r = aioredis.from_url(emb.url, decode_responses=True)
    return Services(settings=s, db=db, redis=r, bus=bus), emb


async def _close(svc: Services, emb: EmbeddedRedis) -> None:
    await svc.redis.aclose()
    await svc.db.dispose()
    emb.stop()


async def _pending_outbox_row(svc: Services, aggregate_id: int, payload: str) -> None:
    async with svc.db.begin() as conn:
        await conn.execute(
            insert(payment_outbox).values(
                aggregate_id=aggregate_id,
                event_type="UsePointCommand",
                payload=payload,
                status="PENDING",
                attempts=0,
                next_attempt_at=utcnow(),
                created_at=utcnow(),
            )
        )


def test_outbox_retries_then_fails(tmp_path):
    async def run():
        bus = RecordingBus(fail=True)
        svc, emb = await _services(tmp_path, bus, outbox_retry_seconds=0.0, outbox_max_retries=3)
        try:
            await _pending_outbox_row(svc, 1, "{}")
            states = []
            for _ in range(5):
                await outbox.publish_once(svc)
                async with svc.db.connect() as conn:
                    states.append(
                        tuple((await conn.execute(select(payment_outbox.c.status, payment_outbox.c.attempts))).one())
                    )
            # a healthy bus publishes the next row and marks it PUBLISHED
            bus.fail = False
            await _pending_outbox_row(svc, 2, '{"paymentId": 2}')
            published = await outbox.publish_once(svc)
            return states, published, bus.sent
        finally:
            await _close(svc, emb)

    states, published, sent = asyncio.run(run())
    assert states == [("PENDING", 1), ("PENDING", 2), ("PENDING", 3), ("FAILED", 4), ("FAILED", 4)]
    assert published == 1 and sent == [("UsePointCommand", "outbox:2", {"paymentId": 2})]


def test_failed_publish_waits_for_the_retry_interval(tmp_path):
    async def run():
        svc, emb = await _services(tmp_path, RecordingBus(fail=True), outbox_retry_seconds=60.0)
        try:
            await _pending_outbox_row(svc, 1, "{}")
            await outbox.publish_once(svc)
            await outbox.publish_once(svc)
            async with svc.db.connect() as conn:
                return (await conn.execute(select(payment_outbox.c.attempts, payment_outbox.c.next_attempt_at))).one()
        finally:
            await _close(svc, emb)

    attempts, next_at = asyncio.run(run())
    assert attempts == 1
    assert next_at - utcnow() > dt.timedelta(seconds=55)


def test_redelivered_command_changes_nothing(tmp_path):
    async def run():
        bus = RecordingBus()
        svc, emb = await _services(tmp_path, bus)
        try:
            async with svc.db.begin() as conn:
                await conn.execute(
                    insert(point_wallet).values(user_id=5, balance=200_000, created_at=utcnow(), updated_at=utcnow())
                )
            msg = Message(
                "1-0",
                "points",
                "UsePointCommand",
                "outbox:9",
                {"paymentId": 9, "userId": 5, "amount": 150_000, "reservationId": "r"},
            )
            await asyncio.gather(saga.on_points(svc, msg), saga.on_points(svc, msg))
            await saga.on_points(svc, msg)
            async with svc.db.connect() as conn:
                balance = (await conn.execute(select(point_wallet.c.balance))).scalar()
                uses = (await conn.execute(select(point_history.c.delta))).all()
            return balance, uses, bus.sent
        finally:
            await _close(svc, emb)

    balance, uses, sent = asyncio.run(run())
    assert balance == 50_000 and len(uses) == 1
    assert {(t, k) for t, k, _p in sent} == {("PointUsedEvent", "PointUsedEvent:9")}
