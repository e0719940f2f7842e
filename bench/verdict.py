"""Time the whole verdict stage on soak-sized result tables.

The plan's soak at the spike's polling rate: 30 minutes at 3,333 req/s (6 M requests), stored as the load
stage stores it — per-second aggregates for 1,800 s × 3 endpoints (70/20/10 mix), server samples every
2 s for every server KPI, k6 VUs every second, the load stage's KPI rows. Then: load the run, derive the
server KPIs and trends, run the soak suite through Great Expectations, band, history, decision tree,
store the rows, render report.html (12 charts) and headline.png, write verdict.json.

    uv run python bench/verdict.py            # prints one line per phase and the total

Target: the verdict stage under 10 s, Great Expectations included (its import and context are timed
separately: a campaign pays them once per process).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402

from soundcheck import store  # noqa: E402

T0 = 1_790_000_000
MIX = {"API-2": 0.7, "API-5": 0.2, "API-3": 0.1}
SERVER = {
    "db_pool_size": lambda i: 5,
    "db_pool_in_use": lambda i: 1 + i % 3,
    "db_pool_waiting": lambda i: 0,
    "db_pool_timeouts_total": lambda i: 0,
    "rss_bytes": lambda i: 300e6 + (i % 50) * 1e5,
    "heap_used_bytes": lambda i: 2e9 + (i % 40) * 1e6,
    "heap_max_bytes": lambda i: 6e9,
    "gc_pause_max_s": lambda i: 0.02,
    "redis_memory_bytes": lambda i: 125e6,
    "consumer_lag_messages": lambda i: 20,
    "consumer_lag_seconds": lambda i: 0.1,
    "outbox_pending": lambda i: 3,
    "outbox_oldest_age_s": lambda i: 2,
    "lock_timeouts_total": lambda i: 0,
    "db_cpu_percent": lambda i: 40,
    "cpu_percent": lambda i: 55,
}


def build(engine, run_id: str, seconds: int, rps: float) -> None:
    store.start_run(engine, run_id, "bench", scale=1.0, time_scale=1.0, scenarios=["soak"], target="http://127.0.0.1:1")
    sid = store.start_scenario(engine, run_id, "soak")
    rows = []
    for i in range(seconds):
        for ep, share in MIX.items():
            n = int(rps * share)
            p95 = 40 + (i * 7919 % 13)
            rows.append(
                {
                    "scenario_run_id": sid,
                    "second": T0 + i,
                    "endpoint": ep,
                    "count": n,
                    "s2xx": n,
                    "s3xx": 0,
                    "s4xx": 0,
                    "s5xx": 0,
                    "failed": 0,
                    "codes": {"200": n},
                    "p50_ms": p95 / 3,
                    "p95_ms": p95,
                    "p99_ms": p95 * 1.5,
                    "max_ms": p95 * 3,
                    "sketch": bytes(600),
                }
            )
    server = [
        {
            "run_id": run_id,
            "scenario_run_id": sid,
            "ts": float(T0 + i),
            "kpi": k,
            "value": float(f(i)),
            "labels": {"instance": "sut"},
            "source": "scrape",
        }
        for i in range(0, seconds, 2)
        for k, f in SERVER.items()
    ]
    vus = [
        {"scenario_run_id": sid, "ts": float(T0 + i), "metric": "vus", "value": 1000.0, "tags": {}}
        for i in range(seconds)
    ]
    kpis = [
        {"run_id": run_id, "scenario": "soak", "name": n, "phase": None, "value": v, "unit": u}
        for n, v, u in [
            ("p95_ms", 48.0, "ms"),
            ("p99_ms", 70.0, "ms"),
            ("p95_ms.API-2", 45.0, "ms"),
            ("p95_ms.API-5", 50.0, "ms"),
            ("p95_ms.API-3", 60.0, "ms"),
            ("throughput_rps", rps, "req/s"),
            ("error_rate", 0.0, "ratio"),
            ("rate_5xx", 0.0, "ratio"),
            ("lock_timeout_rate", 0.0, "ratio"),
            ("dropped_iterations", 0.0, "count"),
        ]
    ]
    with engine.begin() as c:
        c.execute(insert(store.second_aggregates), rows)
        c.execute(insert(store.server_samples), server)
        c.execute(insert(store.k6_samples), vus)
        c.execute(insert(store.kpis), kpis)
    store.finish_scenario(engine, sid, "COMPLETED", k6_cpu_share=0.4, dropped_iterations=0)
    store.finish_run(engine, run_id, "COMPLETED")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=1800)
    ap.add_argument("--rps", type=float, default=3333)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = store.open_store(f"sqlite:///{tmp}/bench.db")
        t = time.perf_counter()
        build(engine, "bench-soak", args.seconds, args.rps)
        n_server = len(range(0, args.seconds, 2)) * len(SERVER)
        print(
            f"built tables: {args.seconds * len(MIX)} per-second rows, {n_server} server samples"
            f"  ({args.seconds * args.rps / 1e6:.1f} M requests) in {time.perf_counter() - t:.1f} s"
        )

        t_all = time.perf_counter()
        import great_expectations  # noqa: F401  (timed with the imports; a campaign pays it once)

        from soundcheck.profile import parse_profile
        from tasks.decide import judge
        from tasks.expectations import Validator
        from tasks.report import write_outputs

        t = time.perf_counter()
        validator = Validator()
        t_gx = time.perf_counter() - t
        t_imp = t - t_all

        t = time.perf_counter()
        verdict, run = judge(engine, "bench-soak", parse_profile({"name": "bench"}), validator=validator)
        t_judge = time.perf_counter() - t
        t = time.perf_counter()
        write_outputs(verdict, engine, Path(tmp) / "out", run=run)
        t_out = time.perf_counter() - t
        total = time.perf_counter() - t_all
        engine.dispose()
    print(f"imports (GX, pandas, prefect, matplotlib): {t_imp:6.2f} s")
    print(f"GX ephemeral context:                      {t_gx:6.2f} s")
    print(f"judge (load, derive, GX suite, tree, store): {t_judge:4.2f} s")
    print(f"outputs (report.html, headline.png, json):   {t_out:4.2f} s")
    print(f"verdict stage without imports:             {t_gx + t_judge + t_out:6.2f} s")
    print(
        f"verdict stage total, GX import included:   {total:6.2f} s  (target < 10 s) → {verdict.verdict.value}, "
        f"{len(verdict.checks)} checks, {len(verdict.kpis)} KPIs"
    )


if __name__ == "__main__":
    main()
