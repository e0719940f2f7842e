"""A stored nightly history of real small runs, for the change-point detector (R-REG-1, R-REG-2).

Runs `--nights` campaigns of one scenario against the reference service, one after another into one
result store, each with its own build id (`nightly-01` …). From night `--from-night` on, a setting slows
the concert list (`concert_query_ms`), the change the detector must find; a second profile runs
`--stable` nights unchanged, on which it must stay quiet. Then prints what the history says (each
night's new shifts, and the run-to-run noise of every gated KPI) and exports the stored rows the
tests replay (`tests/data/nightly_history.json`).

    uv run python bench/nightly_series.py                        # 10 nights (slow from 6) + 6 stable
    uv run python bench/nightly_series.py --export tests/data/nightly_history.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def profile(workdir: Path, name: str, scenario: str, scale: float, time_scale: float, settings: dict[str, Any]) -> Path:
    data = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    data["name"] = name
    data["environment"]["local"]["settings"] = {**data["environment"]["local"]["settings"], **settings}
    data["environment"]["local"]["seed_users"] = 2500
    data["scenarios"], data["scale"], data["time_scale"] = [scenario], scale, time_scale
    data["store_url"] = f"sqlite:///{workdir / 'store.db'}"
    data["output_dir"] = str(workdir / "runs")
    p = workdir / f"{name}-{abs(hash(json.dumps(settings, sort_keys=True))) % 10_000}.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def export(store_url: str, path: Path) -> int:
    """The stored rows the history reads (runs, stages, KPIs), as JSON the tests load into a fresh store."""
    from sqlalchemy import select

    from soundcheck import store

    engine = store.open_store(store_url)
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as c:
        for name, table in (("runs", store.runs), ("scenario_runs", store.scenario_runs), ("kpis", store.kpis)):
            cols = [col for col in table.c if col.name not in ("details", "reason")]
            out[name] = [
                {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row._mapping.items()}
                for row in c.execute(select(*cols))
            ]
    engine.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=None, separators=(",", ":")) + "\n")
    return sum(len(v) for v in out.values())


def load_history(engine: Any, data: dict[str, list[dict[str, Any]]]) -> None:
    """Put an exported history into an empty store."""
    from datetime import datetime

    from sqlalchemy import insert

    from soundcheck import store

    def rows(name: str) -> list[dict[str, Any]]:
        dates = ("started_at", "finished_at")
        return [{k: (datetime.fromisoformat(v) if k in dates and v else v) for k, v in r.items()} for r in data[name]]

    with engine.begin() as c:
        for name in ("runs", "scenario_runs", "kpis"):
            c.execute(insert(getattr(store, name)), rows(name))


def replay(engine: Any) -> list[tuple[str, str, str, Any]]:
    """Judge each stored run's history night by night, oldest first, as the campaign does after each run:
    (profile, build, KPI, shift) for every shift reported new."""
    from sqlalchemy import select

    from soundcheck import store
    from soundcheck.models import KPI
    from soundcheck.profile import parse_profile
    from tasks.history import attach_shifts, save_shifts
    from tasks.rundata import load_run

    with engine.connect() as c:
        runs = c.execute(select(store.runs).order_by(store.runs.c.started_at)).fetchall()
    out = []
    for r in runs:
        run = load_run(engine, r.run_id)
        with engine.connect() as c:
            rows = c.execute(select(store.kpis).where(store.kpis.c.run_id == r.run_id)).fetchall()
        kpis = [
            KPI(name=k.name, scenario=k.scenario, value=k.value, unit=k.unit or "", phase=k.phase)
            for k in rows
            if k.value is not None
        ]
        attach_shifts(
            engine,
            r.run_id,
            kpis,
            parse_profile({"name": r.profile}),
            scale=run.scale,
            completed={s for s, st in run.stages.items() if st.status == "COMPLETED"},
        )
        save_shifts(engine, r.run_id, r.profile, run.scale, kpis)
        out += [(r.profile, r.build, k.name, k.shift) for k in kpis if k.shift is not None and k.shift.new]
    return out


def report(store_url: str, profiles: list[str]) -> None:
    """Each night's verdict and new shifts, and the noise of each gated KPI over the unchanged nights."""
    from soundcheck import store
    from soundcheck.changepoints import noise
    from tasks.history import gated_series

    engine = store.open_store(store_url)
    for prof in profiles:
        series = gated_series(engine, prof)
        print(f"\n{prof}: {len(series)} gated KPI series")
        noises = []
        for (scenario, kpi, phase), points in sorted(series.items()):
            values = [p.value for p in points]
            n = noise(values[:5])
            if n is not None:
                noises.append(n)
            print(
                f"  {scenario} {kpi}{'/' + phase if phase else ''}: "
                + " ".join(f"{v:.4g}" for v in values)
                + (f"  (noise {n:.1%} over the first 5)" if n else "")
            )
        if noises:
            print(f"  median noise of the gated KPIs over the first 5 nights: {statistics.median(noises):.1%}")
    engine.dispose()
    fresh = store.open_store("sqlite://")
    src = store.open_store(store_url)
    from sqlalchemy import select

    with src.connect() as c:
        data = {
            name: [
                dict(r._mapping)
                for r in c.execute(
                    select(*[col for col in getattr(store, name).c if col.name not in ("details", "reason")])
                )
            ]
            for name in ("runs", "scenario_runs", "kpis")
        }
    src.dispose()
    for rows in data.values():
        for r in rows:
            for k in ("started_at", "finished_at"):
                if r.get(k) is not None:
                    r[k] = r[k].isoformat()
    load_history(fresh, data)
    print("\nreplayed night by night (new shifts only):")
    for prof, build, name, shift in replay(fresh):
        print(
            f"  {prof} {build}: {name} {shift.rel_change:+.0%} since {shift.first_run}, {shift.runs} runs at the "
            f"new level, p = {shift.p_value:.1g}{' (worse)' if shift.worse else ''}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nights", type=int, default=10)
    ap.add_argument("--from-night", type=int, default=6, help="first night with the slow concert list (1-based)")
    ap.add_argument("--stable", type=int, default=6, help="nights of the unchanged profile")
    ap.add_argument("--concert-query-ms", type=float, default=60.0)
    ap.add_argument("--scenario", default="soak")
    ap.add_argument("--scale", type=float, default=0.02)
    ap.add_argument("--time-scale", type=float, default=0.02)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/soundcheck-nightly"))
    ap.add_argument("--export", type=Path)
    ap.add_argument("--report-only", action="store_true", help="only print the history of an existing workdir")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{a.workdir / 'store.db'}"
    if not a.report_only:
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        from prefect.testing.utilities import prefect_test_harness

        from soundcheck.cli import run_campaign

        plan = [
            ("nightly-step", n, {"concert_query_ms": a.concert_query_ms} if n >= a.from_night else {})
            for n in range(1, a.nights + 1)
        ] + [("nightly-stable", n, {}) for n in range(1, a.stable + 1)]
        with prefect_test_harness(server_startup_timeout=120):
            for name, night, settings in plan:
                t0 = time.monotonic()
                p = profile(a.workdir, name, a.scenario, a.scale, a.time_scale, settings)
                code = run_campaign(
                    profile=p,
                    output=a.workdir / "runs" / f"{name}-{night:02d}",
                    notify=False,
                    build=f"{name}-{night:02d}",
                )
                print(
                    f"{name} night {night}: exit {code} {settings or 'defaults'} {time.monotonic() - t0:.0f} s",
                    flush=True,
                )
    report(store_url, ["nightly-step", "nightly-stable"])
    if a.export:
        print(f"\nexported {export(store_url, a.export)} rows to {a.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
