"""The reference service's foreign mode (SUT_FOREIGN=1): a service that behaves as a typical real one does —
no /admin API, only the original service's dialect, one global queue whose waiting users a timer promotes,
tables and metrics under other names. Real requests against a real process."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.sut_harness import auth, client, run_sut


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    with run_sut(
        tmp_path_factory.mktemp("foreign"),
        foreign=1,
        queue_capacity=2,
        admission_period_seconds=3,
        seed_balance=0,
        outbox_interval_seconds=0.2,
    ) as s:
        yield s


def post(sut, path, user=None, **kw):
    headers = {**(auth(user) if user else {}), "Idempotency-Key": f"k-{time.monotonic_ns()}", **kw.pop("headers", {})}
    return httpx.post(sut.base + path, headers=headers, timeout=10, **kw)


def test_no_admin_api(foreign):
    assert post(foreign, "/admin/seed", json={"users": 1}).status_code == 404
    assert httpx.get(foreign.base + "/admin/settings").status_code == 404


def test_the_original_dialect_only(foreign):
    tok = post(foreign, "/api/v1/queues/tokens/1", 501)
    assert tok.status_code == 201
    assert post(foreign, "/api/v1/queues/tokens/1", 501).status_code == 201  # again: still 201
    token = tok.json()["token"]
    assert post(foreign, "/api/v1/queues/enter", headers={"Queue-Token": token}).status_code == 400
    polled = post(foreign, "/api/v1/queues/enter", 501, json={"token": token, "targetId": 1})
    assert polled.status_code == 200 and polled.json()["status"] == "ENTERED"
    assert post(foreign, "/api/v1/users/me/points/charges", 501, json={"amount": 200_000}).status_code == 400
    charged = post(
        foreign,
        "/api/v1/users/me/points/charges",
        501,
        json={"requestId": "r-1", "userId": "501", "amount": 200_000, "useType": "CHARGE"},
    )
    assert charged.status_code == 200 and charged.json()["balance"] == 200_000
    res = post(foreign, "/api/v1/reservations/101", 501, json={"seatIds": [30]}, headers={"Queue-Token": token})
    assert res.status_code == 201, res.text
    pay = post(foreign, "/api/v1/payments/", 501, json={"reservationId": res.json()["reservationId"], "amount": 75_000})
    assert pay.status_code == 200
    deadline = time.monotonic() + 10
    while (
        st := httpx.get(f"{foreign.base}/api/v1/payments/{pay.json()['paymentId']}", headers=auth(501)).json()["status"]
    ) not in ("SUCCEEDED", "FAILED") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert st == "SUCCEEDED"


def test_one_global_queue_promoted_by_a_timer(foreign):
    """Two places in all, whatever the target: a third user waits; a payment frees a place, and the waiting user
    is admitted by the timer (every 3 s) within one period."""

    async def run():
        async with client(foreign.base) as c:

            async def token(user, target):
                r = await c.post(
                    f"/api/v1/queues/tokens/{target}", headers={**auth(user), "Idempotency-Key": f"t{user}"}
                )
                return r.json()

            async def status(tok, target):
                r = await c.post("/api/v1/queues/enter", json={"token": tok["token"], "targetId": target})
                return r.json()["status"]

            # the earlier test's user 501 finished (its payment ended): its place is free until the timer fills it
            await asyncio.sleep(3.5)
            a, b = await token(601, 11), await token(602, 12)
            c3 = await token(603, 13)
            assert [a["status"], b["status"], c3["status"]] == ["ENTERED", "ENTERED", "WAITING"], (a, b, c3)
            await c.post(
                "/api/v1/users/me/points/charges",
                headers=auth(601),
                json={"requestId": "r-601", "userId": "601", "amount": 100_000, "useType": "CHARGE"},
            )
            res = await c.post(
                "/api/v1/reservations/101",
                json={"seatIds": [31]},
                headers={**auth(601), "Queue-Token": a["token"], "Idempotency-Key": "r601"},
            )
            pay = await c.post(
                "/api/v1/payments/",
                json={"reservationId": res.json()["reservationId"], "amount": 75_000},
                headers={**auth(601), "Idempotency-Key": "p601"},
            )
            while (await c.get(f"/api/v1/payments/{pay.json()['paymentId']}", headers=auth(601))).json()[
                "status"
            ] not in ("SUCCEEDED", "FAILED"):
                await asyncio.sleep(0.05)
            right_after = await status(c3, 13)
            t0 = time.monotonic()
            while await status(c3, 13) != "ENTERED" and time.monotonic() - t0 < 8:
                await asyncio.sleep(0.1)
            return right_after, time.monotonic() - t0, await status(c3, 13)

    _right_after, waited, final = asyncio.run(run())
    assert final == "ENTERED" and waited <= 3.5  # within one timer period of the place being freed


def test_tables_and_metrics_under_other_names(foreign):
    names = {r[0] for r in foreign.sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"payments", "reservations", "points", "shows", "concerts", "queue_token"} <= names
    assert not {"payment", "reservation", "point_wallet"} & names
    assert foreign.sql("SELECT COUNT(reservaion_id) FROM payments")[0][0] >= 1  # the original's own spelling
    text = httpx.get(foreign.base + "/metrics").text
    assert "hikaricp_connections_max" in text and "hikaricp_connections_active" in text
    assert "jvm_gc_pause_seconds_max" in text and "process_resident_memory_bytes" in text
    assert "sut_" not in text


def test_snapshot_and_cleanup_through_the_schema_map(foreign, tmp_path):
    """The checks read the foreign tables through deployments/schema_maps/original.yaml and store the rows under
    the plan's names; the §6.2 cleanup deletes through it too."""
    import datetime as dt

    from soundcheck import store
    from soundcheck.schema_map import load_schema_map
    from tasks.safety import delete_test_data_sql
    from tasks.snapshot import snapshot

    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    results = store.open_store(f"sqlite:///{tmp_path / 'store.db'}")
    store.start_run(results, "r1", "test", scale=1.0, time_scale=1.0, scenarios=["saga"], target=foreign.base)
    sid = store.start_scenario(results, "r1", "saga")
    counts = snapshot(results, sid, foreign.db_url, since, load_schema_map("original"))
    assert counts["payment"] >= 1 and counts["reservation"] >= 1
    with results.connect() as c:
        rows = {r.table_name: r.row for r in c.execute(store.db_snapshots.select())}
    assert {"reservation_id", "status", "completed_at"} <= set(rows["payment"])  # the plan's names again
    assert "reservaion_id" not in rows["payment"] and "id" in rows["reservation"]
    sync = foreign.db_url.replace("+aiosqlite", "")
    said = delete_test_data_sql(sync, since, names=load_schema_map("original"))
    assert "payments: " in said and "reservations: " in said
    assert foreign.sql("SELECT COUNT(*) FROM payments")[0][0] == 0


def test_rollback_cleans_up_through_sql_where_there_is_no_admin_api(foreign):
    """A harm abort's cleanup on a service without /admin: the §6.2 SQL through the local stack's write DSN,
    under the target's names (never the admin endpoint, which answers 404 here)."""
    import datetime as dt
    from types import SimpleNamespace

    from soundcheck.profile import parse_profile
    from tasks.safety import rollback_steps_for

    prof = parse_profile(
        {
            "name": "f",
            "target": {"dialect": "original", "schema_map": "original"},
            "environment": {"local": {"settings": {"foreign": True}}},
        }
    )
    handle = SimpleNamespace(
        base_url=foreign.base,
        endpoints=SimpleNamespace(extra={"write_database_url": foreign.db_url.replace("+aiosqlite", "")}),
    )
    steps = rollback_steps_for(prof, handle, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    said = steps["delete_test_data"]()
    assert "payments: " in said and "reservations: " in said
