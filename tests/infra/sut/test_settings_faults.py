"""The faults the campaign's own tests rely on, each shown to break what the plan checks; also the rank
position strategy, the concert-list cache, hold expiry and token TTL expiry (two servers with
non-default settings)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest
import redis

from tests.infra.sut.test_app import charge_together, reserve_and_pay, tc1, tc1_violations, until_terminal
from tests.sut_harness import ADMIN, auth, client, entered_token, run_sut, together


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """no_lock, lost_update and no_compensation at once (they touch different paths), rank positions."""
    with run_sut(
        tmp_path_factory.mktemp("faults-a"),
        faults="no_lock,lost_update,no_compensation,leak",
        leak_bytes=262_144,
        outbox_interval_seconds=0.2,
        position_strategy="rank",
        concert_cache=1,
        concert_cache_ttl_seconds=60,
        concert_query_ms=300,
    ) as s:
        yield s


@pytest.fixture(scope="module")
def stuck(tmp_path_factory):
    """stuck_outbox and lock_timeout_500, a 0.3 s lock wait, a 4 s token TTL and 3 s holds."""
    with run_sut(
        tmp_path_factory.mktemp("faults-b"),
        faults="stuck_outbox,lock_timeout_500",
        lock_wait_seconds=0.3,
        queue_ttl_seconds=4,
        queue_sweep_seconds=0.2,
        hold_minutes=0.05,
        hold_sweep_seconds=0.2,
        concert_query_ms=300,
    ) as s:
        yield s


def test_no_lock_double_sale_is_caught_by_tc1(broken):
    rs = asyncio.run(tc1(broken.base, 1, range(1, 101)))
    rows = broken.sql("SELECT COUNT(*) FROM reservation WHERE show_id=101 AND seat_id=1")[0][0]
    assert tc1_violations(rs, rows), "the double sale went unnoticed"
    assert rows > 1


def test_lost_update_loses_charges(broken):
    rs, balance = asyncio.run(charge_together(broken.base, 450, 200, 1_000))
    assert Counter(r.status_code for r in rs) == {200: 200}
    assert balance < 1_000_000 + 200_000


def test_no_compensation_leaves_seats_held(broken):
    httpx.post(broken.base + "/admin/seed", json={"users": 1, "userStart": 401, "balance": 10_000}, headers=ADMIN)

    async def run():
        async with client(broken.base) as c:
            res, pay = await reserve_and_pay(c, 401, [20, 21], 150_000)
            final, _ = await until_terminal(c, 401, pay["paymentId"])
            return res, pay, final

    res, pay, final = asyncio.run(run())
    assert final["status"] == "FAILED"
    assert set(broken.sql("SELECT status FROM seat WHERE id IN (20, 21)")) == {("HELD",)}
    assert broken.sql("SELECT event_type FROM payment_outbox WHERE aggregate_id = ?", pay["paymentId"]) == [
        ("UsePointCommand",)
    ]


def test_rank_strategy_positions(broken):
    target = 3

    async def run():
        async with client(broken.base) as c:
            issued = await together(200, lambda i: c.post(f"/api/v1/queues/tokens/{target}", headers=auth(1001 + i)))
            polled = await together(
                200, lambda i: c.post("/api/v1/queues/enter", headers={"Queue-Token": issued[i].json()["token"]})
            )
            return issued, polled

    issued, polled = asyncio.run(run())
    assert Counter(r.json()["status"] for r in issued) == {"ENTERED": 50, "WAITING": 150}
    assert sorted(r.json()["position"] for r in polled if r.json()["status"] == "WAITING") == list(range(1, 151))
    # rank and the plan's count agree: position n is the n-th WAITING id
    waiting = sorted((r.json()["position"], r.json()["token"]) for r in polled if r.json()["status"] == "WAITING")
    ids = [broken.sql("SELECT id FROM queue_token WHERE token = ?", tok)[0][0] for _pos, tok in waiting[:3]]
    assert ids == sorted(ids)


def test_lock_timeout_500(stuck):
    r = redis.Redis.from_url(stuck.redis_url)
    r.set("sut:lock:seat:101:5", "someone-else", px=20_000)

    async def run():
        async with client(stuck.base) as c:
            token = await entered_token(c, 5)
            return await c.post(
                "/api/v1/reservations/101",
                json={"seatIds": [5]},
                headers={**auth(5), "Queue-Token": token, "Idempotency-Key": "lt-500"},
            )

    resp = asyncio.run(run())
    r.close()
    assert resp.status_code == 500


def test_stuck_outbox_leaves_payments_pending(stuck):
    async def run():
        async with client(stuck.base) as c:
            _res, pay = await reserve_and_pay(c, 8, [1, 2], 150_000)
            await asyncio.sleep(1.5)
            return pay, (await c.get(f"/api/v1/payments/{pay['paymentId']}", headers=auth(8))).json()

    pay, later = asyncio.run(run())
    assert later["status"] == "PENDING"
    assert stuck.sql("SELECT status FROM payment_outbox WHERE aggregate_id = ?", pay["paymentId"]) == [("PENDING",)]
    metrics = httpx.get(stuck.base + "/metrics").text
    assert "sut_outbox_pending 1.0" in metrics
    age = float(
        next(line.split()[1] for line in metrics.splitlines() if line.startswith("sut_outbox_oldest_age_seconds "))
    )
    assert age >= 1.0


def test_token_ttl_expiry(stuck):
    """R-SPIKE-9: the token's Redis key TTL matches the setting, and both stores expire it on time."""
    r = redis.Redis.from_url(stuck.redis_url)
    target = 77

    async def issue():
        async with client(stuck.base) as c:
            return [(await c.post(f"/api/v1/queues/tokens/{target}", headers=auth(u))).json() for u in (60, 61)]

    tokens = asyncio.run(issue())
    ttl_ms = r.pttl(f"sut:qt:{tokens[0]['token']}")
    assert 3000 < ttl_ms <= 4000
    time.sleep(4.6)

    async def poll():
        async with client(stuck.base) as c:
            return [(await c.post("/api/v1/queues/enter", headers={"Queue-Token": t["token"]})).json() for t in tokens]

    after = asyncio.run(poll())
    assert [a["status"] for a in after] == ["EXPIRED", "EXPIRED"]
    assert not r.exists(f"sut:qt:{tokens[0]['token']}")
    assert r.zcard(f"sut:q:{target}:active") == 0
    rows = stuck.sql("SELECT status FROM queue_token WHERE target_id = ?", target)
    assert rows == [("EXPIRED",), ("EXPIRED",)]
    r.close()


