"""The result store: one SQLAlchemy schema for everything a campaign measures and decides.

SQLite by default (a file under the output folder), any SQLAlchemy URL otherwise. Tables are named
for what they hold. Rows are written as they are measured, so a run that crashes keeps what it had;
such a run is left marked INCOMPLETE (see `mark_incomplete`).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    update,
)

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("profile", String(128), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(16), nullable=False),  # models.RunStatus
    Column("verdict", String(32)),  # models.Decision
    Column("scale", Float, nullable=False, default=1.0),
    Column("time_scale", Float, nullable=False, default=1.0),
    Column("scenarios", JSON),
    Column("target", String(512)),
    Column("reason", Text),
    Column("build", String(128)),  # the commit or build id judged (Profile.build)
    Column("settings", JSON),  # the environment's settings (tasks.runs.environment_settings): what changed
    Column("parent_run", String(64)),  # a verification re-run: the run whose remediation it tests (tasks.verify)
    Column("label", String(64)),  # … and its arm: "A raise_db_pool" (as it was) or "B raise_db_pool" (changed)
)

scenario_runs = Table(
    "scenario_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False, index=True),
    Column("scenario", String(32), nullable=False),
    Column("status", String(24), nullable=False),  # models.ScenarioStatus
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("k6_exit_code", Integer),
    Column("reason", Text),
    Column("dropped_iterations", Integer),
    Column("k6_cpu_share", Float),  # k6 CPU seconds per second / cores it may use
    Column("ingest_errors", Integer, default=0),  # malformed output lines skipped
    Column("details", JSON),  # anything else the stage measured (TC-1 release spread, k6 summary …)
)

#: One k6 execution segment of a stage split across load generators (`k6.generators` > 1). The generator that
#: runs the segment writes its row (where, its k6 REST API, a heartbeat, how it ended); the campaign reads the
#: rows to start, stop and judge the stage, and sets `release` when the segment's k6 may exit.
load_segments = Table(
    "load_segments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scenario_run_id", Integer, ForeignKey("scenario_runs.id"), nullable=False, index=True),
    Column("segment", Integer, nullable=False),  # 0-based
    Column("segments", Integer, nullable=False),
    Column("host", String(255)),
    Column("api_url", String(255)),
    Column("state", String(16), nullable=False),  # STARTING READY RUNNING ENDED DONE FAILED
    Column("release", Boolean, nullable=False, default=False),
    Column("heartbeat_at", Float),  # epoch seconds, written every second while the generator lives
    Column("exit_code", Integer),
    Column("reason", Text),
    Column("details", JSON),  # k6 CPU seconds and cores, dropped iterations, requests, CSV path
)

#: Per-request records, kept whole for small scenarios (race, saga, points).
requests = Table(
    "requests",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("scenario_run_id", Integer, ForeignKey("scenario_runs.id"), nullable=False, index=True),
    Column("ts", Float, nullable=False),  # epoch seconds, millisecond resolution or better
    Column("endpoint", String(16), nullable=False),  # API-1 … API-6, API-PAY-GET
    Column("name", String(64)),  # k6 tag: test case (tc1/tc2/tc3) or step
    Column("status", Integer, nullable=False),  # 0 = no answer (network error)
    Column("duration_ms", Float, nullable=False),
    Column("error_code", String(64)),
    Column("tags", JSON),  # remaining k6 tags (reservation id of a TC-3 answer …)
)

#: Per-second aggregates per endpoint, for every scenario; `sketch` is a mergeable histogram.
second_aggregates = Table(
    "second_aggregates",
    metadata,
    Column("scenario_run_id", Integer, ForeignKey("scenario_runs.id"), nullable=False),
    Column("second", BigInteger, nullable=False),  # epoch second
    Column("endpoint", String(16), nullable=False),
    Column("count", Integer, nullable=False),
    Column("s2xx", Integer, nullable=False, default=0),
    Column("s3xx", Integer, nullable=False, default=0),
    Column("s4xx", Integer, nullable=False, default=0),
    Column("s5xx", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),  # no answer (status 0)
    Column("codes", JSON),  # {"200": n, "409": n, …}
    Column("p50_ms", Float),
    Column("p95_ms", Float),
    Column("p99_ms", Float),
    Column("max_ms", Float),
    Column("sketch", LargeBinary),
    Index("ix_second_aggregates_run_second", "scenario_run_id", "second"),
)

#: k6 custom metrics and gauges (vus, iterations, saga time, wait until ENTERED …), per sample or per second.
k6_samples = Table(
    "k6_samples",
    metadata,
    Column("scenario_run_id", Integer, ForeignKey("scenario_runs.id"), nullable=False, index=True),
    Column("ts", Float, nullable=False),
    Column("metric", String(64), nullable=False),
    Column("value", Float, nullable=False),
    Column("tags", JSON),
)

#: Server-side samples under KPI names (db_pool_in_use, rss_bytes, redis_memory_bytes, consumer_lag …).
server_samples = Table(
    "server_samples",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False),
    Column("scenario_run_id", Integer, ForeignKey("scenario_runs.id")),
    Column("ts", Float, nullable=False),
    Column("kpi", String(64), nullable=False),
    Column("value", Float, nullable=False),
    Column("labels", JSON),
    Column("source", String(16)),  # scrape | prometheus | cloudwatch
    Index("ix_server_samples_run_kpi", "run_id", "kpi", "ts"),
)

#: Rows of the target's database the plan's SQL checks read (reservation, seat, payment, payment_outbox).
db_snapshots = Table(
    "db_snapshots",
    metadata,
    Column("scenario_run_id", Integer, ForeignKey("scenario_runs.id"), nullable=False, index=True),
    Column("taken_at", DateTime(timezone=True), nullable=False),
    Column("table_name", String(64), nullable=False),
    Column("row", JSON, nullable=False),
)

kpis = Table(
    "kpis",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False, index=True),
    Column("scenario", String(32), nullable=False),
    Column("name", String(64), nullable=False),
    Column("phase", String(16)),
    Column("value", Float),
    Column("unit", String(16)),
    Column("band", String(16)),
    Column("previous", Float),
)

checks = Table(
    "checks",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False, index=True),
    Column("check_id", String(32), nullable=False),
    Column("scenario", String(32), nullable=False),
    Column("passed", Boolean, nullable=False),
    Column("observed", Text),
    Column("expected", Text),
    Column("source", String(16)),
)

verdicts = Table(
    "verdicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("verdict", String(32), nullable=False),
    Column("body", JSON, nullable=False),  # verdict.json
)

#: What the campaign did around the load: rollback steps, notifications, aborts (R-SAFE), each with outcome.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False, index=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),  # abort | rollback | notify | provision | error
    Column("outcome", String(16), nullable=False),  # ok | failed | skipped
    Column("detail", Text),
)


#: Lasting changes found in a KPI's nightly series (tasks.history), one row per run that reported it; a
#: shift no earlier run reported is new. A re-judge replaces its run's rows.
shifts = Table(
    "shifts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False, index=True),  # the run that found it
    Column("profile", String(128), nullable=False),
    Column("scale", Float, nullable=False),
    Column("scenario", String(32), nullable=False),
    Column("kpi", String(64), nullable=False),
    Column("phase", String(16)),
    Column("first_run", String(64), nullable=False),
    Column("build", String(128)),
    Column("before", Float),
    Column("after", Float),
    Column("rel_change", Float),
    Column("p_value", Float),
    Column("worse", Boolean),
    Index("ix_shifts_series", "profile", "scenario", "kpi"),
)

#: Columns added after a table was first created: (table, column DDL type). `open_store` adds them to an
#: older store so a nightly history keeps working across upgrades.
ADDED_COLUMNS: dict[str, dict[str, str]] = {
    "runs": {"build": "VARCHAR(128)", "settings": "JSON", "parent_run": "VARCHAR(64)", "label": "VARCHAR(64)"}
}


def _add_missing_columns(engine: Engine) -> None:
    from sqlalchemy import inspect, text

    insp = inspect(engine)
    for table, cols in ADDED_COLUMNS.items():
        have = {c["name"] for c in insp.get_columns(table)}
        for name, ddl in cols.items():
            if name not in have:
                ddl = "TEXT" if ddl == "JSON" and engine.dialect.name == "sqlite" else ddl
                with engine.begin() as c:
                    c.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))


def kpi_rows(run_id: str, kpis: Any) -> list[dict[str, Any]]:
    """`kpis` rows for KPI records (soundcheck.models.KPI or alike): the one mapping both writers use."""
    return [
        {
            "run_id": run_id,
            "scenario": k.scenario,
            "name": k.name,
            "phase": k.phase,
            "value": k.value,
            "unit": k.unit,
            "band": k.band,
            "previous": k.previous,
        }
        for k in kpis
    ]


def now() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    return now().strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def open_store(url: str, base_dir: str | Path | None = None) -> Engine:
    """Open (and create) the result store. A relative SQLite path is taken against `base_dir`."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and base_dir is not None:
        rel = url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            path = Path(base_dir) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{path}"
    elif url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

    metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


