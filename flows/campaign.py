"""The `campaign` flow: the whole pre-release run as one readable recipe.

    load profile → allowlist check (exit 2 before a single request) → provision (retried)
    → one stage flow per scenario (sampler, k6 with streaming ingest, snapshot, KPIs; never retried)
    → evaluate → decide → report → verdict.json + Prefect artifacts → Slack (retried, never fatal)
    → teardown (always, also after a failure)

A run that fails part-way keeps every row it measured: it is marked INCOMPLETE with the reason, gets
an INCONCLUSIVE verdict (`fix_test_environment`) that is written and sent like any other, and the
Prefect flow run ends Failed with the same reason. `run_from_cli` is the `soundcheck run` command's
body: it validates the profile before Prefect starts (a bad profile costs no server start-up), runs
the flow in-process (Prefect starts a temporary local server when none is configured) and returns
the exit status of the verdict.
"""

from __future__ import annotations

import contextlib
import errno
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from sqlalchemy import select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from flows.stages import STAGES, RunContext, StageAborted, StageEnv
from soundcheck import store
from soundcheck.models import EXIT_CODES, EXIT_USAGE, Decision, Remediation, Verdict
from soundcheck.paths import DEFAULT_PROFILE, ROOT
from soundcheck.profile import Profile, ProfileError, load_profile, parse_profile

#: The scenario names as a type, so the Prefect UI's run form offers them as choices.
ScenarioName = Literal["spike", "race", "saga", "soak", "points"]


class StoreUnavailable(RuntimeError):
    """The result store cannot be opened or written (down, locked, refused); the message is one sentence."""


class CampaignIncomplete(RuntimeError):
    """The campaign could not finish; carries the INCONCLUSIVE verdict that was written and sent."""

    def __init__(self, reason: str, verdict: Verdict, verdict_path: str | None = None) -> None:
        super().__init__(reason)
        self.verdict = verdict
        self.verdict_path = verdict_path


# ---------------------------------------------------------------- profile


def resolve_profile_path(path: str | Path | None) -> Path:
    """A relative path is taken from the working directory, else from the repository (deployments run anywhere)."""
    p = Path(path) if path else DEFAULT_PROFILE
    if not p.is_absolute() and not p.exists() and (ROOT / p).exists():
        return ROOT / p
    return p


def resolve_profile(path: str | Path | None = None, *, scenarios: list[str] | None = None,
                    scale: float | None = None, time_scale: float | None = None,
                    target: str | None = None) -> Profile:
    """The profile file with the run's overrides applied and validated again (a bad override is a ProfileError).

    A `target` means the system under test is already running there: the local stack is not started.
    """
    p = resolve_profile_path(path)
    prof = load_profile(p)
    data = prof.model_dump()
    if scenarios:
        data["scenarios"] = list(scenarios)
    if scale is not None:
        data["scale"] = scale
    if time_scale is not None:
        data["time_scale"] = time_scale
    if target:
        data["target"]["base_url"] = target
        if data["environment"]["kind"] == "local":
            data["environment"]["kind"] = "external"
    return parse_profile(data, f"profile {p}")


def preflight(profile: Profile) -> None:
    """Refuse what is configuration, before anything is sent: a target outside the allowlist
    (AllowlistError, a ProfileError) and a result-store URL no driver can open (bad URL, unknown
    dialect, driver not installed). A store that is merely down is found later, when the run opens it."""
    from sqlalchemy import create_engine

    from soundcheck.allowlist import check_profile_urls

    check_profile_urls(profile, profile.target.base_url)
    try:
        create_engine(profile.store_url).dispose()  # no connection is made here
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ProfileError(f"store_url {store_location(profile.store_url)!r} cannot be used: "
                           f"{_first_line(exc)}") from exc


def store_location(url: str) -> str:
    """The store URL as it may be printed and logged: the password removed."""
    try:
        u = make_url(url)
        return URL.create(u.drivername, username=u.username, host=u.host, port=u.port, database=u.database,
                          query=u.query).render_as_string(hide_password=False)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url


