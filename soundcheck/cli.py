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


def _out(stderr: bool = False, table: bool = False) -> Console:
    """The console; a table piped to a file or another program is laid out 160 wide, not squeezed into 80."""
    stream = sys.stderr if stderr else sys.stdout
    width = 160 if table and not stream.isatty() else None
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


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


def run_campaign(
    profile: Path | str | None = None,
    scenarios: list[str] | None = None,
    scale: float | None = None,
    time_scale: float | None = None,
    target: str | None = None,
    output: Path | str | None = None,
    notify: bool = True,
    build: str | None = None,
    sizing: bool = False,
    generators: int | None = None,
) -> int:
    """`soundcheck run`: validate, run the flow in-process, print the verdict; the exit status follows it."""
    from flows import campaign as flows_campaign
    from soundcheck.profile import resolve_profile, resolve_profile_path
    from tasks.runs import CampaignIncomplete, reason
    from tasks.safety import preflight

    try:
        preflight(
            resolve_profile(
                profile,
                scenarios=scenarios,
                scale=scale,
                time_scale=time_scale,
                target=target,
                build=build,
                generators=generators,
            )
        )
    except ProfileError as e:
        error(str(e))
        return EXIT_USAGE
    from soundcheck.prefect_server import guard_temporary_server

    guard_temporary_server()
    previous = _sigterm_as_interrupt()
    try:
        state = flows_campaign.campaign(
            profile=str(resolve_profile_path(profile)),
            scenarios=scenarios,
            scale=scale,
            time_scale=time_scale,
            target=target or "",
            notify=notify,
            output=str(output) if output else "",
            build=build or "",
            sizing=sizing,
            generators=generators or 0,
            return_state=True,
        )
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


# ------------------------------------------------------------------------------ k6-operator


def write_k6_operator(
    scenario: str,
    profile_path: str | Path,
    parallelism: int | None,
    base_url: str | None,
    output: str | Path | None,
    name: str | None,
    namespace: str | None,
    image: str | None,
    out: list[str] | None,
) -> int:
    """`soundcheck k6-operator SCENARIO`: the stage as a k6-operator ConfigMap + TestRun (infra.k6_operator)."""
    from flows.stages import stage_env
    from infra.k6_operator import OperatorRequest, manifest, refusal, to_yaml, validate
    from soundcheck.paths import venv_bin
    from tasks.load import K6_MISSING, scenario_env

    try:
        profile = load_profile(profile_path)
        url = base_url or profile.target.base_url
        if not url:
            raise ProfileError("no target address: give --base-url (reachable from the cluster) or target.base_url")
        n = parallelism or max(1, profile.k6.generators)
        why = refusal(scenario, n, profile.target.admission.mode)
        if why:
            raise ProfileError(why)
        env = scenario_env(
            scenario, url, scale=profile.scale, time_scale=profile.time_scale, extra=stage_env(scenario, profile)
        )
        k6 = venv_bin("k6")
        if k6 is None:
            error(K6_MISSING)
            return EXIT_USAGE
        req = OperatorRequest(
            scenario,
            env,
            parallelism=n,
            name=name,
            namespace=namespace,
            image=image,
            out=tuple(out or ()),
            allowlist=tuple(profile.target.allowlist),
        )
        docs = manifest(req, k6)
    except (ProfileError, ValueError, RuntimeError) as e:
        error(str(e))
        return EXIT_USAGE
    problems = validate(docs[1])
    if problems:  # a defect of ours, never the user's input
        error(f"the TestRun does not match the k6-operator CRD: {problems[0]}")
        return 1
    text = to_yaml(docs)
    if output is None or str(output) == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)
        say(f"wrote {output}: {scenario} as {n} k6-operator runner(s) → kubectl apply -f {output}")
    return 0


# ------------------------------------------------------------------------------------ verify


