"""The `soundcheck` command: run a campaign, start the reference service, list and re-judge runs.

Exit codes follow the verdict (0 APPROVE, 10 APPROVE_WITH_TUNING, 20 BLOCK, 30 INCONCLUSIVE, 2 bad
usage or configuration). Every line printed goes through redaction; a result store that cannot be
opened is one sentence and exit 2.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from soundcheck.models import EXIT_CODES, EXIT_USAGE, Decision
from soundcheck.paths import DEFAULT_PROFILE
from soundcheck.profile import ProfileError, load_profile

app = typer.Typer(
    help="soundcheck: the pre-release load campaign for the concert-ticket reservation service.",
    no_args_is_help=True,
    add_completion=False,
)


def _out(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def say(text: str, *, stderr: bool = False) -> None:
    """Print one redacted line (markup allowed)."""
    from soundcheck.redact import redact

    _out(stderr).print(redact(text))


def error(text: str) -> None:
    say(f"[red]error:[/red] {text}", stderr=True)


@contextmanager
def _store(profile_store_url: str) -> Iterator[Any]:
    """The result store, or StoreError with one sentence (down, locked, refused, bad URL)."""
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from soundcheck import store

    try:
        engine = store.open_store(profile_store_url)
    except (DBAPIError, ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreError(store.store_sentence(profile_store_url, exc)) from exc
    try:
        yield engine
    except DBAPIError as exc:
        raise StoreError(store.store_sentence(profile_store_url, exc)) from exc
    finally:
        engine.dispose()


class StoreError(RuntimeError):
    """The result store could not be used; the message is one sentence."""


# ---------------------------------------------------------------------------------------- run


def _sigterm_as_interrupt() -> Any:
    """`kill PID` ends a CLI campaign the way Ctrl-C does.

    During the flow, Prefect turns SIGTERM into its own TerminationSignal (the flow's cleanup runs:
    k6 stopped, stack torn down, run kept INCOMPLETE) and then re-sends SIGTERM to the handler it found.
    With Python's default there, the process would die on the spot and orphan Prefect's temporary
    server; with this one it unwinds to `run_campaign`, which exits 30 and lets atexit stop the server.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, _raise)


def run_campaign(profile: Path | str | None = None, scenarios: list[str] | None = None, scale: float | None = None,
                 time_scale: float | None = None, target: str | None = None, output: Path | str | None = None,
                 notify: bool = True) -> int:
    """`soundcheck run`: validate, run the flow in-process, print the verdict; the exit status follows it."""
    from flows import campaign as flows_campaign
    from soundcheck.profile import resolve_profile, resolve_profile_path
    from tasks.runs import CampaignIncomplete, reason
    from tasks.safety import preflight

    try:
        preflight(resolve_profile(profile, scenarios=scenarios, scale=scale, time_scale=time_scale, target=target))
    except ProfileError as e:
        error(str(e))
        return EXIT_USAGE
    from soundcheck.prefect_server import guard_temporary_server

    guard_temporary_server()
    previous = _sigterm_as_interrupt()
    try:
        state = flows_campaign.campaign(profile=str(resolve_profile_path(profile)), scenarios=scenarios, scale=scale,
                                        time_scale=time_scale, target=target, notify=notify,
                                        output=str(output) if output else None, return_state=True)
    except KeyboardInterrupt:
        say("interrupted: the run is kept, marked INCOMPLETE (see `soundcheck history`).", stderr=True)
        return EXIT_CODES[Decision.INCONCLUSIVE]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    result = state.result(raise_on_failure=False)
    if isinstance(result, ProfileError):
        error(str(result))
        return EXIT_USAGE
    if isinstance(result, CampaignIncomplete):
        body, written = result.verdict.to_json_dict(), result.verdict_path
        status = result.verdict.extra.get("status", "INCOMPLETE")
        say(f"[red]{'aborted' if status == 'ABORTED' else 'error'}:[/red] {result}", stderr=True)
    elif isinstance(result, dict):
        body, written = result, result["verdict_path"]
    else:
        error(f"the campaign crashed: {reason(result) if isinstance(result, BaseException) else result}")
        return EXIT_CODES[Decision.INCONCLUSIVE]
    decision = Decision(body["verdict"])
    _print_verdict(body, written)
    return EXIT_CODES[decision]


def _print_verdict(body: dict[str, Any], written: str | None) -> None:
    decision = body["verdict"]
    colour = {"APPROVE": "green", "APPROVE_WITH_TUNING": "yellow", "BLOCK": "red"}.get(decision, "white")
    say(f"\n[bold {colour}]verdict: {decision}[/] (run {body['run_id']})")
    failed = [c for c in body.get("checks", []) if not c["passed"]]
    for c in failed[:10]:
        say(f"  failed {c['id']} ({c['scenario']}): observed {c['observed']}; expected {c['expected']}")
    if len(failed) > 10:
        say(f"  … and {len(failed) - 10} more failed checks in the report")
    for r in body.get("remediations", []):
        say(f"  remediation {r['code']}: {r['reason']}")
    report = body.get("report")
    if report and written and not Path(report).is_absolute():
        report = str(Path(written).parent / report)
    say(f"report: {report or 'none'}")
    say(f"verdict.json: {written or 'not written (see the error above)'}")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------- re-judge


