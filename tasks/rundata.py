"""Load one run's measurements from the result store into pandas, stage by stage.

The verdict stage reads everything through here, so that judging a fresh run and re-judging a stored
one (`soundcheck report RUN_ID`) see exactly the same data. When a scenario ran more than once in a
run (a re-test after tuning), the last stage run is the one judged.

Server samples are tied to a stage by `scenario_run_id` when the collector set it, else by time
(between the stage's start and end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select

from soundcheck import store
from soundcheck.plan import KPIS
from tasks.kpis import compute_kpis

REQUEST_COLUMNS = ["ts", "endpoint", "name", "status", "duration_ms", "error_code", "tags"]
SECOND_COLUMNS = [
    "second",
    "endpoint",
    "count",
    "s2xx",
    "s3xx",
    "s4xx",
    "s5xx",
    "failed",
    "codes",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
]
SERVER_COLUMNS = ["scenario_run_id", "ts", "kpi", "value", "labels"]
KPI_COLUMNS = ["scenario", "name", "phase", "value", "unit", "band", "previous"]


@dataclass
class StageData:
    """One scenario stage of a run and what it measured."""

    scenario_run_id: int
    scenario: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    k6_cpu_share: float | None = None
    dropped_iterations: int | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    requests: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REQUEST_COLUMNS))
    seconds: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SECOND_COLUMNS))
    k6: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["ts", "metric", "value", "tags"]))
    server: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SERVER_COLUMNS))
    snapshots: dict[str, pd.DataFrame] = field(default_factory=dict)

    def snapshot(self, table: str) -> pd.DataFrame:
        return self.snapshots.get(table, pd.DataFrame())


@dataclass
class RunData:
    run_id: str
    profile: str
    started_at: datetime | None
    finished_at: datetime | None
    status: str
    scale: float
    time_scale: float
    scenarios: list[str]
    stages: dict[str, StageData]
    kpis: pd.DataFrame  # the load stage's KPI rows (kpis table), all scenarios
    server: pd.DataFrame  # every server sample of the run


def _ts(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is None:  # SQLite drops the zone; the store writes UTC
        from datetime import UTC

        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _frame(rows: list[Any], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame([dict(r._mapping) for r in rows], columns=columns) if rows else pd.DataFrame(columns=columns)


def load_run(engine: Engine, run_id: str) -> RunData:
    """Everything the verdict stage needs about `run_id`; raises KeyError for an unknown run."""
    t = store
    with engine.connect() as c:
        run = c.execute(select(t.runs).where(t.runs.c.run_id == run_id)).first()
        if run is None:
            raise KeyError(f"no run {run_id!r} in the result store")
        stage_rows = c.execute(
            select(t.scenario_runs).where(t.scenario_runs.c.run_id == run_id).order_by(t.scenario_runs.c.id)
        ).fetchall()
        server = _frame(
            c.execute(
                select(*[t.server_samples.c[k] for k in SERVER_COLUMNS]).where(t.server_samples.c.run_id == run_id)
            ).fetchall(),
            SERVER_COLUMNS,
        )
        kpis = _frame(
            c.execute(select(*[t.kpis.c[k] for k in KPI_COLUMNS]).where(t.kpis.c.run_id == run_id)).fetchall(),
            KPI_COLUMNS,
        )
        stages: dict[str, StageData] = {}
        for sr in stage_rows:  # later stage runs of the same scenario replace earlier ones
            if sr.scenario == "capacity":  # the sizing stage's steps: judged by tasks.capacity, not the suites
                continue
            stages[sr.scenario] = StageData(
                scenario_run_id=sr.id,
                scenario=sr.scenario,
                status=sr.status,
                started_at=sr.started_at,
                finished_at=sr.finished_at,
                k6_cpu_share=sr.k6_cpu_share,
                dropped_iterations=sr.dropped_iterations,
                reason=sr.reason,
                details=dict(sr.details or {}),
            )
        for st in stages.values():
            sid = st.scenario_run_id
            st.requests = _frame(
                c.execute(
                    select(*[t.requests.c[k] for k in REQUEST_COLUMNS]).where(t.requests.c.scenario_run_id == sid)
                ).fetchall(),
                REQUEST_COLUMNS,
            )
            st.seconds = _frame(
                c.execute(
                    select(*[t.second_aggregates.c[k] for k in SECOND_COLUMNS]).where(
                        t.second_aggregates.c.scenario_run_id == sid
                    )
                ).fetchall(),
                SECOND_COLUMNS,
            )
            st.k6 = _frame(
                c.execute(
                    select(t.k6_samples.c.ts, t.k6_samples.c.metric, t.k6_samples.c.value, t.k6_samples.c.tags).where(
                        t.k6_samples.c.scenario_run_id == sid
                    )
                ).fetchall(),
                ["ts", "metric", "value", "tags"],
            )
            snaps: dict[str, list[dict[str, Any]]] = {}
            for r in c.execute(
                select(t.db_snapshots.c.table_name, t.db_snapshots.c.row).where(t.db_snapshots.c.scenario_run_id == sid)
            ):
                snaps.setdefault(r.table_name, []).append(dict(r.row or {}))
            st.snapshots = {k: pd.DataFrame(v) for k, v in snaps.items()}
    for st in stages.values():
        st.server = stage_server_samples(server, st)
    kpis = with_missing_client_kpis(engine, kpis, stages)
    return RunData(
        run_id=run.run_id,
        profile=run.profile,
        started_at=run.started_at,
        finished_at=run.finished_at,
        status=run.status,
        scale=float(run.scale or 1.0),
        time_scale=float(run.time_scale or 1.0),
        scenarios=list(run.scenarios or []),
        stages=stages,
        kpis=kpis,
        server=server,
    )


def stage_server_samples(server: pd.DataFrame, st: StageData) -> pd.DataFrame:
    """The run's server samples that belong to this stage: by id when tagged, else by time window."""
    if server.empty:
        return server.copy()
    tagged = server["scenario_run_id"] == st.scenario_run_id
    untagged = server["scenario_run_id"].isna()
    lo, hi = _ts(st.started_at), _ts(st.finished_at)
    if lo is None:
        in_window = pd.Series(False, index=server.index)
    else:
        in_window = server["ts"] >= lo
        if hi is not None:
            in_window &= server["ts"] <= hi
    return server[tagged | (untagged & in_window)].sort_values("ts").reset_index(drop=True)


def with_missing_client_kpis(engine: Engine, kpis: pd.DataFrame, stages: dict[str, StageData]) -> pd.DataFrame:
    """A stage stopped early (aborted on harm, k6 crashed) may have measured for a while without the load
    stage storing its client KPIs; they are computed here from its stored seconds and samples (not saved),
    so what the stage did measure is judged."""
    derived = [name for name, k in KPIS.items() if k.derived]
    extra = []
    for st in stages.values():
        mine = kpis[kpis["scenario"] == st.scenario] if not kpis.empty else kpis
        if st.seconds.empty or (not mine.empty and (~mine["name"].isin(derived)).any()):
            continue
        extra += [
            {
                "scenario": k.scenario,
                "name": k.name,
                "phase": k.phase,
                "value": k.value,
                "unit": k.unit,
                "band": None,
                "previous": None,
            }
            for k in compute_kpis(engine, st.scenario_run_id, save=False)
        ]
    if not extra:
        return kpis
    return (
        pd.concat([kpis, pd.DataFrame(extra, columns=KPI_COLUMNS)], ignore_index=True)
        if not kpis.empty
        else pd.DataFrame(extra, columns=KPI_COLUMNS)
    )