def _gauge(text: str, name: str) -> float:
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_leak_fault_grows_memory(broken):
    before = _gauge(httpx.get(broken.base + "/metrics").text, "sut_process_resident_memory_bytes")
    with httpx.Client(base_url=broken.base) as c:
        for _ in range(200):
            c.get("/health")
        time.sleep(1.2)  # the per-process gauges refresh every second
        after = _gauge(c.get("/metrics").text, "sut_process_resident_memory_bytes")
    assert after - before > 30 * 2**20  # 200 requests × 256 KiB kept


def test_concert_list_is_cached(broken):
    async def run():
        async with client(broken.base) as c:
            first = (await c.get("/api/v1/concerts/")).json()
            token = await entered_token(c, 480)
            r = await c.post(
                "/api/v1/reservations/101",
                json={"seatIds": [60]},
                headers={**auth(480), "Queue-Token": token, "Idempotency-Key": "cache-1"},
            )
            assert r.status_code == 200
            return first, (await c.get("/api/v1/concerts/")).json()

    first, second = asyncio.run(run())
    assert first == second  # served from Redis although a seat was just taken
    r = redis.Redis.from_url(broken.redis_url)
    for _ in range(40):  # when the 60 s entry (filled at start-up) just expired, one rebuild (300 ms) is under way
        if r.pttl("sut:cache:concerts") > 0:
            break
        time.sleep(0.1)
    assert 0 < r.pttl("sut:cache:concerts") <= 60_000, [(k, r.pttl(k)) for k in r.keys("*cache*")]
    r.close()


