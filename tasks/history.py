"""History: each KPI against the previous comparable run, its nightly series, and the lasting shifts in it.

Comparable means the same profile, scenario and `--scale` (a 2 %-scale run says nothing about a full
one), started earlier, whose stage of that scenario COMPLETED (an inconclusive stage is no baseline).

- **Change against the previous run** (`KPI.rel_change`, a fraction: 0.158 is +15.8 %), shown as the
  plan's dashboard does (`↑ +16 %`) by `fmt_change`, the one formatter the report, Slack and Prefect use.
  One night's change says nothing by itself: run-to-run noise on a shared machine reaches 10 %.
- **Lasting shifts** (R-REG-1): each gated KPI's series of comparable runs (`Profile.history.runs` of
  them, this run last) goes through `soundcheck.changepoints`. The latest shift still in force is
  attached to the KPI with its size, first run, that run's build and its p-value. A shift no earlier
  run reported is *new*; a new shift for the worse is a regression, which holds approval or blocks
  (`Profile.history.regression`, tasks.decide). Each run records the shifts it saw (`store.shifts`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from soundcheck import store
from soundcheck.bands import band, bands_for, base_name
from soundcheck.changepoints import noise, shifts
from soundcheck.models import KPI, Shift
from soundcheck.plan import KPIS
from soundcheck.profile import Profile

SeriesKey = tuple[str, str, str | None]  # (scenario, kpi name, phase)


def higher_is_better(name: str, bands: dict[str, Any] | None = None) -> bool:
    """The KPI's direction: a profile band's flag first, then the plan's catalogue (soundcheck.plan.KPIS)."""
    for key in (name, base_name(name)):
        if bands and key in bands:
            return bool(bands[key].higher_is_better)
        if key in KPIS:
            return KPIS[key].higher_is_better
    return False


def rel_change(value: float | None, previous: float | None) -> float | None:
    """value / previous − 1; None without a previous value or from zero (no relative change from 0)."""
    if value is None or previous is None or previous == 0:
        return None
    return (value - previous) / abs(previous)


def fmt_change(change: float | None) -> str:
    """`↑ +16 %` as on the plan's dashboard (one decimal under 10 %: `↓ −3.2 %`); empty without a change."""
    if change is None or math.isnan(change):
        return ""
    pct = change * 100
    arrow = "↑" if pct > 0 else "↓" if pct < 0 else "→"
    text = f"{pct:+.1f}" if abs(pct) < 10 else f"{pct:+.0f}"
    return f"{arrow} {text.replace('-', '−')} %"


# ---------------------------------------------------------------------------------- comparable runs


def previous_runs(engine: Engine, run_id: str) -> dict[str, str]:
    """For each scenario of `run_id`, the latest earlier comparable run whose stage COMPLETED."""
    series = _comparable(engine, run_id, limit=1)
    return {scenario: runs[-1].run_id for scenario, runs in series.items() if runs}


def previous_values(engine: Engine, run_id: str) -> dict[SeriesKey, float]:
    """(scenario, kpi name, phase) → the value in the previous comparable run of that scenario."""
    return {key: points[-1].value for key, points in kpi_series(engine, run_id, limit=1).items()}


@dataclass(frozen=True)
class RunRef:
    run_id: str
    started_at: datetime
    build: str | None


@dataclass(frozen=True)
class Point:
    run_id: str
    started_at: datetime
    build: str | None
    value: float


def _comparable(engine: Engine, run_id: str, limit: int) -> dict[str, list[RunRef]]:
    """Per scenario of `run_id`: up to `limit` earlier comparable runs whose stage COMPLETED, oldest first."""
    r, sr = store.runs, store.scenario_runs
    with engine.connect() as c:
        me = c.execute(select(r).where(r.c.run_id == run_id)).first()
        if me is None:
            return {}
        mine = {row.scenario for row in c.execute(select(sr.c.scenario).where(sr.c.run_id == run_id))}
        rows = c.execute(
            select(r.c.run_id, r.c.started_at, r.c.build, sr.c.scenario)
            .join(sr, sr.c.run_id == r.c.run_id)
            .where(
                r.c.profile == me.profile,
                r.c.scale == me.scale,
                r.c.run_id != run_id,
                r.c.started_at < me.started_at,
                sr.c.status == "COMPLETED",
                sr.c.scenario.in_(mine),
            )
            .order_by(r.c.started_at.desc())
        ).fetchall()
    out: dict[str, list[RunRef]] = defaultdict(list)
    for row in rows:
        runs = out[row.scenario]
        if len(runs) < limit and all(x.run_id != row.run_id for x in runs):
            runs.append(RunRef(row.run_id, row.started_at, row.build))
    return {s: runs[::-1] for s, runs in out.items()}


