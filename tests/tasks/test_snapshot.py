"""Snapshots of the target's database: only this run's rows (created since the start), the seats they
name, queue tokens as counts; through the target's async URL mapped to a sync driver, read-only."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select, text

from infra.sut.tables import concert, concert_show, metadata, payment, payment_outbox, queue_token, reservation, seat
from soundcheck import store
from tasks.snapshot import snapshot, sync_readonly_url

T0 = dt.datetime(2026, 11, 26, 2, 0, 0)


def _fill(url: str) -> None:
    e = create_engine(url)
    metadata.drop_all(e)
    metadata.create_all(e)
    old, new = T0 - dt.timedelta(hours=1), T0 + dt.timedelta(seconds=5)
    with e.begin() as c:
        c.execute(insert(concert).values(id=1, title="c", created_at=old))
        c.execute(insert(concert_show).values(id=101, concert_id=1, starts_at=new, created_at=old))
        c.execute(
            insert(seat),
            [
                {
                    "id": i,
                    "show_id": 101,
                    "seat_no": i,
                    "price": 75000,
                    "status": "AVAILABLE" if i != 2 else "HELD",
                    "updated_at": old,
                    "created_at": old,
                }
                for i in (1, 2, 3)
            ],
        )
        c.execute(
            insert(reservation),
            [
                {
                    "id": "r-old",
                    "show_id": 101,
                    "seat_id": 3,
                    "user_id": 9,
                    "status": "EXPIRED",
                    "amount": 1,
                    "expires_at": old,
                    "updated_at": old,
                    "created_at": old,
                },
                {
                    "id": "r-new",
                    "show_id": 101,
                    "seat_id": 1,
                    "user_id": 7,
                    "status": "CANCELLED",
                    "amount": 150000,
                    "expires_at": new,
                    "updated_at": new,
                    "created_at": new,
                },
            ],
        )
        c.execute(
            insert(payment),
            [
                {
                    "id": 1,
                    "reservation_id": "r-new",
                    "user_id": 7,
                    "amount": 150000,
                    "status": "FAILED",
                    "failure_reason": "INSUFFICIENT_POINTS",
                    "updated_at": new,
                    "created_at": new,
                }
            ],
        )
        c.execute(
            insert(payment_outbox),
            [
                {
                    "aggregate_id": 1,
                    "event_type": e_,
                    "payload": "{}",
                    "status": "PUBLISHED",
                    "next_attempt_at": new,
                    "created_at": new,
                }
                for e_ in ("UsePointCommand", "CancelSeatsCommand")
            ],
        )
        c.execute(
            insert(queue_token),
            [
                {
                    "target_id": 1,
                    "user_id": u,
                    "token": str(uuid.uuid4()),
                    "status": "ENTERED" if u < 3 else "WAITING",
                    "expires_at": new,
                    "updated_at": new,
                    "created_at": new,
                }
                for u in range(1, 6)
            ],
        )
    e.dispose()


def _check(tmp_path: Path, target_url: str) -> None:
    engine = store.open_store(f"sqlite:///{tmp_path / 'store.db'}")
    store.start_run(engine, "r", "t", scale=1, time_scale=1, scenarios=["saga"], target=None)
    sid = store.start_scenario(engine, "r", "saga")
    counts = snapshot(engine, sid, target_url, T0.replace(tzinfo=dt.UTC))
    assert counts == {"reservation": 1, "payment": 1, "payment_outbox": 2, "seat": 1, "queue_token_counts": 2}
    with engine.connect() as c:
        rows = c.execute(select(store.db_snapshots).where(store.db_snapshots.c.scenario_run_id == sid)).all()
    by = {}
    for r in rows:
        by.setdefault(r.table_name, []).append(r.row)
    assert by["reservation"][0]["id"] == "r-new" and by["seat"][0]["id"] == 1
    assert by["payment"][0]["failure_reason"] == "INSUFFICIENT_POINTS"
    assert isinstance(by["payment"][0]["created_at"], str)
    assert sorted((q["status"], q["count"]) for q in by["queue_token_counts"]) == [("ENTERED", 2), ("WAITING", 3)]


def test_sqlite_through_the_async_url(tmp_path: Path) -> None:
    db = tmp_path / "sut.db"
    _fill(f"sqlite:///{db}")
    _check(tmp_path, f"sqlite+aiosqlite:///{db}")
    url, _ = sync_readonly_url(f"sqlite+aiosqlite:///{db}")
    with create_engine(url).connect() as c, pytest.raises(Exception, match="readonly|read-only"):
        c.execute(text("DELETE FROM seat"))


def _mariadb() -> str | None:
    try:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=2)
    except Exception:  # noqa: BLE001 - unreachable: skip
        return None
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS load_snapshot_test")
    conn.close()
    return "mysql+pymysql://root:@127.0.0.1:3306/load_snapshot_test"


def test_mariadb_when_reachable(tmp_path: Path) -> None:
    url = _mariadb()
    if url is None:
        pytest.skip("MariaDB not reachable on 127.0.0.1:3306")
    _fill(url)
    try:
        _check(tmp_path, url.replace("+pymysql", "+aiomysql"))
    finally:
        e = create_engine(url)
        with e.begin() as c:
            c.execute(text("DROP DATABASE load_snapshot_test"))
        e.dispose()


def _postgres() -> str | None:
    try:
        import psycopg

        conn = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=2, autocommit=True)
    except Exception:  # noqa: BLE001 - unreachable: skip
        return None
    conn.execute("DROP DATABASE IF EXISTS load_snapshot_test")
    conn.execute("CREATE DATABASE load_snapshot_test")
    conn.close()
    return "postgresql+psycopg://postgres@127.0.0.1:5432/load_snapshot_test"


def test_postgres_when_reachable(tmp_path: Path) -> None:
    url = _postgres()
    if url is None:
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    _fill(url)
    try:
        _check(tmp_path, url.replace("+psycopg", "+asyncpg"))
    finally:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS load_snapshot_test WITH (FORCE)")