def test_slow_concert_list_holds_pool_connections_and_the_cache_avoids_it(stuck, broken):
    """The 'slow concert list' tuning case: uncached, each list holds a pooled connection for its query
    time, so 10 at once on a pool of 5 need two rounds; cached, the query runs once."""

    async def ten(base):
        async with client(base) as c:
            await c.get("/api/v1/concerts/")  # fill the cache where there is one
            t0 = time.perf_counter()
            rs = await together(10, lambda i: c.get("/api/v1/concerts/"))
            return [r.status_code for r in rs], time.perf_counter() - t0

    codes, uncached = asyncio.run(ten(stuck.base))
    assert codes == [200] * 10
    assert uncached >= 0.6  # two rounds of 300 ms on 5 connections
    codes, cached = asyncio.run(ten(broken.base))
    assert codes == [200] * 10
    assert cached < 0.3


def test_cache_expiry_serves_the_previous_list_while_one_request_rebuilds_it(tmp_path):
    """Stale-while-revalidate: when the entry expires, ten requests at once get the previous body at once
    (no stampede of 1 s queries); one rebuild refreshes it in the background."""
    with run_sut(tmp_path, concert_cache=1, concert_cache_ttl_seconds=0.5, concert_query_ms=1000) as s:

        async def run():
            async with client(s.base) as c:
                for _ in range(50):  # warmed at start-up: the first request does not pay for the build
                    t0 = time.perf_counter()
                    first = await c.get("/api/v1/concerts/")
                    if time.perf_counter() - t0 < 0.5:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.7)  # the fresh entry has expired
                t0 = time.perf_counter()
                rs = await together(10, lambda i: c.get("/api/v1/concerts/"))
                expired = time.perf_counter() - t0
                await asyncio.sleep(1.3)  # the background rebuild (1 s) has landed
                return first, rs, expired

        first, rs, expired = asyncio.run(run())
        assert [r.status_code for r in rs] == [200] * 10 and all(r.json() == first.json() for r in rs)
        assert expired < 0.6  # nobody waited for the 1 s query
        r = redis.Redis.from_url(s.redis_url)
        assert r.pttl("sut:cache:concerts") > 0  # rebuilt
        r.close()


def test_expired_hold_frees_its_seats(stuck):
    async def run():
        async with client(stuck.base) as c:
            token = await entered_token(c, 90)
            r = await c.post(
                "/api/v1/reservations/101",
                json={"seatIds": [50, 51]},
                headers={**auth(90), "Queue-Token": token, "Idempotency-Key": "hold-1"},
            )
            return r.json()

    res = asyncio.run(run())
    assert set(stuck.sql("SELECT status FROM seat WHERE id IN (50, 51)")) == {("HELD",)}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if set(stuck.sql("SELECT status FROM seat WHERE id IN (50, 51)")) == {("AVAILABLE",)}:
            break
        time.sleep(0.2)
    assert set(stuck.sql("SELECT status FROM seat WHERE id IN (50, 51)")) == {("AVAILABLE",)}
    assert set(stuck.sql("SELECT status FROM reservation WHERE id = ?", res["reservationId"])) == {("EXPIRED",)}