def rejudge(profile_path: str | Path, run_id: str, output: str | Path | None = None) -> int:
    """`soundcheck report RUN_ID`: judge a stored run again with the current suites, bands and tree
    (no new load), rewrite its report and verdict.json, store the new verdict row; exit per verdict."""
    from tasks.publish import publish_verdict
    from tasks.verdict_stage import judge_run

    try:
        profile = load_profile(profile_path)
        out = Path(output) if output else Path(profile.output_dir) / run_id
        with _store(profile.store_url) as engine:
            try:
                verdict = judge_run(engine, run_id, profile, out)
            except KeyError as e:
                error(f"{e.args[0]} (see `soundcheck history`)")
                return EXIT_USAGE
        publish_verdict(verdict, out, profile.store_url)
    except (ProfileError, StoreError) as e:
        error(str(e))
        return EXIT_USAGE
    say(f"{verdict.verdict.value} · run {run_id} · report {out / 'report.html'}")
    for r in verdict.remediations:
        say(f"  {r.code}: {r.detail} — {r.reason}")
    return EXIT_CODES[verdict.verdict]


# ----------------------------------------------------------------------------------- history


def print_history(profile_path: str | Path, limit: int = 20, all_profiles: bool = False) -> int:
    """`soundcheck history`: past runs in the profile's result store, newest first (its URL without password)."""
    from rich.table import Table

    from soundcheck.store import store_location
    from tasks.history import list_runs

    try:
        profile = load_profile(profile_path)
        with _store(profile.store_url) as engine:
            rows = list_runs(engine, limit, None if all_profiles else profile.name)
    except (ProfileError, StoreError) as e:
        error(str(e))
        return EXIT_USAGE
    table = Table(title=f"soundcheck runs in {store_location(profile.store_url)}")
    for col in ("run", "started", "profile", "scenarios", "scale", "time scale", "status", "verdict"):
        table.add_column(col, no_wrap=col in ("run", "status", "verdict"))
    for r in rows:
        started = r["started_at"].strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else ""
        table.add_row(r["run_id"], started, r["profile"], ",".join(r["scenarios"] or []), f"{r['scale']:g}",
                      f"{r['time_scale']:g}", r["status"], r["verdict"] or "")
    _out().print(table)
    return 0


# ---------------------------------------------------------------------------------- commands


def _exit(fn: Callable[..., int], *args: Any, **kwargs: Any) -> None:
    raise typer.Exit(fn(*args, **kwargs))


@app.command()
def run(
    profile: Annotated[Path, typer.Option(help="Campaign profile (YAML).")] = DEFAULT_PROFILE,
    scenario: Annotated[list[str] | None, typer.Option(
        help="Scenario to run (repeatable): spike, race, saga, soak, points. Default: the profile's list.")] = None,
    scale: Annotated[float | None, typer.Option(
        help="Multiplies users and rates; 1.0 is the plan. Default: the profile's.")] = None,
    time_scale: Annotated[float | None, typer.Option(
        help="Multiplies durations; 1.0 is the plan. Default: the profile's.")] = None,
    target: Annotated[str | None, typer.Option(
        help="Base URL of the system under test (must be on the profile's allowlist).")] = None,
    output: Annotated[Path | None, typer.Option(help="Folder for verdict.json, the report and k6 output.")] = None,
    no_notify: Annotated[bool, typer.Option("--no-notify", help="Do not post the verdict to Slack.")] = False,
) -> None:
    """Run a campaign: provision, load every scenario, evaluate, decide, report, notify."""
    _exit(run_campaign, profile=profile, scenarios=scenario or None, scale=scale, time_scale=time_scale,
          target=target, output=output, notify=not no_notify)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def sut(ctx: typer.Context) -> None:
    """Start the reference reservation service (every option: `soundcheck sut --help`)."""
    from infra.sut.server import main

    main(list(ctx.args))


@app.command()
def history(
    profile: Annotated[Path, typer.Option(help="Profile (YAML) whose result store to list.")] = DEFAULT_PROFILE,
    limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 20,
    all_profiles: Annotated[bool, typer.Option("--all", help="Runs of every profile in that store.")] = False,
) -> None:
    """List past runs: when, which scenarios at which scale, status and verdict."""
    _exit(print_history, profile, limit, all_profiles)


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="Run to re-judge (see `soundcheck history`).")],
    profile: Annotated[Path, typer.Option(help="Profile whose bands and result store to use.")] = DEFAULT_PROFILE,
    output: Annotated[Path | None, typer.Option(help="Folder for the new report and verdict.json. "
                                                     "Default: the profile's output folder / RUN_ID.")] = None,
) -> None:
    """Re-judge a stored run with the current expectations, bands and tree (no new load); rewrite its report."""
    _exit(rejudge, profile, run_id, output)
