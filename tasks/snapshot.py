"""Snapshot of the target's database rows that the plan's SQL checks read, stored beside the run.

The plan (§3.2, §3.3) checks the target's database directly: `reservation` rows per seat, `payment`,
`reservation` and `seat` status after a compensation, `payment_outbox` events per payment. Test data
is told apart by `created_at` after the test start (§6.2). `snapshot` copies, through SQLAlchemy and
the profile's read-only database URL:

- `reservation`, `payment`, `payment_outbox` rows created at or after `since`;
- `seat` rows those reservations name, plus seats updated since (seats are seeded before the test);
- `queue_token` as counts per status of tokens created since (10,000 spike tokens would bloat the
  store; the checks need only how many are ENTERED / WAITING) — stored as table `queue_token_counts`.

Each row goes into `db_snapshots` as JSON (datetimes as ISO strings). Only SELECTs are issued; SQLite is
opened read-only (`mode=ro`), MySQL/PostgreSQL sessions are set READ ONLY. The target's async driver
URLs (aiosqlite, aiomysql, asyncpg) are mapped to their sync drivers. Table and column names go through the
target's schema map (soundcheck.schema_map); the stored rows carry the plan's names.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from sqlalchemy import Engine, MetaData, Table, create_engine, func, insert, select, text
from sqlalchemy.engine import make_url

from soundcheck import store
from soundcheck.schema_map import PLAN_NAMES, SchemaMap

TABLES = ("reservation", "payment", "payment_outbox")
MAX_ROWS_PER_TABLE = 200_000
_SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "mysql+aiomysql": "mysql+pymysql",
    "mysql+asyncmy": "mysql+pymysql",
    "postgresql+asyncpg": "postgresql+psycopg",
}


def sync_readonly_url(url: str) -> tuple[str, dict[str, Any]]:
    """A synchronous driver URL for `url` and connect args that make the session read-only."""
    u = make_url(url)
    u = u.set(drivername=_SYNC_DRIVERS.get(u.drivername, u.drivername))
    if u.get_backend_name() == "sqlite" and u.database and u.database.startswith("file:"):
        return f"sqlite:///{u.database}?mode=ro&uri=true", {}  # already a URI (the local stack's read-only URL)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return f"sqlite:///file:{u.database}?mode=ro&uri=true", {}
    return u.render_as_string(hide_password=False), {}


def _naive_utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, dt.datetime | dt.date):
            v = v.isoformat()
        elif isinstance(v, decimal.Decimal):
            v = float(v)
        elif isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[k] = v
    return out


def snapshot(
    engine: Engine, scenario_run_id: int, database_url: str, since: dt.datetime, names: SchemaMap = PLAN_NAMES
) -> dict[str, int]:
    """Copy this scenario's rows of the target's database into `db_snapshots`; rows per table, stored under
    the plan's table and column names whatever `names` (the target's schema map) calls them."""
    url, connect_args = sync_readonly_url(database_url)
    target = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    since_n = _naive_utc(since)
    taken = store.now()
    counts: dict[str, int] = {}
    try:
        md = MetaData()
        with target.connect() as c:
            if target.dialect.name in ("mysql", "mariadb"):
                c.execute(text("SET SESSION TRANSACTION READ ONLY"))
            elif target.dialect.name == "postgresql":
                c.execute(text("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"))
            tables = {n: Table(names.table(n), md, autoload_with=c) for n in (*TABLES, "seat", "queue_token")}

            def col(table: str, column: str) -> Any:
                return tables[table].c[names.column(table, column)]

            rows_by: dict[str, list[dict[str, Any]]] = {}
            for name in TABLES:
                q = select(tables[name]).where(col(name, "created_at") >= since_n).limit(MAX_ROWS_PER_TABLE)
                rows_by[name] = [names.to_plan(name, dict(r._mapping)) for r in c.execute(q)]
            seat_ids = sorted({r["seat_id"] for r in rows_by["reservation"] if r.get("seat_id") is not None})
            seat = tables["seat"]
            seats: dict[Any, dict[str, Any]] = {}
            for i in range(0, len(seat_ids), 500):
                for r in c.execute(select(seat).where(col("seat", "id").in_(seat_ids[i : i + 500]))):
                    row = names.to_plan("seat", dict(r._mapping))
                    seats[row["id"]] = row
            if names.column("seat", "updated_at") in seat.c:
                for r in c.execute(select(seat).where(col("seat", "updated_at") >= since_n).limit(MAX_ROWS_PER_TABLE)):
                    row = names.to_plan("seat", dict(r._mapping))
                    seats[row["id"]] = row
            rows_by["seat"] = list(seats.values())
            rows_by["queue_token_counts"] = [
                {"status": s, "count": int(n)}
                for s, n in c.execute(
                    select(col("queue_token", "status"), func.count())
                    .where(col("queue_token", "created_at") >= since_n)
                    .group_by(col("queue_token", "status"))
                )
            ]
    finally:
        target.dispose()
    with engine.begin() as c:
        for name, rows in rows_by.items():
            counts[name] = len(rows)
            if rows:
                c.execute(
                    insert(store.db_snapshots),
                    [
                        {"scenario_run_id": scenario_run_id, "taken_at": taken, "table_name": name, "row": _jsonable(r)}
                        for r in rows
                    ],
                )
    return counts


try:  # thin Prefect wrapper
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(name="db-snapshot", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
    def snapshot_task(
        engine: Engine, scenario_run_id: int, database_url: str, since: dt.datetime, names: SchemaMap = PLAN_NAMES
    ) -> dict[str, int]:
        return snapshot(engine, scenario_run_id, database_url, since, names)
except ImportError:  # pragma: no cover
    pass