def verify_run(
    run_id: str,
    profile: Path | str | None = None,
    remediations: list[str] | None = None,
    repeats: int = 3,
    budget_s: float = 1200.0,
    total_budget_s: float = 3600.0,
    change: list[str] | None = None,
    notify: bool = True,
    output: Path | str | None = None,
) -> int:
    """`soundcheck verify RUN_ID`: re-test the run's remediations; exit 0 when every one tried is proven,
    1 when one is not, 2 on bad input."""
    import yaml

    from flows.verify import verify
    from soundcheck.profile import resolve_profile, resolve_profile_path
    from tasks.verify import fmt_verification

    changes: dict[str, Any] = {}
    for item in change or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            error(f"--change {item!r}: expected SETTING=VALUE, e.g. db_pool_size=10")
            return EXIT_USAGE
        changes[key.strip()] = yaml.safe_load(value)
    try:
        prof = resolve_profile(profile)
        with _store(prof.store_url) as engine:
            from tasks.verify import stored_run, stored_verdict

            stored_run(engine, run_id), stored_verdict(engine, run_id)
    except (ProfileError, StoreError) as e:
        error(str(e))
        return EXIT_USAGE
    except ValueError as e:
        error(str(e))
        return EXIT_USAGE
    from soundcheck.prefect_server import guard_temporary_server

    guard_temporary_server()
    state = verify(
        run_id=run_id,
        profile=str(resolve_profile_path(profile)),
        remediations=remediations,
        repeats=repeats,
        budget_s=budget_s,
        total_budget_s=total_budget_s,
        change=changes or None,
        notify=notify,
        output=str(output) if output else "",
        return_state=True,
    )
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        error(f"the verification failed: {result}")
        return 1
    from soundcheck.models import Verification

    results = [Verification.model_validate(v) for v in result["verification"]]
    for v in results:
        colour = {"proven": "green", "not proven": "red"}.get(v.status, "white")
        say(f"[{colour}]{fmt_verification(v)}[/]")
    return 1 if any(v.status == "not proven" for v in results) else 0


# ----------------------------------------------------------------------------------- history