def kpi_series(engine: Engine, run_id: str, limit: int) -> dict[SeriesKey, list[Point]]:
    """Each KPI's values in the `limit` earlier comparable runs of its scenario, oldest first."""
    runs = _comparable(engine, run_id, limit)
    if not runs:
        return {}
    k = store.kpis
    refs = {(s, ref.run_id): ref for s, lst in runs.items() for ref in lst}
    out: dict[SeriesKey, list[Point]] = defaultdict(list)
    with engine.connect() as c:
        rows = c.execute(
            select(k.c.run_id, k.c.scenario, k.c.name, k.c.phase, k.c.value).where(
                k.c.run_id.in_({rid for _, rid in refs})
            )
        ).fetchall()
    for row in rows:
        ref = refs.get((row.scenario, row.run_id))
        if ref is not None and row.value is not None and not math.isnan(row.value):
            out[(row.scenario, row.name, row.phase)].append(
                Point(ref.run_id, ref.started_at, ref.build, float(row.value))
            )
    return {key: sorted(points, key=lambda p: p.started_at) for key, points in out.items()}


def gated(k: KPI | tuple[str, str, str | None], bands: dict[str, Any], scale: float) -> bool:
    """A KPI with a band where it was measured: the ones the verdict stands on, and whose series are watched."""
    scenario, name, phase = (k.scenario, k.name, k.phase) if isinstance(k, KPI) else k
    return band(name, 0.0, bands=bands, scale=scale, scenario=scenario, phase=phase).band is not None


# ------------------------------------------------------------------------------------------ shifts


def attach_shifts(
    engine: Engine, run_id: str, kpis: list[KPI], profile: Profile, *, scale: float, completed: set[str]
) -> list[KPI]:
    """Each gated KPI of a COMPLETED stage gets the latest shift of its series (this run's value last);
    `regression` when it is new and for the worse. Returns the KPIs with a shift."""
    h = profile.history
    table = bands_for(profile)
    series = kpi_series(engine, run_id, h.runs)
    build = build_of(engine, run_id)
    out = []
    for k in kpis:
        if k.value is None or k.scenario not in completed or not gated(k, table, scale):
            continue
        points = series.get((k.scenario, k.name, k.phase), [])
        values = [p.value for p in points] + [k.value]
        cps = shifts(values, h)
        if not cps:
            continue
        cp = cps[-1]
        ids = [p.run_id for p in points] + [run_id]
        builds = [p.build for p in points] + [build]
        worse = (cp.rel_change < 0) if higher_is_better(k.name, table) else (cp.rel_change > 0)
        k.shift = Shift(
            first_run=ids[cp.index],
            build=builds[cp.index],
            before=cp.before,
            after=cp.after,
            rel_change=cp.rel_change,
            p_value=cp.p_value,
            noise=noise(values[: cp.index]),
            runs=len(values) - cp.index,
            worse=worse,
            new=not _reported_before(engine, run_id, profile.name, scale, k, ids, cp.index),
        )
        k.regression = k.shift.new and worse
        out.append(k)
    return out


def build_of(engine: Engine, run_id: str) -> str | None:
    with engine.connect() as c:
        return c.execute(select(store.runs.c.build).where(store.runs.c.run_id == run_id)).scalar_one_or_none()


def _reported_before(
    engine: Engine, run_id: str, profile: str, scale: float, k: KPI, ids: list[str], index: int
) -> bool:
    """Did an earlier run already report this change: a shift of any KPI of the scenario whose first run is within
    one run of this one's? One change is one alert, whichever KPI crossed significance first; the KPIs that
    follow it later are shown as known."""
    near = set(ids[max(index - 1, 0) : index + 2])
    s, r = store.shifts, store.runs
    with engine.connect() as c:
        me = c.execute(select(r.c.started_at).where(r.c.run_id == run_id)).scalar_one_or_none()
        q = (
            select(s.c.first_run)
            .join(r, r.c.run_id == s.c.run_id)
            .where(s.c.profile == profile, s.c.scale == scale, s.c.scenario == k.scenario, s.c.run_id != run_id)
        )
        if me is not None:
            q = q.where(r.c.started_at < me)
        return any(row.first_run in near for row in c.execute(q))


