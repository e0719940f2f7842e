"""The reference service's rules under real concurrency, on one running server per backend.

SQLite with Redis always; MariaDB too when it is reachable (skipped otherwise). Each test uses its own
users, seats and queue targets, so they share one server (starting one costs seconds on a busy machine).
R-RACE (TC-1/2/3), R-POINT, R-SAGA at the default 5 s outbox interval, R-SPIKE-10 queue admission with
the plan's count strategy, promotion, admin and metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from tests.sut_harness import ADMIN, auth, backends, client, entered_token, sut_on, together

TC1_SEAT = 1


@pytest.fixture(scope="module", params=backends())
def sut(request, tmp_path_factory):
    with sut_on(request.param, tmp_path_factory.mktemp("core")) as s:
        yield s


async def tc1(base: str, seat: int, users: range) -> list:
    async with client(base) as c:
        tokens = dict(zip(users, await asyncio.gather(*(entered_token(c, u) for u in users)), strict=True))
        first = users[0]

        async def reserve(i: int):
            u = first + i
            return await c.post(
                "/api/v1/reservations/101",
                json={"seatIds": [seat]},
                headers={**auth(u), "Queue-Token": tokens[u], "Idempotency-Key": f"tc1-{u}"},
            )

        return await together(len(users), reserve)


def tc1_violations(responses, rows_for_seat: int) -> list[str]:
    """The plan's TC-1 checks: exactly one 200, 99 × 409, zero 5xx, one database row."""
    codes = Counter(r.status_code for r in responses)
    out = []
    if codes[200] != 1:
        out.append(f"{codes[200]} × 200")
    if codes[409] != len(responses) - 1:
        out.append(f"{codes[409]} × 409")
    if sum(n for code, n in codes.items() if code >= 500):
        out.append(f"5xx: {codes}")
    if rows_for_seat != 1:
        out.append(f"{rows_for_seat} rows for the seat")
    return out


def test_tc1_same_seat_exactly_one_wins(sut):
    rs = asyncio.run(tc1(sut.base, TC1_SEAT, range(1, 101)))
    rows = sut.sql("SELECT COUNT(*) FROM reservation WHERE show_id=101 AND seat_id=1")[0][0]
    assert tc1_violations(rs, rows) == []
    errors = Counter(r.json()["error"] for r in rs if r.status_code == 409)
    assert set(errors) <= {"SEAT_TAKEN", "LOCK_TIMEOUT"}
    winner = next(r.json() for r in rs if r.status_code == 200)
    assert sut.sql("SELECT status FROM reservation WHERE id = ?", winner["reservationId"]) == [("HELD",)]
    assert sut.sql("SELECT status FROM seat WHERE id = ?", 1) == [("HELD",)]


def test_tc2_different_seats_all_win(sut):
    async def run():
        async with client(sut.base) as c:
            users = range(101, 201)
            tokens = dict(zip(users, await asyncio.gather(*(entered_token(c, u) for u in users)), strict=True))

            async def reserve(i: int):
                u = 101 + i
                return await c.post(
                    "/api/v1/reservations/101",
                    json={"seatIds": [101 + i]},
                    headers={**auth(u), "Queue-Token": tokens[u], "Idempotency-Key": f"tc2-{u}"},
                )

            return await together(100, reserve)

    rs = asyncio.run(run())
    assert Counter(r.status_code for r in rs) == {200: 100}
    assert len({r.json()["reservationId"] for r in rs}) == 100
    n = sut.sql("SELECT COUNT(*) FROM reservation WHERE show_id=101 AND seat_id BETWEEN 101 AND 200")[0][0]
    assert n == 100