def test_admin_reset_restores_the_start_state(stuck):
    """Runs last on this server: everything wiped, the default seed applied again, Redis keys cleared."""
    assert httpx.post(stuck.base + "/admin/reset", headers={"X-Admin-Token": "wrong"}).status_code == 401
    r = httpx.post(stuck.base + "/admin/reset", headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    assert stuck.sql("SELECT COUNT(*) FROM reservation") == [(0,)]
    assert stuck.sql("SELECT COUNT(*) FROM payment_outbox") == [(0,)]
    assert stuck.sql("SELECT COUNT(*) FROM seat WHERE status <> 'AVAILABLE'") == [(0,)]
    assert stuck.sql("SELECT COUNT(*), MIN(balance), MAX(balance) FROM point_wallet") == [(1500, 1_000_000, 1_000_000)]
    rc = redis.Redis.from_url(stuck.redis_url)
    assert not list(rc.scan_iter("sut:q:*"))
    rc.close()

    async def again():
        async with client(stuck.base) as c:
            return (await c.post("/api/v1/queues/tokens/1", headers=auth(3))).status_code

    assert asyncio.run(again()) == 201


@pytest.fixture(scope="module")
def foreign_defects(tmp_path_factory):
    """Defects seen in a real third-party service: a taken seat answered 400, a lock timeout as a bare 500,
    admission that never follows a payment, an Idempotency-Key ignored."""
    with run_sut(
        tmp_path_factory.mktemp("faults-c"),
        faults="taken_seat_400,lock_timeout_500_bare,admission_stall,no_idempotency",
        lock_wait_seconds=0.3,
        outbox_interval_seconds=0.2,
    ) as s:
        yield s


def test_taken_seat_400_answers_400_under_a_real_race(foreign_defects):
    responses = asyncio.run(tc1(foreign_defects.base, 7, range(2001, 2021)))
    codes = Counter(r.status_code for r in responses)
    assert codes[200] == 1 and codes[400] == 19 and codes[409] == 0, codes


def test_lock_timeout_500_bare_has_no_code_and_no_hint(foreign_defects):
    r = redis.Redis.from_url(foreign_defects.redis_url)
    r.set("sut:lock:seat:101:8", "someone-else", px=20_000)

    async def run():
        async with client(foreign_defects.base) as c:
            token = await entered_token(c, 2100)
            return await c.post(
                "/api/v1/reservations/101",
                json={"seatIds": [8]},
                headers={**auth(2100), "Queue-Token": token, "Idempotency-Key": "lt-bare"},
            )

    resp = asyncio.run(run())
    r.close()
    assert resp.status_code == 500 and resp.content == b""


def test_admission_stall_keeps_the_payers_place(foreign_defects):
    """The healthy service promotes the first in line when an ENTERED user's payment ends
    (test_sut_core); with admission_stall nobody moves up, however long they wait."""
    target, users = 7, range(3001, 3052)  # 50 places, one user waiting

    async def run():
        async with client(foreign_defects.base) as c:
            issued = await together(51, lambda i: c.post(f"/api/v1/queues/tokens/{target}", headers=auth(users[i])))
            waiting = next(r.json() for r in issued if r.json()["status"] == "WAITING")
            payer = next(r.json() for r in issued if r.json()["status"] == "ENTERED")
            _res, pay = await reserve_and_pay(c, payer["userId"], [60], 75_000, target=target)
            final, _ = await until_terminal(c, payer["userId"], pay["paymentId"])
            await asyncio.sleep(2.5)  # > two sweeps of the queue sweeper (1 s)
            polled = await c.post("/api/v1/queues/enter", headers={"Queue-Token": waiting["token"]})
            return final, polled.json()

    final, polled = asyncio.run(run())
    assert final["status"] in ("COMPLETED", "FAILED")  # terminal either way: the place should be freed
    assert polled["status"] == "WAITING" and polled["position"] == 1


def test_no_idempotency_runs_a_replayed_key_again(foreign_defects):
    """R-RACE-3's replay: the same Idempotency-Key sent twice creates two answers that are not the same
    reservation (the second finds the seat taken by the first)."""

    async def run():
        async with client(foreign_defects.base) as c:
            token = await entered_token(c, 3100)

            def send():
                return c.post(
                    "/api/v1/reservations/101",
                    json={"seatIds": [61]},
                    headers={**auth(3100), "Queue-Token": token, "Idempotency-Key": "replayed"},
                )

            return await send(), await send()

    first, second = asyncio.run(run())
    assert first.status_code == 200
    assert second.status_code == 400  # taken_seat_400 is on too: the replay ran as a new reservation
