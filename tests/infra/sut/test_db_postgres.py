"""The reference service on PostgreSQL (by URL), when a local server is reachable: the race, charges,
queue positions and a completed saga, checked with the plan's SQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter

import pytest

from tests.infra.sut.test_app import reserve_and_pay, until_terminal
from tests.sut_harness import auth, client, entered_token, run_sut, together


@pytest.fixture
def pg_url():
    try:
        import psycopg

        conn = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=2", autocommit=True)
    except Exception:  # noqa: BLE001 - unreachable for any reason: skip
        pytest.skip("PostgreSQL on 127.0.0.1:5432 not reachable")
    name = f"sut_test_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE DATABASE {name}")
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    with contextlib.suppress(Exception):
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
    conn.close()


def test_rules_hold_on_postgres(pg_url, tmp_path):
    async def run(base):
        async with client(base) as c:
            toks = await asyncio.gather(*(entered_token(c, u) for u in range(1, 51)))
            race = await together(
                50,
                lambda i: c.post(
                    "/api/v1/reservations/101",
                    json={"seatIds": [1]},
                    headers={**auth(i + 1), "Queue-Token": toks[i], "Idempotency-Key": f"pg-{i}"},
                ),
            )
            charges = await together(
                100, lambda i: c.post("/api/v1/users/me/points/charges", json={"amount": 1000}, headers=auth(77))
            )
            issued = await together(80, lambda i: c.post("/api/v1/queues/tokens/5", headers=auth(200 + i)))
            polled = await together(
                80, lambda i: c.post("/api/v1/queues/enter", headers={"Queue-Token": issued[i].json()["token"]})
            )
            res, pay = await reserve_and_pay(c, 300, [10, 11], 150_000)
            final, _ = await until_terminal(c, 300, pay["paymentId"])
            return race, charges, issued, polled, res, pay, final

    with run_sut(tmp_path, db_url=pg_url, outbox_interval_seconds=0.3) as sut:
        race, charges, issued, polled, res, pay, final = asyncio.run(run(sut.base))
        time.sleep(0.2)
        rows = sut.sql("SELECT COUNT(*) FROM reservation WHERE show_id=101 AND seat_id=1")
        balance = sut.sql("SELECT balance FROM point_wallet WHERE user_id = ?", 77)
        outbox = sut.sql(
            "SELECT event_type, status FROM payment_outbox WHERE aggregate_id = ? ORDER BY created_at", pay["paymentId"]
        )
        seats = set(sut.sql("SELECT status FROM seat WHERE id IN (10, 11)"))
    assert Counter(r.status_code for r in race) == {200: 1, 409: 49} and rows == [(1,)]
    assert Counter(r.status_code for r in charges) == {200: 100} and balance == [(1_100_000,)]
    assert Counter(r.json()["status"] for r in issued) == {"ENTERED": 50, "WAITING": 30}
    assert sorted(r.json()["position"] for r in polled if r.json()["status"] == "WAITING") == list(range(1, 31))
    assert final["status"] == "COMPLETED" and seats == {("SOLD",)}
    assert outbox == [("UsePointCommand", "PUBLISHED"), ("ConfirmSeatsCommand", "PUBLISHED")]
