"""Constructed result tables for the verdict-stage tests: a healthy run of every scenario, with knobs
to break exactly one thing at a time (the tree's branches are driven from these)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, update

from soundcheck import store

T0 = 1_790_000_000  # epoch second the load starts in every constructed stage
MB = 1024**2


def new_store(tmp_path: Any) -> Engine:
    return store.open_store(f"sqlite:///{tmp_path}/results.db")


def _stage(
    engine: Engine,
    run_id: str,
    scenario: str,
    *,
    status: str = "COMPLETED",
    k6_cpu_share: float = 0.3,
    dropped: int = 0,
    details: dict[str, Any] | None = None,
    seconds: int = 30,
    reason: str | None = None,
) -> int:
    sid = store.start_scenario(engine, run_id, scenario)
    with engine.begin() as c:
        c.execute(
            update(store.scenario_runs)
            .where(store.scenario_runs.c.id == sid)
            .values(
                started_at=datetime.fromtimestamp(T0 - 1, UTC),
                status=status,
                k6_cpu_share=k6_cpu_share,
                dropped_iterations=dropped,
                details=details or {},
                reason=reason,
                finished_at=datetime.fromtimestamp(T0 + seconds + 1, UTC),
            )
        )
    return sid


def _kpis(engine: Engine, run_id: str, scenario: str, values: dict[str, Any]) -> None:
    rows = []
    for key, v in values.items():
        name, _, phase = key.partition("@")
        unit = (
            "ms" if "_ms" in name else "req/s" if name == "throughput_rps" else "s" if name.endswith("_s") else "ratio"
        )
        rows.append(
            {"run_id": run_id, "scenario": scenario, "name": name, "phase": phase or None, "value": v, "unit": unit}
        )
    if rows:
        with engine.begin() as c:
            c.execute(insert(store.kpis), rows)


def _seconds(
    engine: Engine,
    sid: int,
    endpoints: list[str],
    n: int,
    *,
    rps: int = 50,
    p99: float = 20.0,
    s5xx: int = 0,
    gap: int | None = None,
    p99_fn: Any = None,
) -> None:
    rows = []
    for i in range(n):
        if gap is not None and i == gap:
            continue
        for ep in endpoints:
            p = p99_fn(i) if p99_fn else p99
            rows.append(
                {
                    "scenario_run_id": sid,
                    "second": T0 + i,
                    "endpoint": ep,
                    "count": rps,
                    "s2xx": rps - s5xx,
                    "s3xx": 0,
                    "s4xx": 0,
                    "s5xx": s5xx,
                    "failed": 0,
                    "codes": {"200": rps},
                    "p50_ms": p / 3,
                    "p95_ms": p * 0.8,
                    "p99_ms": p,
                    "max_ms": p * 1.2,
                }
            )
    with engine.begin() as c:
        c.execute(insert(store.second_aggregates), rows)


def _server(engine: Engine, run_id: str, sid: int, n: int, series: dict[str, Any], every: int = 2) -> None:
    rows = []
    for i in range(0, n, every):
        for kpi, v in series.items():
            if v is None:  # a metric the target does not expose
                continue
            rows.append(
                {
                    "run_id": run_id,
                    "scenario_run_id": sid,
                    "ts": float(T0 + i),
                    "kpi": kpi,
                    "value": float(v(i) if callable(v) else v),
                    "source": "scrape",
                }
            )
    with engine.begin() as c:
        c.execute(insert(store.server_samples), rows)


def _snap(engine: Engine, sid: int, table: str, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as c:
        c.execute(
            insert(store.db_snapshots),
            [{"scenario_run_id": sid, "taken_at": store.now(), "table_name": table, "row": r} for r in rows],
        )


def _requests(engine: Engine, sid: int, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as c:
        c.execute(
            insert(store.requests),
            [
                {"scenario_run_id": sid, "ts": float(T0), "duration_ms": 12.0, "error_code": None, "tags": {}, **r}
                for r in rows
            ],
        )


SERVER_OK = {
    "db_pool_size": 5,
    "db_pool_in_use": 2,
    "db_pool_waiting": 0,
    "db_pool_timeouts_total": 0,
    "rss_bytes": 200 * MB,
    "redis_memory_bytes": 50 * MB,
    "consumer_lag_messages": 5,
    "consumer_lag_seconds": 0.2,
    "db_cpu_percent": 30,
    "gc_pause_max_s": 0.01,
    "outbox_pending": 0,
    "outbox_oldest_age_s": 0,
}


def race(
    engine: Engine,
    run_id: str,
    *,
    tc1_200: int = 1,
    tc1_rows: int = 1,
    s5xx: int = 0,
    lock_rate: float = 0.0,
    locks: dict[int, int] | None = None,
    **stage: Any,
) -> int:
    """`locks`: TC-2 lock-wait timeouts by answer status, as race.js records them (`sc_lock_timeouts`
    samples tagged like the request; `requests.error_code` is k6's numeric error code)."""
    sid = _stage(engine, run_id, "race", **stage)
    lock_rows = [
        {
            "scenario_run_id": sid,
            "ts": float(T0),
            "metric": "sc_lock_timeouts",
            "value": 1.0,
            "tags": {"endpoint": "API-3", "name": "tc2", "tc": "tc2", "seat": "10", "status": str(code)},
        }
        for code, n in (locks or {}).items()
        for _ in range(n)
    ]
    if lock_rows:
        with engine.begin() as c:
            c.execute(insert(store.k6_samples), lock_rows)
    reqs = [
        {"endpoint": "API-3", "name": "tc1", "status": 200 if i < tc1_200 else 409, "tags": {"seat_id": 1}}
        for i in range(100)
    ]
    reqs += [
        {"endpoint": "API-3", "name": "tc2", "status": 500 if i < s5xx else 200, "tags": {"seat_id": 10 + i}}
        for i in range(100)
    ]
    reqs += [{"endpoint": "API-3", "name": "tc3", "status": 200, "tags": {"tc": "tc3"}} for _ in range(100)]
    _requests(engine, sid, reqs)
    rows = [{"id": 1000 + i, "show_id": 101, "seat_id": 1, "status": "HELD"} for i in range(tc1_rows)]
    rows += [{"id": 2000 + i, "show_id": 101, "seat_id": 10 + i, "status": "HELD"} for i in range(100)]
    rows += [{"id": 3000, "show_id": 101, "seat_id": 300, "status": "HELD"}]
    _snap(engine, sid, "reservation", rows)
    with engine.begin() as c:  # race.js: one sc_tc3_reservation per TC-3 answer, tagged with its reservationId
        c.execute(
            insert(store.k6_samples),
            [
                {
                    "scenario_run_id": sid,
                    "ts": float(T0),
                    "metric": "sc_tc3_reservation",
                    "value": 1.0,
                    "tags": {"status": "200", "reservationId": "r-tc3"},
                }
                for _ in range(100)
            ],
        )
    _seconds(engine, sid, ["API-3"], 2, rps=150)
    _kpis(engine, run_id, "race", {"error_rate": s5xx / 300, "lock_timeout_rate": lock_rate, "p95_ms": 900.0})
    return sid


def saga(
    engine: Engine,
    run_id: str,
    *,
    compensated: bool = True,
    lag: float = 5,
    comp_success: float = 1.0,
    saga_time: float = 6.0,
    stuck: bool = False,
    **stage: Any,
) -> int:
    if stuck:
        return stuck_saga(engine, run_id, **stage)
    sid = _stage(engine, run_id, "saga", **stage)
    t = datetime.fromtimestamp(T0, UTC)
    pays = [
        {
            "id": 1,
            "reservation_id": 11,
            "status": "FAILED" if compensated else "PROCESSING",
            "failure_reason": "INSUFFICIENT_POINTS",
            "amount": 150000,
            "created_at": t.isoformat(),
            "updated_at": (t + timedelta(seconds=6)).isoformat(),
        }
    ]
    pays += [
        {
            "id": 2 + i,
            "reservation_id": 20 + i,
            "status": "COMPLETED",
            "amount": 150000,
            "created_at": t.isoformat(),
            "updated_at": (t + timedelta(seconds=5)).isoformat(),
        }
        for i in range(5)
    ]
    _snap(engine, sid, "payment", pays)
    _snap(
        engine,
        sid,
        "reservation",
        [{"id": 11, "show_id": 101, "seat_id": 5, "status": "CANCELLED" if compensated else "HELD"}]
        + [{"id": 20 + i, "show_id": 101, "seat_id": 30 + i, "status": "CONFIRMED"} for i in range(5)],
    )
    _snap(engine, sid, "seat", [{"id": 5, "status": "AVAILABLE" if compensated else "HELD"}])
    outbox = [{"aggregate_id": 1, "event_type": "UsePointCommand", "status": "PUBLISHED"}]
    if compensated:
        outbox.append({"aggregate_id": 1, "event_type": "CancelSeatsCommand", "status": "PUBLISHED"})
    outbox += [{"aggregate_id": 2 + i, "event_type": "UsePointCommand", "status": "PUBLISHED"} for i in range(5)]
    _snap(engine, sid, "payment_outbox", outbox)
    with engine.begin() as c:
        c.execute(
            insert(store.k6_samples),
            [
                {
                    "scenario_run_id": sid,
                    "ts": float(T0 + 5),
                    "metric": "sc_saga_time_s",
                    "value": 5.0,
                    "tags": {"case": "concurrent", "status": "COMPLETED", "reason": ""},
                }
                for i in range(5)
            ],
        )
    _requests(engine, sid, [{"endpoint": "API-4", "name": "pay", "status": 200} for _ in range(6)])
    _seconds(engine, sid, ["API-4", "API-PAY-GET"], 10, rps=5)
    _server(engine, run_id, sid, 10, {**SERVER_OK, "consumer_lag_messages": lag})
    _kpis(
        engine,
        run_id,
        "saga",
        {
            "saga_time_s": saga_time,
            "saga_time_max_s": saga_time,
            "compensation_success": comp_success,
            "error_rate": 0.0,
        },
    )
    return sid


def stuck_saga(engine: Engine, run_id: str, **stage: Any) -> int:
    """The reference service's `stuck_outbox` as saga.js records it: no outbox event is ever published, so
    every payment stays PENDING (no failure reason names the insufficient-points one), the client watches
    each saga 120 s and gives up (`sc_saga_unfinished{case}`, no `sc_saga_time_s`), the load stage has no
    saga_time_s, and the oldest PENDING outbox row ages past 2 minutes."""
    sid = _stage(engine, run_id, "saga", seconds=125, **stage)
    t = datetime.fromtimestamp(T0, UTC).replace(tzinfo=None)
    cases = ["compensation"] + ["concurrent"] * 5
    sent = [T0 + 0.1] + [T0 + 3.1 + 0.01 * i for i in range(5)]  # the concurrent ones after the release delay
    pays = [
        {
            "id": 1 + i,
            "reservation_id": f"r{i}",
            "user_id": 300 + i,
            "amount": 150000,
            "status": "PENDING",
            "failure_reason": None,
            "completed_at": None,
            "created_at": (t + timedelta(seconds=sent[i] - T0)).isoformat(),
            "updated_at": (t + timedelta(seconds=sent[i] - T0)).isoformat(),
        }
        for i in range(6)
    ]
    _snap(engine, sid, "payment", pays)
    _snap(
        engine,
        sid,
        "reservation",
        [{"id": f"r{i}", "show_id": 101, "seat_id": 301 + 2 * i, "status": "PAYMENT_PENDING"} for i in range(6)],
    )
    _snap(engine, sid, "seat", [{"id": 301 + 2 * i, "status": "HELD"} for i in range(6)])
    _snap(
        engine,
        sid,
        "payment_outbox",
        [{"aggregate_id": 1 + i, "event_type": "UsePointCommand", "status": "PENDING"} for i in range(6)],
    )
    _requests(
        engine,
        sid,
        [
            {
                "endpoint": "API-4",
                "name": "pay",
                "status": 200,
                "ts": sent[i],
                "tags": {"case": cases[i], "method": "POST"},
            }
            for i in range(6)
        ],
    )
    with engine.begin() as c:
        c.execute(
            insert(store.k6_samples),
            [
                {"scenario_run_id": sid, "ts": sent[i] + 120.0, "metric": m, "value": v, "tags": {"case": cases[i]}}
                for i in range(6)
                for m, v in (("sc_saga_unfinished", 1.0), ("sc_saga_completed", 0.0))
            ],
        )
    _seconds(engine, sid, ["API-4", "API-PAY-GET"], 124, rps=5)
    _server(engine, run_id, sid, 124, {**SERVER_OK, "outbox_pending": 6, "outbox_oldest_age_s": lambda i: i})
    _kpis(engine, run_id, "saga", {"compensation_success": 0.0, "error_rate": 0.0})
    return sid


def points(engine: Engine, run_id: str, *, final: float = 20_000, **stage: Any) -> int:
    """points.js: balance before and after (sc_point_balance{phase}), Σ accepted charges (sc_point_charged)."""
    sid = _stage(engine, run_id, "points", **stage)
    _requests(engine, sid, [{"endpoint": "API-6", "name": "charge", "status": 200} for _ in range(10)])
    samples = [("sc_point_balance", 10_000, {"phase": "before"}), ("sc_point_balance", final, {"phase": "after"})]
    samples += [("sc_point_charged", 1_000, {}) for _ in range(10)]
    with engine.begin() as c:
        c.execute(
            insert(store.k6_samples),
            [{"scenario_run_id": sid, "ts": float(T0 + 1), "metric": m, "value": v, "tags": t} for m, v, t in samples],
        )
    _seconds(engine, sid, ["API-6"], 1, rps=10)
    _kpis(engine, run_id, "points", {"error_rate": 0.0})
    return sid


def spike(
    engine: Engine,
    run_id: str,
    *,
    kpis: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    gap: int | None = None,
    double_sold: bool = False,
    seconds: int = 30,
    vus: bool = False,
    load_kpis: bool = True,
    rps: int = 50,
    tokens: tuple[int, int, int] = (50, 150, 0),
    freed: int = 0,
    expired: int = 0,
    snapshot: bool = True,
    journeys: bool = True,
    samples: list[tuple[float, str, float, dict[str, str]]] = (),
    **stage: Any,
) -> int:
    """`load_kpis=False`: the load stage stored no client KPIs (a stage stopped early); `snapshot=False`: no
    target database to snapshot (no queue counts, no reservations). `tokens`: API-1
    answers (ENTERED, WAITING, other) as spike.js records them; `freed`: payments terminal while tokens were
    still issued; `expired`: EXPIRED tokens in the snapshot's counts; `journeys=False`: no sc_journey samples;
    `samples`: more k6 samples as (seconds after T0, metric, value, tags)."""
    sid = _stage(engine, run_id, "spike", seconds=seconds, **stage)
    n_e, n_w, n_o = tokens
    answers = ["ENTERED"] * n_e + ["WAITING"] * n_w + ["DONE"] * n_o
    more = [{"scenario_run_id": sid, "ts": T0 + t, "metric": m, "value": v, "tags": tags} for t, m, v, tags in samples]
    samples = more + [
        {"scenario_run_id": sid, "ts": T0 + 0.01 * i, "metric": "sc_token_status", "value": 1.0, "tags": {"status": st}}
        for i, st in enumerate(answers)
    ]
    samples += [
        {
            "scenario_run_id": sid,
            "ts": T0 + 0.5,
            "metric": "sc_saga_time_s",
            "value": 0.4,
            "tags": {"status": "COMPLETED", "reason": ""},
        }
        for _ in range(freed)
    ]
    if journeys:  # spike.js's journeys: ENTERED at issue; WAITING users give up at the poll limit (20 s)
        samples += [
            {
                "scenario_run_id": sid,
                "ts": T0 + 0.01 * i + (20.0 if st == "WAITING" else 0.0),
                "metric": "sc_journey",
                "value": 20.0 if st == "WAITING" else 0.0,
                "tags": {
                    "outcome": "gave_up" if st == "WAITING" else "entered",
                    "how": "limit" if st == "WAITING" else "seat_taken",
                    "at_issue": st,
                },
            }
            for i, st in enumerate(answers)
            if st in ("ENTERED", "WAITING")
        ]
        samples += [
            {
                "scenario_run_id": sid,
                "ts": T0 + 0.01 * i + 20.0,
                "metric": "sc_poll_gave_up",
                "value": 1.0,
                "tags": {"why": "limit"},
            }
            for i, st in enumerate(answers)
            if st == "WAITING"
        ]
    if samples:
        with engine.begin() as c:
            c.execute(insert(store.k6_samples), samples)
    if snapshot:
        _snap(
            engine,
            sid,
            "queue_token_counts",
            [{"status": "DONE", "count": n_e}, {"status": "WAITING", "count": n_w}]
            + ([{"status": "EXPIRED", "count": expired}] if expired else []),
        )
    _seconds(engine, sid, ["API-1", "API-2", "API-3", "API-4"], seconds, gap=gap, rps=rps)
    if vus:  # k6's own per-second VU samples
        with engine.begin() as c:
            c.execute(
                insert(store.k6_samples),
                [
                    {"scenario_run_id": sid, "ts": T0 + i + 0.5, "metric": "vus", "value": 100.0, "tags": {}}
                    for i in range(seconds)
                ],
            )
    _server(engine, run_id, sid, seconds, {**SERVER_OK, **(server or {})})
    if snapshot:
        _snap(
            engine,
            sid,
            "reservation",
            [
                {"id": 1, "show_id": 101, "seat_id": 1, "status": "CONFIRMED"},
                {"id": 2, "show_id": 101, "seat_id": 2, "status": "CONFIRMED"},
            ]
            + ([{"id": 3, "show_id": 101, "seat_id": 1, "status": "CONFIRMED"}] if double_sold else []),
        )
    base = {
        "p95_ms": 50.0,
        "p99_ms": 80.0,
        "p95_ms.API-1": 40.0,
        "p99_ms.API-2": 60.0,
        "throughput_rps": 1500.0,
        "error_rate": 0.0,
        "rate_5xx": 0.0,
        "saga_completion": 1.0,
        "saga_time_s": 6.0,
        "p95_ms@ramp_up": 60.0,
        "p95_ms@plateau": 55.0,
        "p95_ms@ramp_down": 40.0,
    }
    if load_kpis:
        _kpis(engine, run_id, "spike", {**base, **(kpis or {})})
    return sid


def soak(
    engine: Engine,
    run_id: str,
    *,
    kpis: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    p99_fn: Any = None,
    seconds: int = 120,
    **stage: Any,
) -> int:
    sid = _stage(engine, run_id, "soak", seconds=seconds, **stage)
    _seconds(engine, sid, ["API-2", "API-3", "API-5"], seconds, p99_fn=p99_fn)
    _server(engine, run_id, sid, seconds, {**SERVER_OK, **(server or {})})
    _kpis(
        engine,
        run_id,
        "soak",
        {"p95_ms": 50.0, "p99_ms": 80.0, "throughput_rps": 1200.0, "error_rate": 0.0, **(kpis or {})},
    )
    return sid


BUILDERS = {"race": race, "saga": saga, "points": points, "spike": spike, "soak": soak}


def build_run(
    engine: Engine,
    run_id: str,
    scenarios: tuple[str, ...] = ("race", "saga", "points", "spike", "soak"),
    *,
    profile: str = "test",
    scale: float = 1.0,
    started: datetime | None = None,
    planned: list[str] | None = None,
    build: str | None = None,
    **per_scenario: dict[str, Any],
) -> str:
    """A stored run of `scenarios`, healthy unless `per_scenario[name]` says otherwise."""
    store.start_run(
        engine,
        run_id,
        profile,
        scale=scale,
        time_scale=1.0,
        scenarios=planned or list(scenarios),
        target="http://127.0.0.1:1",
        build=build,
    )
    if started is not None:
        with engine.begin() as c:
            c.execute(update(store.runs).where(store.runs.c.run_id == run_id).values(started_at=started))
    for s in scenarios:
        BUILDERS[s](engine, run_id, **per_scenario.get(s, {}))
    store.finish_run(engine, run_id, "COMPLETED")
    return run_id