def test_tc3_one_idempotency_key_one_reservation(sut):
    user, seats = 201, [250, 251]

    async def run():
        async with client(sut.base) as c:
            token = await entered_token(c, user)
            headers = {**auth(user), "Queue-Token": token, "Idempotency-Key": "tc3-key"}

            async def reserve(_i: int):
                return await c.post("/api/v1/reservations/101", json={"seatIds": seats}, headers=headers)

            rounds = [await together(50, reserve) for _ in range(2)]
            other = await c.post("/api/v1/reservations/101", json={"seatIds": [252]}, headers=headers)
            return rounds, other

    rounds, other = asyncio.run(run())
    answers = [r for rnd in rounds for r in rnd]
    assert Counter(r.status_code for r in answers) == {200: 100}
    assert len({r.json()["reservationId"] for r in answers}) == 1
    rid = answers[0].json()["reservationId"]
    assert sut.sql("SELECT COUNT(DISTINCT id) FROM reservation WHERE idempotency_key = ?", "tc3-key") == [(1,)]
    assert sorted(r[0] for r in sut.sql("SELECT seat_id FROM reservation WHERE id = ?", rid)) == seats
    assert other.status_code == 422 and other.json()["error"] == "IDEMPOTENCY_KEY_REUSED"


def test_request_validation(sut):
    async def run():
        async with client(sut.base) as c:
            token = await entered_token(c, 300)
            other_token = await entered_token(c, 301)
            ok = {**auth(300), "Queue-Token": token, "Idempotency-Key": "v-1"}
            post = c.post
            return {
                "no_auth": await post("/api/v1/reservations/101", json={"seatIds": [280]}),
                "bad_auth": await post(
                    "/api/v1/reservations/101",
                    json={"seatIds": [280]},
                    headers={**ok, "Authorization": "Bearer someone"},
                ),
                "no_key": await post(
                    "/api/v1/reservations/101",
                    json={"seatIds": [280]},
                    headers={k: v for k, v in ok.items() if k != "Idempotency-Key"},
                ),
                "no_token": await post(
                    "/api/v1/reservations/101",
                    json={"seatIds": [280]},
                    headers={k: v for k, v in ok.items() if k != "Queue-Token"},
                ),
                "foreign_token": await post(
                    "/api/v1/reservations/101", json={"seatIds": [280]}, headers={**ok, "Queue-Token": other_token}
                ),
                "five_seats": await post("/api/v1/reservations/101", json={"seatIds": [1, 2, 3, 4, 5]}, headers=ok),
                "dup_seats": await post(
                    "/api/v1/reservations/101", json={"seatIds": [3, 3]}, headers={**ok, "Idempotency-Key": "v-2"}
                ),
                "no_seat": await post(
                    "/api/v1/reservations/101", json={"seatIds": [99999]}, headers={**ok, "Idempotency-Key": "v-3"}
                ),
                "no_show": await post(
                    "/api/v1/reservations/999", json={"seatIds": [280]}, headers={**ok, "Idempotency-Key": "v-4"}
                ),
            }

    r = asyncio.run(run())
    assert {k: v.status_code for k, v in r.items()} == {
        "no_auth": 401,
        "bad_auth": 401,
        "no_key": 400,
        "no_token": 401,
        "foreign_token": 403,
        "five_seats": 400,
        "dup_seats": 400,
        "no_seat": 404,
        "no_show": 404,
    }
    assert r["no_show"].json()["error"] == "SHOW_NOT_FOUND"


def test_lock_timeout_is_409_with_its_own_code(sut):
    """A lock held elsewhere: the wait times out after lock_wait (3 s) with 409 LOCK_TIMEOUT, not 5xx;
    the foreign lock is untouched (only its owner may release it)."""
    import redis

    r = redis.Redis.from_url(sut.redis_url)
    key = "sut:lock:seat:101:290"
    r.set(key, "someone-else", px=20_000)

    async def run():
        async with client(sut.base) as c:
            token = await entered_token(c, 310)
            return await c.post(
                "/api/v1/reservations/101",
                json={"seatIds": [290]},
                headers={**auth(310), "Queue-Token": token, "Idempotency-Key": "lt-1"},
            )

    resp = asyncio.run(run())
    assert resp.status_code == 409 and resp.json()["error"] == "LOCK_TIMEOUT"
    assert r.get(key) == b"someone-else"
    assert sut.sql("SELECT status FROM seat WHERE id = ?", 290) == [("AVAILABLE",)]
    import httpx

    text = httpx.get(sut.base + "/metrics").text
    assert "sut_lock_wait_timeouts_total 0.0" not in text
    r.close()


