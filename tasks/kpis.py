"""Client-side KPIs of one scenario run, computed from the result tables and stored in `kpis`.

Names are the brief's contract (`p95_ms`, `p95_ms.API-1`, `throughput_rps`, `error_rate`, `rate_5xx`,
`lock_timeout_rate`, `saga_time_s`, `saga_time_max_s`, `saga_completion`, `compensation_success`,
`wait_until_entered_s`, `tc1_release_spread_ms`, `dropped_iterations`). Latency percentiles come from
merging the per-second sketches (exact merge, 1 % relative accuracy); everything else from counts or
from the `sc_*` custom-metric samples the scenario scripts emit. ADMIN requests (seeding, set-up) are
excluded everywhere. Spike KPIs are also computed per phase (`ramp_up`, `plateau`, `ramp_down`: the
plan's 0–10 s, 10–60 s, 60–120 s scaled by the run's time scale, counted from the first request).

Definitions that the verdict depends on:
- error_rate: requests answered 5xx, not answered, or answered with a status the plan does not expect of
  their step (soundcheck.plan.EXPECTED_ANSWERS, R-SPIKE-11; stages in EXACT_ANSWER_STAGES) / all
  requests; rate_5xx: 5xx / all requests;
  unexpected_answer_rate: the last kind alone.
- throughput_rps: requests / seconds from the first to the last second with requests.
- lock_timeout_rate: answers whose error was LOCK_TIMEOUT (any status) / API-3 requests.
- saga_time_s: p95 of the time from the payment request to the terminal status seen by the client;
  saga_time_max_s its maximum (R-SAGA-6: time until every saga is terminal).
- saga_completion: COMPLETED / sagas, excluding those that failed for insufficient points; a saga not
  terminal when the client gave up counts as not completed.
- compensation_success: insufficient-points sagas fully compensated / all of them. From the database
  snapshot when there is one (payment FAILED, its reservation CANCELLED, its seats AVAILABLE, outbox
  UsePointCommand and CancelSeatsCommand PUBLISHED and no FAILED event), else from what the client saw.
- wait_until_entered_s: p95 of the wait from token issue to ENTERED over every user who took a token, those
  who gave up censored at the time they stopped (Kaplan–Meier, tasks.journeys); when more than 5 % never
  entered, p95 is not reached and the value is the longest wait watched (a lower bound);
  wait_censored_share: the share who gave up; wait_until_entered_max_s: the longest wait of those who entered.
- tc1_release_spread_ms: max − min of the TC-1 send instants relative to the common release instant.
- tokens_entered_at_issue / tokens_waiting_at_issue: API-1 answers by status (R-SPIKE-10: exactly the
  capacity ENTERED).
- point_balance_error: balance before + every answered charge − balance after (R-POINT-1: 0 exactly;
  > 0 means lost updates).
- requests: requests counted (per phase too), so a KPI computed on too few requests can be told apart.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
from sqlalchemy import Engine, delete, insert, select

from soundcheck import store
from soundcheck.dialect import Dialect, load_dialect
from soundcheck.models import KPI
from soundcheck.plan import EXACT_ANSWER_STAGES, SETUP_TAG, SPIKE_PHASES
from soundcheck.sketch import Histogram
from tasks.journeys import wait_quantile

EXCLUDED_ENDPOINTS = frozenset({SETUP_TAG})
INSUFFICIENT = "INSUFFICIENT_POINTS"


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.quantile(np.asarray(values, dtype=float), q, method="lower")) if values else None


def _latency_kpis(rows: list[Any], scenario: str, phase: str | None, dialect: Dialect | None = None) -> list[KPI]:
    """p95/p99 overall and per endpoint, throughput, error rates, from second_aggregates rows."""
    per_ep: dict[str, Histogram] = defaultdict(Histogram)
    total = Histogram()
    n = s5 = failed = unexpected = 0
    seconds: list[int] = []
    dialect = dialect or load_dialect("plan")
    for r in rows:
        h = Histogram.from_bytes(r.sketch) if r.sketch else None
        if h is not None:
            per_ep[r.endpoint].merge(h)
            total.merge(h)
        n += r.count
        s5 += r.s5xx
        failed += r.failed
        if scenario in EXACT_ANSWER_STAGES:
            unexpected += sum(
                int(c)
                for code, c in (getattr(r, "codes", None) or {}).items()
                if 0 < int(code) < 500 and not dialect.answer_expected(r.endpoint, int(code))
            )
        seconds.append(r.second)
    out = [KPI(name="requests", scenario=scenario, value=float(n), unit="count", phase=phase)]
    if not n:
        return out
    p95, p99 = total.quantiles((0.95, 0.99))
    out += [
        KPI(name="p95_ms", scenario=scenario, value=p95, unit="ms", phase=phase),
        KPI(name="p99_ms", scenario=scenario, value=p99, unit="ms", phase=phase),
    ]
    for ep in sorted(per_ep):
        e95, e99 = per_ep[ep].quantiles((0.95, 0.99))
        out += [
            KPI(name=f"p95_ms.{ep}", scenario=scenario, value=e95, unit="ms", phase=phase),
            KPI(name=f"p99_ms.{ep}", scenario=scenario, value=e99, unit="ms", phase=phase),
        ]
    span = max(seconds) - min(seconds) + 1
    out += [
        KPI(name="throughput_rps", scenario=scenario, value=n / span, unit="req/s", phase=phase),
        KPI(name="error_rate", scenario=scenario, value=(s5 + failed + unexpected) / n, unit="ratio", phase=phase),
        KPI(name="unexpected_answer_rate", scenario=scenario, value=unexpected / n, unit="ratio", phase=phase),
        KPI(name="rate_5xx", scenario=scenario, value=s5 / n, unit="ratio", phase=phase),
    ]
    return out


def _samples(engine: Engine, sid: int) -> dict[str, list[tuple[float, float, dict[str, str]]]]:
    out: dict[str, list[tuple[float, float, dict[str, str]]]] = defaultdict(list)
    t = store.k6_samples
    with engine.connect() as c:
        for r in c.execute(
            select(t.c.metric, t.c.ts, t.c.value, t.c.tags)
            .where(t.c.scenario_run_id == sid)
            .where(t.c.metric.like("sc\\_%", escape="\\"))
        ):
            out[r.metric].append((r.ts, r.value, r.tags or {}))
    return out


def _snapshot_compensation(engine: Engine, sid: int) -> tuple[int, int] | None:
    """(fully compensated, insufficient-points payments) from this scenario run's DB snapshot."""
    t = store.db_snapshots
    with engine.connect() as c:
        rows = c.execute(select(t.c.table_name, t.c.row).where(t.c.scenario_run_id == sid)).all()
    if not rows:
        return None
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r.table_name].append(r.row)
    failed_pay = [p for p in by["payment"] if (p.get("failure_reason") or "").upper().startswith("INSUFFICIENT")]
    if not failed_pay:
        return None
    ok = 0
    for p in failed_pay:
        res = [r for r in by["reservation"] if str(r.get("id")) == str(p.get("reservation_id"))]
        seat_ids = {r.get("seat_id") for r in res}
        seats = [s for s in by["seat"] if s.get("id") in seat_ids]
        events = [o for o in by["payment_outbox"] if str(o.get("aggregate_id")) == str(p.get("id"))]
        published = {o.get("event_type") for o in events if o.get("status") == "PUBLISHED"}
        if (
            p.get("status") == "FAILED"
            and res
            and all(r.get("status") == "CANCELLED" for r in res)
            and seats
            and all(s.get("status") == "AVAILABLE" for s in seats)
            and {"UsePointCommand", "CancelSeatsCommand"} <= published
            and not any(o.get("status") == "FAILED" for o in events)
        ):
            ok += 1
    return ok, len(failed_pay)