def store_sentence(url: str, exc: BaseException) -> str:
    """One sentence for a result store that failed: which store, where, and what its driver said."""
    orig = getattr(exc, "orig", None)
    said = orig.args[-1] if orig is not None and orig.args else (orig or exc)
    said = _first_line(said) if not isinstance(said, str) else said.strip().splitlines()[0]
    state = "is locked by another process" if "locked" in said.lower() else "is unreachable"
    return f"the result store at {store_location(url)} {state} ({said})"


# ---------------------------------------------------------------- run bookkeeping


def new_run(profile: Profile, output: str | Path | None) -> RunContext:
    """The run's id and output folder (created); nothing is stored yet."""
    run_id = store.new_run_id()
    run_dir = Path(output) if output else Path(profile.output_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(run_id=run_id, profile_name=profile.name, store_url=profile.store_url,
                      run_dir=str(run_dir.resolve()), started_at=store.now().isoformat())


def register_run(profile: Profile, run: RunContext) -> None:
    """The run's row in the result store; a store that cannot take it is `StoreUnavailable` (one sentence)."""
    try:
        engine = store.open_store(profile.store_url)
    except DBAPIError as exc:
        raise StoreUnavailable(store_sentence(profile.store_url, exc)) from exc
    try:
        store.start_run(engine, run.run_id, profile.name, scale=profile.scale, time_scale=profile.time_scale,
                        scenarios=profile.scenarios, target=profile.target.base_url)
    except DBAPIError as exc:
        raise StoreUnavailable(store_sentence(profile.store_url, exc)) from exc
    finally:
        engine.dispose()


def open_run(profile: Profile, output: str | Path | None) -> RunContext:
    run = new_run(profile, output)
    register_run(profile, run)
    return run


def incomplete_verdict(run: RunContext, reason: str) -> Verdict:
    """What a run that could not finish tells its readers: INCONCLUSIVE, why, and to fix the environment."""
    return Verdict(
        run_id=run.run_id, profile=run.profile_name, started_at=run.started_at,
        finished_at=store.now().isoformat(), verdict=Decision.INCONCLUSIVE,
        remediations=[Remediation(code="fix_test_environment", reason=f"the campaign did not finish: {reason}",
                                  detail="fix the cause and re-run; the rows measured so far are kept")],
        extra={"status": "INCOMPLETE", "reason": reason},
    )


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reason(exc: BaseException, run: RunContext | None = None) -> str:
    """One sentence for why the campaign stopped; the causes a user must act on are named as such."""
    if isinstance(exc, StoreUnavailable | StageAborted):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or (run.run_dir if run else None)
        return f"no space left on the disk for the output{f' at {where}' if where else ''} ({exc.strerror})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------- steps (thin tasks over plain functions)


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what may pass on a second try (a port in use, a slow start); not a configuration or code error."""
    try:
        state.result()
    except (ImportError, ProfileError, TypeError, AttributeError):
        return False
    except Exception:  # noqa: BLE001
        return True
    return True


@task(name="provision", retries=2, retry_delay_seconds=5, retry_condition_fn=_worth_retrying, cache_policy=NO_CACHE)
def provision_env(profile: Profile, run: RunContext) -> StageEnv:
    """Bring the environment up; safe to retry (a half-started stack is torn down by the provisioner)."""
    from tasks.provision import provision

    provisioned = provision(profile, Path(run.run_dir))
    return StageEnv.of(provisioned.endpoints, provisioned.handle)


@task(name="teardown", retries=2, retry_delay_seconds=3, cache_policy=NO_CACHE)
def teardown_env(env: StageEnv) -> None:
    """Idempotent (stopping a stopped stack does nothing), so it is safe to retry."""
    from tasks.provision import teardown

    teardown(env.handle)


@task(name="judge", cache_policy=NO_CACHE)
def judge(profile: Profile, run: RunContext, status: str = "COMPLETED", reason: str | None = None) -> Verdict:
    """evaluate (GX suites) → decide (bands + tree, against history) → report (HTML + headline PNG).

    The run row gets its end (`status`: COMPLETED, or ABORTED with the breach) before judging, so a
    judge that fails still leaves the run marked as it ended; the verdict is added when it is published.
    """
    from tasks.verdict_stage import judge_run

    engine = store.open_store(run.store_url)
    try:
        store.finish_run(engine, run.run_id, status, reason=reason)
        verdict = judge_run(engine, run.run_id, profile, Path(run.run_dir))
        verdict.finished_at = verdict.finished_at or store.now().isoformat()
        return verdict
    finally:
        engine.dispose()


def write_verdict(verdict: Verdict, run: RunContext) -> Path:
    """verdict.json in the output folder, secrets redacted; also kept in the store's verdicts table.

    The store is written even when the file cannot be (a full disk): the run row then says so, and the
    verdict is INCONCLUSIVE — a verdict its readers cannot get is not a finished campaign. A half-written
    verdict.json is removed. The file error is raised after the store has the record.
    """
    from soundcheck.redact import redacted_json_dumps

    path = Path(run.run_dir) / "verdict.json"
    file_error: OSError | None = None
    try:
        path.write_text(redacted_json_dumps(verdict.to_json_dict(), indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        file_error = exc
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        unwritten(verdict, f"verdict.json could not be written: {_reason(exc, run)}")
    body = json.loads(redacted_json_dumps(verdict.to_json_dict(), ensure_ascii=False))
    engine = store.open_store(run.store_url)
    try:
        with engine.begin() as c:
            # The campaign stores the run's verdict row (the verdict stage leaves it to us; once per run).
            if c.execute(select(store.verdicts.c.id).where(store.verdicts.c.run_id == run.run_id)).first() is None:
                c.execute(store.verdicts.insert().values(run_id=run.run_id, created_at=store.now(),
                                                         verdict=verdict.verdict.value, body=body))
        status = verdict.extra.get("status", "COMPLETED") if verdict.extra else "COMPLETED"
        store.finish_run(engine, run.run_id, status, verdict=verdict.verdict.value,
                         reason=verdict.extra.get("reason") if verdict.extra else None)
    finally:
        engine.dispose()
    if file_error is not None:
        raise file_error
    return path


def unwritten(verdict: Verdict, why: str) -> None:
    """A verdict that could not be delivered: INCONCLUSIVE with `fix_test_environment`, what was judged kept."""
    if verdict.verdict != Decision.INCONCLUSIVE:
        why += f"; the run was judged {verdict.verdict.value}"
        verdict.verdict = Decision.INCONCLUSIVE
    previous = verdict.extra.get("reason")
    verdict.extra["reason"] = f"{previous}; {why}" if previous and why not in previous else (previous or why)
    verdict.extra.setdefault("status", "INCOMPLETE")
    if not any(r.code == "fix_test_environment" for r in verdict.remediations):
        verdict.remediations.append(Remediation(code="fix_test_environment", reason=why,
                                                detail="free the output folder's disk (or choose another) and re-run"))


def write_verdict_file(verdict: Verdict, run: RunContext) -> Path | None:
    """verdict.json without the store (the store is what failed); None when the folder cannot take it either."""
    from soundcheck.redact import redacted_json_dumps

    path = Path(run.run_dir) / "verdict.json"
    try:
        path.write_text(redacted_json_dumps(verdict.to_json_dict(), indent=2, ensure_ascii=False) + "\n")
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return None
    return path


def summary_markdown(verdict: Verdict, verdict_path: Path) -> str:
    from soundcheck.redact import redact, redacted_json_dumps

    failed = [c for c in verdict.checks if not c.passed]
    lines = [f"# soundcheck {verdict.verdict.value}", "",
             f"profile `{verdict.profile}` · run `{verdict.run_id}` · {verdict.started_at} → {verdict.finished_at}", ""]
    if verdict.extra.get("reason"):
        lines += [f"**Incomplete**: {verdict.extra['reason']}", ""]
    lines += [f"Checks: {len(verdict.checks) - len(failed)}/{len(verdict.checks)} passed", ""]
    for c in failed:
        lines.append(f"- ❌ **{c.id}** ({c.scenario}): observed {c.observed}; expected {c.expected}")
    if verdict.remediations:
        lines += ["", "## Remediations", ""]
        lines += [f"- **{r.code}**: {r.reason} — {r.detail}" for r in verdict.remediations]
    lines += ["", f"Report: `{verdict.report or 'none'}` · verdict.json: `{verdict_path}`", ""]
    return "\n".join([redact("\n".join(lines)), "```json",
                      redacted_json_dumps(verdict.to_json_dict(), indent=1, ensure_ascii=False), "```"])


@task(name="publish", cache_policy=NO_CACHE)
def publish(verdict: Verdict, run: RunContext) -> Path:
    """verdict.json + store, then the Prefect artifacts: markdown summary (with the JSON), KPI table, report link."""
    path = write_verdict(verdict, run)
    create_markdown_artifact(key="campaign-verdict", markdown=summary_markdown(verdict, path),
                             description=f"soundcheck verdict {verdict.verdict.value} for run {run.run_id}")
    if verdict.kpis:
        create_table_artifact(key="campaign-kpis", description="KPIs with band and previous run", table=[
            {"scenario": k.scenario, "kpi": k.name, "phase": k.phase or "", "value": k.value, "unit": k.unit,
             "band": k.band or "", "previous": k.previous, "delta_pct": k.delta_pct} for k in verdict.kpis])
    report = _report_path(verdict, run)
    if report is not None:
        create_link_artifact(key="campaign-report", link=report.as_uri(), link_text=f"report {run.run_id}",
                             description="Self-contained HTML report")
    return path


def _report_path(verdict: Verdict, run: RunContext) -> Path | None:
    if not verdict.report:
        return None
    p = Path(verdict.report)
    p = p if p.is_absolute() else Path(run.run_dir) / p
    return p.resolve() if p.exists() else None


# ---------------------------------------------------------------- the flow


@flow(name="campaign", log_prints=True)
def campaign(
    profile: str = "deployments/local.yaml",
    scenarios: list[ScenarioName] | None = None,
    scale: float | None = None,
    time_scale: float | None = None,
    target: str | None = None,
    notify: bool = True,
    output: str | None = None,
) -> dict[str, Any]:
    """Run the load campaign and post its verdict.

    Args:
        profile: Campaign profile (YAML), relative to the working directory or the repository,
            e.g. deployments/local.yaml (local stack) or deployments/staging.yaml (AWS).
        scenarios: Scenarios to run, in order: any of spike, race, saga, soak, points. Empty: the profile's list.
        scale: Multiplies users and request rates; 1.0 is the plan (10,000 spike users). Empty: the profile's.
        time_scale: Multiplies durations; 1.0 is the plan (30-minute soak). Empty: the profile's.
        target: Base URL of an already running system under test; must be on the profile's allowlist.
            Empty: the profile's target (the local stack starts the reference service).
        notify: Post the verdict to Slack (credentials from the environment or a Prefect Secret block).
        output: Folder for verdict.json, the report and k6 output. Empty: runs/<run id> under the working directory.
    """
    log = get_run_logger()
    prof = resolve_profile(profile, scenarios=scenarios, scale=scale, time_scale=time_scale, target=target)
    from soundcheck.redact import install_redaction

    install_redaction(profile=prof)
    preflight(prof)  # AllowlistError, an unusable store URL → Failed before a single request
    run = new_run(prof, output)
    try:
        register_run(prof, run)
    except StoreUnavailable as exc:  # nothing can be measured: say so where the user looks, then stop
        return _store_unavailable(exc, prof, run, notify)
    log.info("run %s: profile %s, scenarios %s, scale %s, time scale %s, output %s", run.run_id, prof.name,
             ",".join(prof.scenarios), prof.scale, prof.time_scale, run.run_dir)

    _prewarm_verdict_stage()
    env: StageEnv | None = None
    failure: BaseException | None = None
    verdict: Verdict | None = None
    verdict_path: Path | None = None
    try:
        try:
            env = provision_env(prof, run)
            for name in prof.scenarios:
                STAGES[name](profile=prof, run=run, env=env)
            verdict = judge(prof, run)
        except BaseException as exc:  # noqa: BLE001 - record why, then re-raise below (Ctrl-C included)
            failure = exc
            stopped = isinstance(exc, KeyboardInterrupt | TerminationSignal)  # Ctrl-C, kill, cancel in the UI
            why = "interrupted (Ctrl-C, a termination signal or a cancel)" if stopped else _reason(exc, run)
            log.error("campaign %s: %s", "aborted on harm" if isinstance(exc, StageAborted) else "failed", why)
            verdict = incomplete_verdict(run, why)
            if isinstance(exc, StageAborted):  # stopped on harm (R-SAFE): judged on what it measured, run ABORTED
                verdict = _judge_aborted(prof, run, verdict, why)
        try:
            verdict_path = publish(verdict, run)
        except Exception as exc:  # noqa: BLE001 - no disk, store gone: Slack still gets the verdict
            log.error("could not write or store the verdict: %s", _reason(exc, run))
            failure = failure or exc
            if not isinstance(exc, OSError):  # a file error is already in the verdict (write_verdict)
                unwritten(verdict, f"the verdict could not be stored: {_reason(exc, run)}")
            verdict_path = Path(run.run_dir) / "verdict.json"
            verdict_path = verdict_path if verdict_path.exists() else None
        if notify:
            _notify(verdict, prof, run)
    finally:
        if env is not None:
            try:
                teardown_env(env)
            except Exception as exc:  # noqa: BLE001 - a failed teardown is recorded, it must not hide the verdict
                log.error("teardown failed: %s", _reason(exc))
                _record(run, "teardown", "failed", _reason(exc))
    log.info("verdict %s; report %s; verdict.json %s", verdict.verdict.value, verdict.report or "none", verdict_path)
    if failure is not None:
        if not isinstance(failure, Exception):
            raise failure
        reason = verdict.extra.get("reason") or _reason(failure, run)
        raise CampaignIncomplete(reason, verdict, str(verdict_path) if verdict_path else None) from failure
    return verdict.to_json_dict() | {"verdict_path": str(verdict_path)}


def _store_unavailable(exc: StoreUnavailable, prof: Profile, run: RunContext, notify: bool) -> dict[str, Any]:
    """No result store: no load (nothing could be kept), an INCONCLUSIVE verdict.json in the output
    folder and to Slack, and the flow run Failed with the sentence."""
    why = str(exc)
    get_run_logger().error("campaign failed: %s", why)
    verdict = incomplete_verdict(run, why)
    verdict.remediations[0].detail = "start the result store (or fix store_url in the profile) and re-run"
    path = write_verdict_file(verdict, run)
    if notify:
        _notify(verdict, prof, run, store_ok=False)
    raise CampaignIncomplete(why, verdict, str(path) if path else None) from exc


def _judge_aborted(prof: Profile, run: RunContext, fallback: Verdict, why: str) -> Verdict:
    """Judge what a run stopped on harm measured, and keep the run ABORTED with the breach.

    A stage stopped because the target was harmed is evidence: its KPIs are banded and its checks count
    (a lock timeout answered 500 → BLOCK R-RACE-4). The verdict stage counts the aborted stage (and the
    scenarios that never ran) as unable to measure, so nothing but a defect outranks INCONCLUSIVE; an
    APPROVE cannot come out of the tree for an aborted run, and is refused here too.
    """
    try:
        v = judge(prof, run, status="ABORTED", reason=why)
    except Exception as exc:  # noqa: BLE001 - the fallback (INCONCLUSIVE) still goes out
        get_run_logger().error("could not judge the aborted run: %s", _reason(exc, run))
        v = fallback
    if v.verdict in (Decision.APPROVE, Decision.APPROVE_WITH_TUNING):
        v = fallback
    if v.verdict == Decision.INCONCLUSIVE and not any(r.code == "fix_test_environment" for r in v.remediations):
        v.remediations += fallback.remediations
    v.extra.update(status="ABORTED", reason=why)
    return v


def _prewarm_verdict_stage() -> None:
    """Import Great Expectations in the background while the stack starts, not after the load."""
    try:
        from tasks.expectations import prewarm

        prewarm()
    except ImportError:
        pass


def _record(run: RunContext, kind: str, outcome: str, detail: str) -> None:
    engine = store.open_store(run.store_url)
    try:
        store.record_event(engine, run.run_id, kind, outcome, detail)
    finally:
        engine.dispose()


def _notify(verdict: Verdict, profile: Profile, run: RunContext, store_ok: bool = True) -> None:
    """Slack never fails the campaign: even a store that cannot take the notify event is only logged.

    Without the result store (`store_ok=False`) the message still goes out, with no history to compare
    against: an in-memory store stands in for it.
    """
    from tasks.notify import notify_slack

    try:
        if not profile.slack.enabled:
            if store_ok:
                _record(run, "notify", "skipped", f"Slack is not enabled in profile {profile.name}")
            return
        report = _report_path(verdict, run)
        chart = Path(run.run_dir) / "headline.png"
        engine = store.open_store(run.store_url if store_ok else "sqlite://")
        try:
            notify_slack(verdict, profile.slack, engine, report_location=str(report) if report else verdict.report,
                         chart_path=str(chart) if chart.exists() else None)
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001
        get_run_logger().error("notify step failed: %s", _reason(exc))


# ---------------------------------------------------------------- CLI


def _sigterm_as_interrupt() -> Any:
    """`kill PID` ends a CLI campaign the way Ctrl-C does.

    During the flow, Prefect turns SIGTERM into its own TerminationSignal (the flow's cleanup runs:
    k6 stopped, stack torn down, run kept INCOMPLETE) and then re-sends SIGTERM to the handler it found.
    With Python's default there, the process would die on the spot and orphan Prefect's temporary
    server; with this one it unwinds to `run_from_cli`, which exits 30 and lets atexit stop the server.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, _raise)