# ------------------------------------------------------------------------------------------ points
async def charge_together(base: str, user: int, n: int, amount: int) -> tuple[list, int]:
    async with client(base) as c:
        rs = await together(
            n, lambda _i: c.post("/api/v1/users/me/points/charges", json={"amount": amount}, headers=auth(user))
        )
        balance = (await c.get("/api/v1/users/me/points", headers=auth(user))).json()["balance"]
    return rs, balance


def test_200_concurrent_charges_are_exact(sut):
    user, start = 450, 1_000_000
    rs, balance = asyncio.run(charge_together(sut.base, user, 200, 1_000))
    assert Counter(r.status_code for r in rs) == {200: 200}
    assert balance == start + 200_000
    assert sut.sql("SELECT balance FROM point_wallet WHERE user_id = ?", user) == [(start + 200_000,)]
    assert sut.sql("SELECT COUNT(*), SUM(delta) FROM point_history WHERE user_id = ?", user) == [(200, 200_000)]


def test_charge_validation(sut):
    async def run():
        async with client(sut.base) as c:
            post = c.post
            return [
                (await post("/api/v1/users/me/points/charges", json={"amount": 5})).status_code,
                (await post("/api/v1/users/me/points/charges", json={"amount": 0}, headers=auth(1))).status_code,
                (await post("/api/v1/users/me/points/charges", json={"amount": "5"}, headers=auth(1))).status_code,
                (await post("/api/v1/users/me/points/charges", json={"amount": 5}, headers=auth(999_999))).status_code,
            ]

    assert asyncio.run(run()) == [401, 400, 400, 404]


# ------------------------------------------------------------------------------------------ saga
async def reserve_and_pay(
    c: httpx.AsyncClient, user: int, seats: list[int], amount: int, target: int | None = None
) -> tuple[dict, dict]:
    token = await entered_token(c, user, target)
    r = await c.post(
        "/api/v1/reservations/101",
        json={"seatIds": seats},
        headers={**auth(user), "Queue-Token": token, "Idempotency-Key": f"res-{user}"},
    )
    assert r.status_code == 200, r.text
    res = r.json()
    p = await c.post(
        "/api/v1/payments/",
        json={"reservationId": res["reservationId"], "amount": amount},
        headers={**auth(user), "Idempotency-Key": f"pay-{user}"},
    )
    assert p.status_code == 200, p.text
    return res, p.json()


async def until_terminal(c: httpx.AsyncClient, user: int, pid: int, limit: float = 15.0) -> tuple[dict, float]:
    start = time.monotonic()
    while True:
        body = (await c.get(f"/api/v1/payments/{pid}", headers=auth(user))).json()
        if body["status"] in ("COMPLETED", "FAILED") or time.monotonic() - start > limit:
            return body, time.monotonic() - start
        await asyncio.sleep(0.1)


async def saga(base: str, user: int, seats: list[int]) -> tuple[dict, dict, dict, float]:
    async with client(base) as c:
        res, pay = await reserve_and_pay(c, user, seats, 150_000)
        final, took = await until_terminal(c, user, pay["paymentId"])
    return res, pay, final, took


def test_saga_compensation_and_completion_at_default_interval(sut):
    """R-SAGA-1…5 with balance 10,000 and price 150,000 at the default 5 s interval; enough balance
    completes with the seats SOLD."""
    poor, rich = 401, 402
    httpx.post(sut.base + "/admin/seed", json={"users": 1, "userStart": poor, "balance": 10_000}, headers=ADMIN)

    async def both():
        return await asyncio.gather(saga(sut.base, poor, [20, 21]), saga(sut.base, rich, [22, 23]))

    (res_p, pay_p, fin_p, took_p), (res_r, _pay_r, fin_r, took_r) = asyncio.run(both())
    pid = pay_p["paymentId"]
    assert fin_p["status"] == "FAILED" and fin_p["failureReason"] == "INSUFFICIENT_POINTS"
    assert took_p < 10.0, f"compensation took {took_p:.1f} s"
    assert sut.sql("SELECT status FROM payment WHERE id = ?", pid) == [("FAILED",)]
    assert set(sut.sql("SELECT status FROM reservation WHERE id = ?", res_p["reservationId"])) == {("CANCELLED",)}
    assert set(sut.sql("SELECT status FROM seat WHERE id IN (20, 21)")) == {("AVAILABLE",)}
    assert sut.sql("SELECT event_type, status FROM payment_outbox WHERE aggregate_id = ? ORDER BY created_at", pid) == [
        ("UsePointCommand", "PUBLISHED"),
        ("CancelSeatsCommand", "PUBLISHED"),
    ]
    assert sut.sql("SELECT balance FROM point_wallet WHERE user_id = ?", poor) == [(10_000,)]
    assert fin_r["status"] == "COMPLETED" and took_r < 10.0
    assert set(sut.sql("SELECT status FROM seat WHERE id IN (22, 23)")) == {("SOLD",)}
    assert set(sut.sql("SELECT status FROM reservation WHERE id = ?", res_r["reservationId"])) == {("CONFIRMED",)}
    assert sut.sql("SELECT balance FROM point_wallet WHERE user_id = ?", rich) == [(1_000_000 - 150_000,)]
    metrics = httpx.get(sut.base + "/metrics").text
    assert 'sut_saga_duration_seconds_count{outcome="failed"}' in metrics
    assert 'sut_saga_duration_seconds_count{outcome="completed"}' in metrics