def _wait_kpis(samples: dict[str, list[tuple[float, float, dict[str, str]]]], scenario: str) -> list[KPI]:
    """The wait until ENTERED over every user who took a token (R-SPIKE-13, tasks.journeys): Kaplan–Meier
    with give-ups censored; without journeys (an older script), the waits seen, when nobody gave up."""
    journeys_ = [
        (v, tags) for _, v, tags in samples.get("sc_journey", []) if tags.get("at_issue") in ("ENTERED", "WAITING")
    ]
    if journeys_:
        times = [v for v, _ in journeys_]
        seen = [tags.get("outcome") == "entered" for _, tags in journeys_]
    elif not samples.get("sc_poll_gave_up"):
        times = [v for _, v, _ in samples.get("sc_wait_until_entered_s", [])]
        seen = [True] * len(times)
    else:
        return []
    if not times:
        return []
    p95, _reached = wait_quantile(times, seen, 0.95)
    out = [
        KPI(name="wait_until_entered_s", scenario=scenario, value=p95, unit="s"),
        KPI(name="wait_censored_share", scenario=scenario, value=1.0 - sum(seen) / len(seen), unit="ratio"),
    ]
    entered = [t for t, s in zip(times, seen, strict=True) if s]
    if entered:
        out.append(KPI(name="wait_until_entered_max_s", scenario=scenario, value=max(entered), unit="s"))
    return out


