"""R-RACE under real concurrency: 100 simultaneous HTTP requests against the running service.

SQLite with Redis always; MariaDB too when it is reachable. The no_lock fault proves the TC-1 check
catches a double sale.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from sut_harness import auth, backends, client, entered_token, run_sut, sut_on, together

TC1_SEAT = 1


@pytest.fixture(scope="module", params=backends())
def sut(request, tmp_path_factory):
    with sut_on(request.param, tmp_path_factory.mktemp("race"), queue_capacity=100000) as s:
        yield s


async def _tc1(base: str, seat: int, users: range) -> list:
    async with client(base) as c:
        tokens = dict(zip(users, await asyncio.gather(*(entered_token(c, u) for u in users)), strict=True))
        first = users[0]

        async def reserve(i: int):
            u = first + i
            return await c.post("/api/v1/reservations/101", json={"seatIds": [seat]}, headers={
                **auth(u), "Queue-Token": tokens[u], "Idempotency-Key": f"tc1-{u}"})

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
    rs = asyncio.run(_tc1(sut.base, TC1_SEAT, range(1, 101)))
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
                return await c.post("/api/v1/reservations/101", json={"seatIds": [101 + i]}, headers={
                    **auth(u), "Queue-Token": tokens[u], "Idempotency-Key": f"tc2-{u}"})

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
                "bad_auth": await post("/api/v1/reservations/101", json={"seatIds": [280]},
                                       headers={**ok, "Authorization": "Bearer someone"}),
                "no_key": await post("/api/v1/reservations/101", json={"seatIds": [280]},
                                     headers={k: v for k, v in ok.items() if k != "Idempotency-Key"}),
                "no_token": await post("/api/v1/reservations/101", json={"seatIds": [280]},
                                       headers={k: v for k, v in ok.items() if k != "Queue-Token"}),
                "foreign_token": await post("/api/v1/reservations/101", json={"seatIds": [280]},
                                            headers={**ok, "Queue-Token": other_token}),
                "five_seats": await post("/api/v1/reservations/101", json={"seatIds": [1, 2, 3, 4, 5]}, headers=ok),
                "dup_seats": await post("/api/v1/reservations/101", json={"seatIds": [3, 3]},
                                        headers={**ok, "Idempotency-Key": "v-2"}),
                "no_seat": await post("/api/v1/reservations/101", json={"seatIds": [99999]},
                                      headers={**ok, "Idempotency-Key": "v-3"}),
                "no_show": await post("/api/v1/reservations/999", json={"seatIds": [280]},
                                      headers={**ok, "Idempotency-Key": "v-4"}),
            }

    r = asyncio.run(run())
    assert {k: v.status_code for k, v in r.items()} == {
        "no_auth": 401, "bad_auth": 401, "no_key": 400, "no_token": 401, "foreign_token": 403,
        "five_seats": 400, "dup_seats": 400, "no_seat": 404, "no_show": 404}
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
            return await c.post("/api/v1/reservations/101", json={"seatIds": [290]}, headers={
                **auth(310), "Queue-Token": token, "Idempotency-Key": "lt-1"})

    resp = asyncio.run(run())
    assert resp.status_code == 409 and resp.json()["error"] == "LOCK_TIMEOUT"
    assert r.get(key) == b"someone-else"
    assert sut.sql("SELECT status FROM seat WHERE id = ?", 290) == [("AVAILABLE",)]
    import httpx

    text = httpx.get(sut.base + "/metrics").text
    assert "sut_lock_wait_timeouts_total 0.0" not in text
    r.close()


def test_no_lock_fault_is_caught_by_tc1(tmp_path):
    with run_sut(tmp_path, queue_capacity=100000, faults="no_lock") as sut:
        rs = asyncio.run(_tc1(sut.base, TC1_SEAT, range(1, 101)))
        rows = sut.sql("SELECT COUNT(*) FROM reservation WHERE show_id=101 AND seat_id=1")[0][0]
    problems = tc1_violations(rs, rows)
    assert problems, "the double sale went unnoticed"
    assert rows > 1


def test_lock_timeout_500_fault(tmp_path):
    import redis

    with run_sut(tmp_path, queue_capacity=100000, faults="lock_timeout_500", lock_wait_seconds=0.3) as sut:
        r = redis.Redis.from_url(sut.redis_url)
        r.set("sut:lock:seat:101:5", "someone-else", px=20_000)

        async def run():
            async with client(sut.base) as c:
                token = await entered_token(c, 5)
                return await c.post("/api/v1/reservations/101", json={"seatIds": [5]}, headers={
                    **auth(5), "Queue-Token": token, "Idempotency-Key": "lt-500"})

        resp = asyncio.run(run())
        r.close()
    assert resp.status_code == 500