def test_payment_rules(sut):
    """Idempotent replay, one payment per reservation, ownership, validation."""

    async def run():
        async with client(sut.base) as c:
            res, pay = await reserve_and_pay(c, 420, [30], 75_000)
            body = {"reservationId": res["reservationId"], "amount": 75_000}

            def post(json, headers):
                return c.post("/api/v1/payments/", json=json, headers=headers)

            return pay, {
                "replay": await post(body, {**auth(420), "Idempotency-Key": "pay-420"}),
                "second": await post(body, {**auth(420), "Idempotency-Key": "again"}),
                "other_user": await post(body, {**auth(421), "Idempotency-Key": "x"}),
                "no_key": await post(body, auth(420)),
                "no_amount": await post({"reservationId": res["reservationId"]}, {**auth(420), "Idempotency-Key": "y"}),
                "foreign_get": await c.get(f"/api/v1/payments/{pay['paymentId']}", headers=auth(421)),
            }

    pay, r = asyncio.run(run())
    assert {k: v.status_code for k, v in r.items()} == {
        "replay": 200,
        "second": 409,
        "other_user": 404,
        "no_key": 400,
        "no_amount": 400,
        "foreign_get": 404,
    }
    assert r["replay"].json()["paymentId"] == pay["paymentId"]
    assert sut.sql("SELECT COUNT(*) FROM payment WHERE user_id = ?", 420) == [(1,)]


# ------------------------------------------------------------------------------------------ queue
@pytest.mark.slow
def test_queue_200_users_50_entered_positions_then_promotion(sut):
    """R-SPIKE-10 with the plan's count strategy: 200 users at once → exactly 50 ENTERED, positions 1…150
    without gaps; an ENTERED user's completed payment promotes the first in line."""
    target, users = 2, range(1001, 1201)

    async def run():
        async with client(sut.base) as c:
            issued = await together(200, lambda i: c.post(f"/api/v1/queues/tokens/{target}", headers=auth(users[i])))
            again = await c.post(f"/api/v1/queues/tokens/{target}", headers=auth(users[0]))
            polled = await together(
                200, lambda i: c.post("/api/v1/queues/enter", headers={"Queue-Token": issued[i].json()["token"]})
            )
            by_token = {r.json()["token"]: r.json() for r in polled}
            first = next(b for b in by_token.values() if b["position"] == 1)
            entered = next(b for b in by_token.values() if b["status"] == "ENTERED")
            _res, pay = await reserve_and_pay(c, entered["userId"], [40], 75_000, target=target)
            final, _ = await until_terminal(c, entered["userId"], pay["paymentId"])
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                now = (await c.post("/api/v1/queues/enter", json={"targetId": target, "token": first["token"]})).json()
                if now["status"] == "ENTERED":
                    break
                await asyncio.sleep(0.2)
            after = await together(
                200, lambda i: c.post("/api/v1/queues/enter", headers={"Queue-Token": issued[i].json()["token"]})
            )
            return issued, again, polled, final, now, after

    issued, again, polled, final, promoted, after = asyncio.run(run())
    assert Counter(r.status_code for r in issued) == {201: 200}
    statuses = Counter(r.json()["status"] for r in issued)
    assert statuses == {"ENTERED": 50, "WAITING": 150}
    assert sorted(r.json()["position"] for r in issued if r.json()["status"] == "WAITING") == list(range(1, 151))
    assert again.status_code == 200 and again.json()["token"] == issued[0].json()["token"]
    assert sorted(r.json()["position"] for r in polled if r.json()["status"] == "WAITING") == list(range(1, 151))
    assert sut.sql("SELECT COUNT(*) FROM queue_token WHERE target_id = ? AND status = 'ENTERED'", target) == [(50,)]
    assert final["status"] == "COMPLETED"
    assert promoted["status"] == "ENTERED"
    after_status = Counter(r.json()["status"] for r in after)
    assert after_status == {"ENTERED": 50, "WAITING": 149, "DONE": 1}
    assert sorted(r.json()["position"] for r in after if r.json()["status"] == "WAITING") == list(range(1, 150))