def save_shifts(engine: Engine, run_id: str, profile: str, scale: float, kpis: list[KPI]) -> None:
    """The shifts this run saw; a re-judge replaces them."""
    rows = [
        {
            "run_id": run_id,
            "profile": profile,
            "scale": scale,
            "scenario": k.scenario,
            "kpi": k.name,
            "phase": k.phase,
            "first_run": k.shift.first_run,
            "build": k.shift.build,
            "before": k.shift.before,
            "after": k.shift.after,
            "rel_change": k.shift.rel_change,
            "p_value": k.shift.p_value,
            "worse": k.shift.worse,
        }
        for k in kpis
        if k.shift is not None
    ]
    with engine.begin() as c:
        c.execute(delete(store.shifts).where(store.shifts.c.run_id == run_id))
        if rows:
            c.execute(insert(store.shifts), rows)


def fmt_shift(k: KPI) -> str:
    """`p95_ms.API-5 soak +18 % since run X (build abc123)`: one line for Slack, the report and the trace."""
    s = k.shift
    if s is None:
        return ""
    where = k.scenario + (f"/{k.phase}" if k.phase else "")
    pct = s.rel_change * 100
    size = (f"{pct:+.1f}" if abs(pct) < 10 else f"{pct:+.0f}").replace("-", "−")
    return (
        f"{k.name} {where} {size} % since run {s.first_run}"
        + (f" (build {s.build})" if s.build else "")
        + f", {s.runs} run{'s' if s.runs != 1 else ''} at the new level, p = {s.p_value:.1g}"
    )


# ------------------------------------------------------------------------------------------ listing


def gated_series(
    engine: Engine,
    profile: str,
    *,
    scale: float | None = None,
    scenario: str | None = None,
    kpi: str | None = None,
    limit: int = 30,
    bands: dict[str, Any] | None = None,
) -> dict[SeriesKey, list[Point]]:
    """The nightly series behind `soundcheck history --kpi`: per (scenario, KPI, phase), the values of the
    profile's last `limit` runs whose stage COMPLETED, oldest first (at the newest run's scale unless given).
    Only gated KPIs unless `kpi` names one."""
    r, sr, k = store.runs, store.scenario_runs, store.kpis
    with engine.connect() as c:
        if scale is None:
            scale = c.execute(
                select(r.c.scale).where(r.c.profile == profile).order_by(r.c.started_at.desc()).limit(1)
            ).scalar_one_or_none()
            if scale is None:
                return {}
        q = (
            select(r.c.run_id, r.c.started_at, r.c.build, k.c.scenario, k.c.name, k.c.phase, k.c.value)
            .join(sr, sr.c.run_id == r.c.run_id)
            .join(k, (k.c.run_id == r.c.run_id) & (k.c.scenario == sr.c.scenario))
            .where(r.c.profile == profile, r.c.scale == scale, sr.c.status == "COMPLETED")
        )
        if scenario:
            q = q.where(k.c.scenario == scenario)
        if kpi:
            q = q.where((k.c.name == kpi) | (k.c.name.like(f"{kpi}.%")))
        rows = c.execute(q).fetchall()
    table = bands if bands is not None else bands_for(None)
    out: dict[SeriesKey, list[Point]] = defaultdict(list)
    for row in rows:
        key = (row.scenario, row.name, row.phase)
        if row.value is None or math.isnan(row.value) or (not kpi and not gated(key, table, scale)):
            continue
        out[key].append(Point(row.run_id, row.started_at, row.build, float(row.value)))
    return {key: sorted(points, key=lambda p: p.started_at)[-limit:] for key, points in out.items()}


def list_runs(engine: Engine, limit: int = 20, profile: str | None = None) -> list[dict[str, Any]]:
    """Past runs, newest first, for `soundcheck history`."""
    r = store.runs
    q = (
        select(
            r.c.run_id,
            r.c.profile,
            r.c.started_at,
            r.c.finished_at,
            r.c.status,
            r.c.verdict,
            r.c.scale,
            r.c.time_scale,
            r.c.scenarios,
            r.c.build,
        )
        .order_by(r.c.started_at.desc())
        .limit(limit)
    )
    if profile:
        q = q.where(r.c.profile == profile)
    with engine.connect() as c:
        return [dict(row._mapping) for row in c.execute(q)]
