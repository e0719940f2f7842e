"""Settings, the outbox publisher's retry rule, idempotent consumers (in-process, against SQLite and an
embedded Redis), and /metrics merged across two worker processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import insert, select
from sut_harness import run_sut

from infra.sut import outbox, saga
from infra.sut.bus import Message
from infra.sut.context import Services
from infra.sut.db import Database
from infra.sut.redis_server import EmbeddedRedis
from infra.sut.settings import Settings, parse_settings
from infra.sut.tables import payment_outbox, point_history, point_wallet, utcnow


def test_settings_precedence_and_validation():
    env = {"SUT_DB_POOL_SIZE": "7", "SUT_FAULTS": "leak", "SUT_CONCERT_CACHE": "true"}
    s = parse_settings(["--db-pool-size", "10", "--outbox-interval-seconds", "2"], environ=env)
    assert (s.db_pool_size, s.outbox_interval_seconds, s.concert_cache, s.fault("leak")) == (10, 2.0, True, True)
    assert parse_settings([], environ={}).db_pool_size == 5
    assert Settings.from_env(s.to_env()) == s
    with pytest.raises(ValueError, match="unknown fault"):
        Settings.from_env({"SUT_FAULTS": "no_such_fault"})
    with pytest.raises(SystemExit):
        parse_settings(["--position-strategy", "guess"], environ={})


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


def test_metrics_are_merged_across_worker_processes(tmp_path):
    with run_sut(tmp_path, workers=2, seed_users=100) as sut:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # /health answers once the first worker is up; wait for both
            if re.search(r"^sut_db_pool_size 10\.0", httpx.get(sut.base + "/metrics").text, re.M):
                break
            time.sleep(0.2)
        with httpx.Client(base_url=sut.base) as c:
            for _ in range(40):
                assert c.get("/api/v1/concerts/").status_code == 200
        counts, sizes = set(), set()
        for _ in range(8):
            with httpx.Client(base_url=sut.base) as c:  # new connections: scrapes land on either worker
                text = c.get("/metrics").text
            m = re.search(
                r'sut_http_request_duration_seconds_count\{method="GET",route="/api/v1/concerts/",'
                r'status="200"\} ([0-9.]+)',
                text,
            )
            counts.add(float(m.group(1)))
            sizes.add(re.search(r"^sut_db_pool_size ([0-9.]+)", text, re.M).group(1))
    assert counts == {40.0}
    assert sizes == {"10.0"}  # 5 per process, summed over the two workers


def test_pool_exhaustion_times_out_and_is_counted(tmp_path):
    from infra.sut import metrics
    from infra.sut.db import PoolTimeout

    async def run():
        db = Database(
            Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}", db_pool_size=1, db_pool_timeout=0.2)
        )
        before = metrics.POOL_TIMEOUTS._value.get()
        try:
            async with db.connect():
                assert db.pool_stats()[1] == 1
                with pytest.raises(PoolTimeout):
                    async with db.connect():
                        pass
                waiting_after = db.waiting
        finally:
            await db.dispose()
        return metrics.POOL_TIMEOUTS._value.get() - before, waiting_after

    counted, waiting = asyncio.run(run())
    assert counted == 1 and waiting == 0


def test_soundcheck_sut_passes_options_through(capsys):
    from typer.testing import CliRunner

    from soundcheck.cli import app

    result = CliRunner().invoke(app, ["sut", "--help"])
    assert result.exit_code == 0
    assert "--db-pool-size" in result.output and "SUT_DB_POOL_SIZE" in result.output
    bad = CliRunner().invoke(app, ["sut", "--faults", "nonsense"])
    assert bad.exit_code == 2