# ------------------------------------------------------------------------------------------ ops
def test_health_metrics_and_admin(sut):
    assert httpx.get(sut.base + "/health").json()["status"] == "ok"
    text = httpx.get(sut.base + "/metrics").text
    for name in (
        "sut_http_request_duration_seconds_bucket",
        "sut_db_pool_size",
        "sut_db_pool_in_use",
        "sut_db_pool_waiting",
        "sut_db_pool_timeouts_total",
        "sut_process_resident_memory_bytes",
        "sut_gc_pause_seconds_bucket",
        "sut_redis_used_memory_bytes",
        "sut_bus_consumer_lag_messages",
        "sut_bus_consumer_lag_seconds",
        "sut_outbox_pending",
        "sut_outbox_oldest_age_seconds",
        "sut_lock_wait_timeouts_total",
        "sut_saga_duration_seconds_bucket",
    ):
        assert name in text, name
    assert "sut_db_pool_size 5.0" in text
    assert httpx.post(sut.base + "/admin/seed", json={}).status_code == 401
    assert (
        httpx.post(
            sut.base + "/admin/cleanup", json={"since": "2020-01-01T00:00:00Z"}, headers={"X-Admin-Token": "wrong"}
        ).status_code
        == 401
    )
    assert httpx.get(sut.base + "/admin/settings", headers=ADMIN).json()["db_pool_size"] == 5
    concerts = httpx.get(sut.base + "/api/v1/concerts/").json()
    assert concerts[0]["concertId"] == 1 and concerts[0]["shows"][0]["showId"] == 101


def test_cleanup_deletes_what_a_test_created(sut):
    """§6.2 (runs last in this module: it clears the queue keys): rows created after ``since`` go, the
    points they moved come back, the seats they took are free again, earlier rows stay."""
    import datetime as dt

    before = sut.sql("SELECT COUNT(*) FROM reservation")[0][0]
    time.sleep(0.05)
    since = dt.datetime.now(dt.UTC).isoformat()

    async def run():
        async with client(sut.base) as c:
            await c.post("/api/v1/users/me/points/charges", json={"amount": 5_000}, headers=auth(460))
            token = await entered_token(c, 460)
            r = await c.post(
                "/api/v1/reservations/101",
                json={"seatIds": [70]},
                headers={**auth(460), "Queue-Token": token, "Idempotency-Key": "cleanup-1"},
            )
            assert r.status_code == 200
            return r.json()

    res = asyncio.run(run())
    assert sut.sql("SELECT balance FROM point_wallet WHERE user_id = ?", 460) == [(1_005_000,)]
    out = httpx.post(sut.base + "/admin/cleanup", json={"since": since}, headers=ADMIN)
    assert out.status_code == 200, out.text
    assert sut.sql("SELECT COUNT(*) FROM reservation WHERE id = ?", res["reservationId"]) == [(0,)]
    assert sut.sql("SELECT COUNT(*) FROM reservation")[0][0] == before
    assert sut.sql("SELECT status FROM seat WHERE id = ?", 70) == [("AVAILABLE",)]
    assert sut.sql("SELECT balance FROM point_wallet WHERE user_id = ?", 460) == [(1_000_000,)]
    assert sut.sql("SELECT COUNT(*) FROM queue_token WHERE user_id = ?", 460) == [(0,)]
