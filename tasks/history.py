"""History: each KPI against the previous comparable run, and the listing behind `soundcheck history`.

Comparable means the same profile, scenario and `--scale` (a 2 %-scale run says nothing about a full
one), started earlier, whose stage of that scenario COMPLETED (an inconclusive stage is no baseline).
The delta is relative to the previous value and its direction is shown as the plan's dashboard does
(`p95 1.2 s ↑ +15 %`). A change for the worse beyond `Profile.regression_tolerance` is a regression,
flagged even when the KPI is still inside its band; it is shown in the report and the decision trace
but does not change the verdict by itself (on a shared machine run-to-run noise alone reaches 10 %).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from soundcheck import store
from soundcheck.bands import DEFAULT_BANDS, base_name

#: KPIs where more is better; every other KPI is better lower.
HIGHER_IS_BETTER = frozenset({"throughput_rps", "compensation_success", "saga_completion"})


def higher_is_better(name: str, bands: dict[str, Any] | None = None) -> bool:
    fam = base_name(name)
    table = bands or DEFAULT_BANDS
    if name in table:
        return bool(table[name].higher_is_better)
    if fam in table:
        return bool(table[fam].higher_is_better)
    return fam in HIGHER_IS_BETTER


@dataclass(frozen=True)
class Delta:
    previous: float | None
    delta_pct: float | None  # relative change, e.g. 0.15 for +15 %
    regression: bool

    def arrow(self) -> str:
        if self.delta_pct is None:
            return ""
        return "↑" if self.delta_pct > 0 else "↓" if self.delta_pct < 0 else "→"


def compare(name: str, value: float | None, previous: float | None, tolerance: float,
            bands: dict[str, Any] | None = None) -> Delta:
    """Delta of one KPI against its previous value; a regression is a worse change beyond tolerance."""
    if value is None or previous is None:
        return Delta(previous, None, False)
    if previous == 0:
        return Delta(previous, None, False)  # no relative change from zero; bands and checks judge it
    pct = (value - previous) / abs(previous)
    worse = -pct if higher_is_better(name, bands) else pct
    return Delta(previous, pct, worse > tolerance)


def format_delta(d: Delta) -> str:
    """`↑ +15 %` as on the plan's dashboard; empty without a previous run."""
    if d.delta_pct is None:
        return ""
    return f"{d.arrow()} {d.delta_pct * 100:+.0f} %"


def previous_runs(engine: Engine, run_id: str) -> dict[str, str]:
    """For each scenario of `run_id`, the latest earlier comparable run whose stage COMPLETED."""
    r, sr = store.runs, store.scenario_runs
    with engine.connect() as c:
        me = c.execute(select(r).where(r.c.run_id == run_id)).first()
        if me is None:
            return {}
        mine = {row.scenario for row in c.execute(select(sr.c.scenario).where(sr.c.run_id == run_id))}
        rows = c.execute(
            select(r.c.run_id, sr.c.scenario, r.c.started_at)
            .join(sr, sr.c.run_id == r.c.run_id)
            .where(r.c.profile == me.profile, r.c.scale == me.scale, r.c.run_id != run_id,
                   r.c.started_at < me.started_at, sr.c.status == "COMPLETED")
            .order_by(r.c.started_at.desc())).fetchall()
    out: dict[str, str] = {}
    for row in rows:
        if row.scenario in mine and row.scenario not in out:
            out[row.scenario] = row.run_id
    return out


def previous_values(engine: Engine, run_id: str) -> dict[tuple[str, str, str | None], float]:
    """(scenario, kpi name, phase) → the value in the previous comparable run of that scenario."""
    prev = previous_runs(engine, run_id)
    if not prev:
        return {}
    k = store.kpis
    out: dict[tuple[str, str, str | None], float] = {}
    with engine.connect() as c:
        for scenario, prev_id in prev.items():
            for row in c.execute(select(k.c.name, k.c.phase, k.c.value)
                                 .where(k.c.run_id == prev_id, k.c.scenario == scenario)):
                if row.value is not None:
                    out[(scenario, row.name, row.phase)] = float(row.value)
    return out


def list_runs(engine: Engine, limit: int = 20, profile: str | None = None) -> list[dict[str, Any]]:
    """Past runs, newest first, for `soundcheck history`."""
    r = store.runs
    q = select(r.c.run_id, r.c.profile, r.c.started_at, r.c.finished_at, r.c.status, r.c.verdict, r.c.scale,
               r.c.time_scale, r.c.scenarios).order_by(r.c.started_at.desc()).limit(limit)
    if profile:
        q = q.where(r.c.profile == profile)
    with engine.connect() as c:
        return [dict(row._mapping) for row in c.execute(q)]