def start_run(
    engine: Engine,
    run_id: str,
    profile: str,
    *,
    scale: float,
    time_scale: float,
    scenarios: list[str],
    target: str | None,
    build: str | None = None,
    settings: dict[str, Any] | None = None,
    started_at: datetime | None = None,
) -> None:
    with engine.begin() as c:
        c.execute(
            insert(runs).values(
                run_id=run_id,
                profile=profile,
                started_at=started_at or now(),
                status="RUNNING",
                scale=scale,
                time_scale=time_scale,
                scenarios=scenarios,
                target=target,
                build=build,
                settings=settings,
            )
        )


def merge_run_settings(engine: Engine, run_id: str, facts: dict[str, Any]) -> None:
    """Add what is known only once the environment is up (which bus the Saga ran on) to the run's settings."""
    with engine.begin() as c:
        current = c.execute(select(runs.c.settings).where(runs.c.run_id == run_id)).scalar_one_or_none()
        if isinstance(current, str):  # JSON read back as text on some dialects
            current = json.loads(current)
        c.execute(update(runs).where(runs.c.run_id == run_id).values(settings={**(current or {}), **facts}))


def last_approved_build(engine: Engine, profile: str) -> str | None:
    """The build of the newest completed run of `profile` whose verdict approved the release."""
    with engine.connect() as c:
        return c.execute(
            select(runs.c.build)
            .where(
                runs.c.profile == profile,
                runs.c.status == "COMPLETED",
                runs.c.verdict.in_(("APPROVE", "APPROVE_WITH_TUNING")),
                runs.c.build.is_not(None),
            )
            .order_by(runs.c.started_at.desc())
            .limit(1)
        ).scalar_one_or_none()