def print_history(
    profile_path: str | Path,
    limit: int = 20,
    all_profiles: bool = False,
    kpi: str | None = None,
    scenario: str | None = None,
    trends: bool = False,
) -> int:
    """`soundcheck history`: past runs in the profile's result store, newest first (its URL without password);
    with --kpi, --scenario or --trends, each gated KPI's series over those runs instead."""
    from rich.table import Table

    from soundcheck.store import store_location
    from tasks.history import list_runs

    try:
        profile = load_profile(profile_path)
        with _store(profile.store_url) as engine:
            if kpi or scenario or trends:
                return _print_trends(engine, profile, kpi, scenario, limit)
            rows = list_runs(engine, limit, None if all_profiles else profile.name)
    except (ProfileError, StoreError) as e:
        error(str(e))
        return EXIT_USAGE
    table = Table(title=f"soundcheck runs in {store_location(profile.store_url)}")
    for col in ("run", "started", "profile", "build", "scenarios", "scale", "time scale", "status", "verdict"):
        table.add_column(col, no_wrap=col in ("run", "status", "verdict"))
    for r in rows:
        started = r["started_at"].strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else ""
        table.add_row(
            r["run_id"],
            started,
            r["profile"],
            r["build"] or "",
            ",".join(r["scenarios"] or []),
            f"{r['scale']:g}",
            f"{r['time_scale']:g}",
            r["status"],
            r["verdict"] or "",
        )
    _out(table=True).print(table)
    return 0


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """`▁▂▂▁▇█`: each value's place between the series' lowest and highest."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return SPARKS[3] * len(values)
    return "".join(SPARKS[min(int((v - lo) / (hi - lo) * len(SPARKS)), len(SPARKS) - 1)] for v in values)


def _print_trends(engine: Any, profile: Any, kpi: str | None, scenario: str | None, limit: int) -> int:
    from rich.table import Table

    from soundcheck.bands import bands_for
    from soundcheck.changepoints import noise, shifts
    from soundcheck.plan import fmt_value, unit_of
    from tasks.history import fmt_change, gated_series

    h = profile.history
    series = gated_series(engine, profile.name, scenario=scenario, kpi=kpi, limit=limit, bands=bands_for(profile))
    if not series:
        say(
            f"no completed runs of profile {profile.name}"
            + (f" with KPI {kpi}" if kpi else "")
            + (f" in {scenario}" if scenario else "")
        )
        return 0
    table = Table(title=f"{profile.name}: gated KPIs over the last {limit} completed runs (oldest → newest)")
    for col in ("scenario", "KPI", "phase", "runs", "trend", "first", "last", "noise", "lasting changes"):
        table.add_column(col, no_wrap=col in ("KPI", "trend"))
    for (scen, name, phase), points in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
        values = [p.value for p in points]
        unit = unit_of(name)
        cps = shifts(values, h)
        n = noise(values)
        changes = "; ".join(
            f"{fmt_change(c.rel_change)} from {points[c.index].build or points[c.index].run_id} (p {c.p_value:.0e})"
            for c in cps
        )
        table.add_row(
            scen,
            name,
            phase or "",
            str(len(values)),
            sparkline(values),
            fmt_value(values[0], unit),
            fmt_value(values[-1], unit),
            "" if n is None else f"{n:.1%}",
            changes or "none",
        )
    _out(table=True).print(table)
    return 0


# ---------------------------------------------------------------------------------- commands


def _exit(fn: Callable[..., int], *args: Any, **kwargs: Any) -> None:
    raise typer.Exit(fn(*args, **kwargs))


@app.command()
def run(
    profile: Annotated[Path, typer.Option(help="Campaign profile (YAML).")] = DEFAULT_PROFILE,
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            help="Scenario to run (repeatable): spike, race, saga, soak, points. Default: the profile's list."
        ),
    ] = None,
    scale: Annotated[
        float | None, typer.Option(help="Multiplies users and rates; 1.0 is the plan. Default: the profile's.")
    ] = None,
    time_scale: Annotated[
        float | None, typer.Option(help="Multiplies durations; 1.0 is the plan. Default: the profile's.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Base URL of the system under test (must be on the profile's allowlist).")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Folder for verdict.json, the report and k6 output.")] = None,
    no_notify: Annotated[bool, typer.Option("--no-notify", help="Do not post the verdict to Slack.")] = False,
    build: Annotated[
        str | None,
        typer.Option(
            help="Commit or build id being judged, stored with the run (nightly history). Default: $SOUNDCHECK_BUILD, "
            "else the checkout's commit for the local stack. On AWS with environment.aws.app the build is deployed "
            "first; 'latest' is the newest tag in the registry."
        ),
    ] = None,
    sizing: Annotated[
        bool,
        typer.Option(
            "--sizing",
            help="Also run the capacity stage: how much one instance sustains, how many the plan's peak needs, "
            "when to scale out (profile `sizing`; adds up to sizing.budget_s of load).",
        ),
    ] = False,
    generators: Annotated[
        int | None,
        typer.Option(
            help="Load generators per stage: above 1, each stage runs as that many k6 execution segments with one "
            "merged verdict (profile k6.work_pool: on its Prefect workers; needs a PostgreSQL or MariaDB store). "
            "Default: the profile's k6.generators.",
            min=1,
        ),
    ] = None,
) -> None:
    """Run a campaign: provision, load every scenario, evaluate, decide, report, notify."""
    _exit(
        run_campaign,
        sizing=sizing,
        generators=generators,
        profile=profile,
        scenarios=scenario or None,
        scale=scale,
        time_scale=time_scale,
        target=target,
        output=output,
        notify=not no_notify,
        build=build,
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def sut(ctx: typer.Context) -> None:
    """Start the reference reservation service (every option: `soundcheck sut --help`)."""
    from infra.sut.server import main

    main(list(ctx.args))


@app.command()
def history(
    profile: Annotated[Path, typer.Option(help="Profile (YAML) whose result store to list.")] = DEFAULT_PROFILE,
    limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 20,
    all_profiles: Annotated[bool, typer.Option("--all", help="Runs of every profile in that store.")] = False,
    kpi: Annotated[
        str | None,
        typer.Option(
            help="Trend of this KPI (a family such as p95_ms takes its endpoints too) instead of the run list."
        ),
    ] = None,
    scenario: Annotated[str | None, typer.Option(help="Trends of this scenario's gated KPIs.")] = None,
    trends: Annotated[bool, typer.Option("--trends", help="Trends of every gated KPI.")] = False,
) -> None:
    """List past runs (when, build, scenarios, scale, status, verdict), or each gated KPI's nightly trend with its
    lasting changes (--kpi, --scenario, --trends)."""
    _exit(print_history, profile, limit, all_profiles, kpi, scenario, trends)


@app.command()
def verify(
    run_id: Annotated[str, typer.Argument(help="Run whose remediations to re-test (see `soundcheck history`).")],
    profile: Annotated[Path, typer.Option(help="The profile the run used.")] = DEFAULT_PROFILE,
    remediation: Annotated[
        list[str] | None,
        typer.Option(help="Remediation code to verify (repeatable). Default: every remediation of the verdict."),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Runs per arm, before and after, interleaved.")] = 3,
    budget_s: Annotated[float, typer.Option(help="Time limit per remediation, seconds.")] = 1200.0,
    total_budget_s: Annotated[float, typer.Option(help="Time limit in total, seconds.")] = 3600.0,
    change: Annotated[
        list[str] | None,
        typer.Option(help="SETTING=VALUE to apply instead of the remediation's own change (repeatable)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="The run's folder. Default: the profile's output folder / RUN_ID.")
    ] = None,
    no_notify: Annotated[bool, typer.Option("--no-notify", help="Do not post to Slack.")] = False,
) -> None:
    """Prove a run's remediations: apply each, re-run what raised it (A B A B …), report the effect and verdict."""
    _exit(verify_run, run_id, profile, remediation, repeats, budget_s, total_budget_s, change, not no_notify, output)


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="Run to re-judge (see `soundcheck history`).")],
    profile: Annotated[Path, typer.Option(help="Profile whose bands and result store to use.")] = DEFAULT_PROFILE,
    output: Annotated[
        Path | None,
        typer.Option(help="Folder for the new report and verdict.json. Default: the profile's output folder / RUN_ID."),
    ] = None,
) -> None:
    """Re-judge a stored run with the current expectations, bands and tree (no new load); rewrite its report."""
    _exit(rejudge, profile, run_id, output)


@app.command("k6-operator")
def k6_operator(
    scenario: Annotated[str, typer.Argument(help="The stage: spike, race, saga, soak or points.")],
    profile: Annotated[Path, typer.Option(help="Profile: scale, target, abort levels.")] = DEFAULT_PROFILE,
    parallelism: Annotated[
        int | None,
        typer.Option(help="Runner pods (k6 execution segments). Default: the profile's k6.generators.", min=1),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(help="The target as the cluster reaches it (on the allowlist). Default: target.base_url."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Manifest file. Default: standard output.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="TestRun name. Default: soundcheck-SCENARIO.")] = None,
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace.")] = None,
    image: Annotated[str | None, typer.Option(help="Runner image. Default: grafana/k6 at this k6's version.")] = None,
    out: Annotated[
        list[str] | None, typer.Option(help="k6 --out for every runner (repeatable): where the results go.")
    ] = None,
) -> None:
    """Write a stage as a k6-operator TestRun (and its script archive) for teams that run k6 on Kubernetes."""
    _exit(write_k6_operator, scenario, profile, parallelism, base_url, output, name, namespace, image, out)