def compute_kpis(engine: Engine, scenario_run_id: int, *, save: bool = True) -> list[KPI]:
    """Every client KPI of one scenario run; stored in `kpis` (replacing this run's earlier values)."""
    sr = store.scenario_runs
    with engine.connect() as c:
        run = c.execute(select(sr).where(sr.c.id == scenario_run_id)).one()
        t = store.second_aggregates
        rows = c.execute(
            select(t.c.second, t.c.endpoint, t.c.count, t.c.s5xx, t.c.failed, t.c.codes, t.c.sketch).where(
                t.c.scenario_run_id == scenario_run_id
            )
        ).all()
        time_scale = c.execute(select(store.runs.c.time_scale).where(store.runs.c.run_id == run.run_id)).scalar()
    scenario = run.scenario
    details = run.details or {}
    time_scale = float(details.get("time_scale") or time_scale or 1.0)
    rows = [r for r in rows if r.endpoint not in EXCLUDED_ENDPOINTS]
    dialect = load_dialect(details.get("dialect") or "plan")
    kpis = _latency_kpis(rows, scenario, None, dialect)
    if scenario == "spike" and rows:
        t0 = min(r.second for r in rows)
        for phase, (a, b) in SPIKE_PHASES.items():
            lo, hi = t0 + a * time_scale, t0 + b * time_scale
            kpis += _latency_kpis([r for r in rows if lo <= r.second < hi], scenario, phase, dialect)

    samples = _samples(engine, scenario_run_id)
    api3 = sum(r.count for r in rows if r.endpoint == "API-3")
    if api3:
        lock = sum(v for _, v, _ in samples.get("sc_lock_timeouts", []))
        kpis.append(KPI(name="lock_timeout_rate", scenario=scenario, value=lock / api3, unit="ratio"))

    sagas = samples.get("sc_saga_time_s", [])
    unfinished = sum(v for _, v, _ in samples.get("sc_saga_unfinished", []))
    if sagas or unfinished:
        times = [v for _, v, _ in sagas]
        if times:
            kpis += [
                KPI(name="saga_time_s", scenario=scenario, value=_quantile(times, 0.95), unit="s"),
                KPI(name="saga_time_max_s", scenario=scenario, value=max(times), unit="s"),
            ]
        counted = [tags for _, _, tags in sagas if tags.get("reason") != INSUFFICIENT]
        completed = sum(1 for tags in counted if tags.get("status") == "COMPLETED")
        denom = len(counted) + unfinished
        if denom:
            kpis.append(KPI(name="saga_completion", scenario=scenario, value=completed / denom, unit="ratio"))
    snap = _snapshot_compensation(engine, scenario_run_id)
    client_comp = samples.get("sc_compensation", [])
    if snap is not None:
        kpis.append(KPI(name="compensation_success", scenario=scenario, value=snap[0] / snap[1], unit="ratio"))
    elif client_comp:
        kpis.append(
            KPI(
                name="compensation_success",
                scenario=scenario,
                value=sum(v for _, v, _ in client_comp) / len(client_comp),
                unit="ratio",
            )
        )

    kpis += _wait_kpis(samples, scenario)
    offsets = [v for _, v, tags in samples.get("sc_release_offset_ms", []) if tags.get("tc", "tc1") == "tc1"]
    if offsets:
        kpis.append(KPI(name="tc1_release_spread_ms", scenario=scenario, value=max(offsets) - min(offsets), unit="ms"))
    statuses = samples.get("sc_token_status", [])
    if statuses:
        for st in ("ENTERED", "WAITING"):
            kpis.append(
                KPI(
                    name=f"tokens_{st.lower()}_at_issue",
                    scenario=scenario,
                    value=float(sum(v for _, v, tags in statuses if tags.get("status") == st)),
                    unit="count",
                )
            )
    balances = {tags.get("phase"): v for _, v, tags in samples.get("sc_point_balance", [])}
    if "before" in balances and "after" in balances:
        charged = sum(v for _, v, _ in samples.get("sc_point_charged", []))
        kpis.append(
            KPI(
                name="point_balance_error",
                scenario=scenario,
                value=balances["before"] + charged - balances["after"],
                unit="points",
            )
        )
    kpis.append(
        KPI(name="dropped_iterations", scenario=scenario, value=float(run.dropped_iterations or 0), unit="count")
    )
    kpis = [k for k in kpis if k.value is None or not math.isnan(k.value)]
    if save:
        save_kpis(engine, run.run_id, scenario, kpis)
    return kpis


def save_kpis(engine: Engine, run_id: str, scenario: str, kpis: list[KPI]) -> None:
    """Replace this scenario's client KPIs of the run (names computed here only; others' rows stay)."""
    names = {k.name for k in kpis}
    t = store.kpis
    with engine.begin() as c:
        if names:
            c.execute(delete(t).where(t.c.run_id == run_id, t.c.scenario == scenario, t.c.name.in_(names)))
        if kpis:
            c.execute(insert(t), store.kpi_rows(run_id, kpis))


try:  # thin Prefect wrapper
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(name="compute-kpis", cache_policy=NO_CACHE)
    def compute_kpis_task(engine: Engine, scenario_run_id: int) -> list[KPI]:
        return compute_kpis(engine, scenario_run_id)
except ImportError:  # pragma: no cover
    pass