def set_run_build(engine: Engine, run_id: str, build: str) -> None:
    """The build actually deployed (a profile's "latest" resolves to a tag only once the registry is read)."""
    with engine.begin() as c:
        c.execute(update(runs).where(runs.c.run_id == run_id).values(build=build))


def finish_run(engine: Engine, run_id: str, status: str, verdict: str | None = None, reason: str | None = None) -> None:
    with engine.begin() as c:
        c.execute(
            update(runs)
            .where(runs.c.run_id == run_id)
            .values(finished_at=now(), status=status, verdict=verdict, reason=reason)
        )


def mark_incomplete(engine: Engine, run_id: str, reason: str) -> None:
    """Keep every row measured so far and say why the run stopped."""
    finish_run(engine, run_id, "INCOMPLETE", reason=reason)


def start_scenario(engine: Engine, run_id: str, scenario: str) -> int:
    with engine.begin() as c:
        res = c.execute(
            insert(scenario_runs).values(
                run_id=run_id, scenario=scenario, status="RUNNING", started_at=now(), ingest_errors=0
            )
        )
        key = res.inserted_primary_key
        assert key is not None  # an INSERT of one row always has one
        return int(key[0])


def finish_scenario(engine: Engine, scenario_run_id: int, status: str, **values: Any) -> None:
    with engine.begin() as c:
        c.execute(
            update(scenario_runs)
            .where(scenario_runs.c.id == scenario_run_id)
            .values(finished_at=now(), status=status, **values)
        )


def record_event(engine: Engine, run_id: str, kind: str, outcome: str, detail: str = "") -> None:
    with engine.begin() as c:
        c.execute(insert(events).values(run_id=run_id, ts=now(), kind=kind, outcome=outcome, detail=detail))


def store_location(url: str) -> str:
    """The store URL as it may be printed and logged: the password removed."""
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
        return URL.create(
            u.drivername, username=u.username, host=u.host, port=u.port, database=u.database, query=u.query
        ).render_as_string(hide_password=False)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url


def store_sentence(url: str, exc: BaseException) -> str:
    """One sentence for a result store that failed: which store, where, and what its driver said."""
    orig = getattr(exc, "orig", None)
    said = orig.args[-1] if orig is not None and orig.args else (orig or exc)
    said = str(said).strip().splitlines()[0] if str(said).strip() else type(said).__name__
    state = "is locked by another process" if "locked" in said.lower() else "is unreachable"
    return f"the result store at {store_location(url)} {state} ({said})"