def run_from_cli(profile: Path | str | None = None, scenarios: list[str] | None = None, scale: float | None = None,
                 time_scale: float | None = None, target: str | None = None, output: Path | str | None = None,
                 notify: bool = True) -> int:
    """`soundcheck run`: validate, run the flow in-process, print the verdict; the exit status follows it."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        prof = resolve_profile(profile, scenarios=scenarios, scale=scale, time_scale=time_scale, target=target)
        preflight(prof)
    except ProfileError as e:
        errors.print(f"[red]error:[/red] {e}")
        return EXIT_USAGE
    previous = _sigterm_as_interrupt()
    try:
        state = campaign(profile=str(resolve_profile_path(profile)), scenarios=scenarios, scale=scale,
                         time_scale=time_scale, target=target, notify=notify,
                         output=str(output) if output else None, return_state=True)
    except KeyboardInterrupt:
        errors.print("interrupted: the run is kept, marked INCOMPLETE (see `soundcheck history`).")
        return EXIT_CODES[Decision.INCONCLUSIVE]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    result = state.result(raise_on_failure=False)
    if isinstance(result, ProfileError):
        errors.print(f"[red]error:[/red] {result}")
        return EXIT_USAGE
    if isinstance(result, CampaignIncomplete):
        body, written = result.verdict.to_json_dict(), result.verdict_path
        status = result.verdict.extra.get("status", "INCOMPLETE")
        errors.print(f"[red]{'aborted' if status == 'ABORTED' else 'error'}:[/red] {result}")
    elif isinstance(result, dict):
        body, written = result, result["verdict_path"]
    else:
        why = _reason(result) if isinstance(result, BaseException) else result
        errors.print(f"[red]error:[/red] the campaign crashed: {why}")
        return EXIT_CODES[Decision.INCONCLUSIVE]
    decision = Decision(body["verdict"])
    colour = {"APPROVE": "green", "APPROVE_WITH_TUNING": "yellow", "BLOCK": "red"}.get(decision.value, "white")
    console.print(f"\n[bold {colour}]verdict: {decision.value}[/] (run {body['run_id']})")
    failed = [c for c in body.get("checks", []) if not c["passed"]]
    for c in failed[:10]:
        console.print(f"  failed {c['id']} ({c['scenario']}): observed {c['observed']}; expected {c['expected']}")
    if len(failed) > 10:
        console.print(f"  … and {len(failed) - 10} more failed checks in the report")
    for r in body.get("remediations", []):
        console.print(f"  remediation {r['code']}: {r['reason']}")
    report = body.get("report")
    if report and written and not Path(report).is_absolute():
        report = str(Path(written).parent / report)
    console.print(f"report: {report or 'none'}")
    console.print(f"verdict.json: {written or 'not written (see the error above)'}")
    sys.stdout.flush()
    return EXIT_CODES[decision]
