"""The verdict stage in one call, as the campaign flow and `soundcheck report` use it.

evaluate (GX suites) → derive server KPIs → bands + history → decision tree → store checks and KPIs →
report.html, headline.png and verdict.json in the run folder.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from soundcheck.bands import bands_for
from soundcheck.models import Verdict
from soundcheck.profile import Profile
from tasks.decide import judge
from tasks.expectations import Validator
from tasks.report import write_outputs


def judge_run(engine: Engine, run_id: str, profile: Profile, run_dir: str | Path, *,
              store_verdict_row: bool = False, validator: Validator | None = None) -> Verdict:
    """Judge a stored run and write its outputs into `run_dir`. The campaign flow stores the verdict
    row itself when it publishes verdict.json, so by default only checks and KPIs are stored here;
    `soundcheck report` passes `store_verdict_row=True`."""
    verdict, run = judge(engine, run_id, profile, validator=validator, store_verdict_row=store_verdict_row)
    write_outputs(verdict, engine, run_dir, profile_bands=bands_for(profile), run=run)
    return verdict


def rejudge(profile_path: str | Path, run_id: str, output: str | Path | None = None) -> int:
    """`soundcheck report RUN_ID`: judge a stored run again with the current suites, bands and tree
    (no new load), rewrite its report, and return the verdict's exit status (2: bad profile or run)."""
    from rich.console import Console

    from soundcheck import store
    from soundcheck.models import EXIT_CODES, EXIT_USAGE
    from soundcheck.profile import ProfileError, load_profile

    console = Console(stderr=True)
    try:
        profile = load_profile(profile_path)
    except ProfileError as e:
        console.print(f"[red]{e}[/red]")
        return EXIT_USAGE
    engine = store.open_store(profile.store_url)
    try:
        out = Path(output) if output else Path(profile.output_dir) / run_id
        try:
            verdict = judge_run(engine, run_id, profile, out, store_verdict_row=True)
        except KeyError as e:
            console.print(f"[red]{e.args[0]}[/red] (see `soundcheck history`)")
            return EXIT_USAGE
    finally:
        engine.dispose()
    Console().print(f"{verdict.verdict.value} · run {run_id} · report {out / 'report.html'}")
    for r in verdict.remediations:
        Console().print(f"  {r.code}: {r.detail} — {r.reason}")
    return EXIT_CODES[verdict.verdict]


def print_history(profile_path: str | Path, limit: int = 20, all_profiles: bool = False) -> int:
    """`soundcheck history`: past runs in the profile's result store, newest first."""
    from rich.console import Console
    from rich.table import Table

    from soundcheck import store
    from soundcheck.models import EXIT_USAGE
    from soundcheck.profile import ProfileError, load_profile
    from tasks.history import list_runs

    try:
        profile = load_profile(profile_path)
    except ProfileError as e:
        Console(stderr=True).print(f"[red]{e}[/red]")
        return EXIT_USAGE
    engine = store.open_store(profile.store_url)
    try:
        rows = list_runs(engine, limit, None if all_profiles else profile.name)
    finally:
        engine.dispose()
    table = Table(title=f"soundcheck runs in {profile.store_url}")
    for col in ("run", "started", "profile", "scenarios", "scale", "time scale", "status", "verdict"):
        table.add_column(col, no_wrap=col in ("run", "status", "verdict"))
    for r in rows:
        started = r["started_at"].strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else ""
        table.add_row(r["run_id"], started, r["profile"], ",".join(r["scenarios"] or []), f"{r['scale']:g}",
                      f"{r['time_scale']:g}", r["status"], r["verdict"] or "")
    Console().print(table)
    return 0
