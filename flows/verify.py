"""The `verify` flow: prove a stored verdict's remediations by re-test (R-WHY-4).

    stored verdict → plan (what to apply) → per remediation: A B A B … campaign runs → effect
    → verdict.json and report gain `verification` → Slack

Each arm is the `campaign` flow itself, run as a subflow at the original run's scale on the scenarios
that raised the remediation, with the run's own settings (A) or with the change applied (B); the local
stack is started per run, so the original setting is back for every A run and after the last B.
The runs are stored under the profile name `<profile>~verify` (never part of the nightly series) and
linked to the run they verify. A budget per remediation and in total stops the flow cleanly between
runs; what was measured is judged and kept.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger

from soundcheck import store
from soundcheck.models import Verification, VerifyRun
from soundcheck.profile import resolve_profile, resolve_profile_path
from tasks.verify import (
    Plan,
    arm_order,
    effect,
    fmt_verification,
    kpi_value,
    link_run,
    plan,
    stored_run,
    stored_verdict,
)


@flow(name="verify", log_prints=True)
def verify(
    run_id: str,
    profile: str = "deployments/local.yaml",
    remediations: list[str] | None = None,
    repeats: int = 3,
    budget_s: float = 1200.0,
    total_budget_s: float = 3600.0,
    change: dict[str, Any] | None = None,
    notify: bool = True,
    output: str = "",
) -> dict[str, Any]:
    """Re-test the remediations of a stored run and show whether each moves its KPI and the verdict.

    Args:
        run_id: The run whose verdict's remediations to verify (see `soundcheck history`).
        profile: The profile the run used (its result store, environment and bands).
        remediations: Codes to verify. Empty: every remediation of the verdict.
        repeats: Runs per arm (before and after, interleaved A B A B …); at least 2.
        budget_s: Time limit per remediation; no new run starts past it.
        total_budget_s: Time limit for the whole verification.
        change: Settings to apply instead of the remediation's own (e.g. to try another value).
        notify: Post the verdict, now with its verification, to Slack.
        output: The run's folder (verdict.json, report). Empty: the profile's output folder / run id.
    """
    log = get_run_logger()
    if repeats < 2:
        raise ValueError("repeats must be at least 2: an interval needs two runs per arm")
    path = resolve_profile_path(profile)
    prof = resolve_profile(path)
    data = yaml.safe_load(path.read_text())
    engine = store.open_store(prof.store_url)
    try:
        verdict, run = stored_verdict(engine, run_id), stored_run(engine, run_id)
    finally:
        engine.dispose()
    out = Path(output) if output else Path(prof.output_dir) / run_id
    plans = plan(data, prof, verdict, run, codes=remediations, change=change)
    t_all = time.monotonic()
    results: list[Verification] = []
    for p in plans:
        if p.skipped:
            log.warning("%s skipped: %s", p.code, p.skipped)
            results.append(Verification(code=p.code, change=p.change, status="skipped", why=p.skipped))
            continue
        left = total_budget_s - (time.monotonic() - t_all)
        v = _verify_one(p, run_id, out, repeats, min(budget_s, left), run["scale"], prof)
        log.info(fmt_verification(v))
        results.append(v)
    verdict.verification = results
    _publish(verdict, prof, out, notify)
    return {"run_id": run_id, "verification": [v.model_dump(mode="json") for v in results]}


def _verify_one(
    p: Plan, run_id: str, out: Path, repeats: int, budget_s: float, scale: float, prof: Any
) -> Verification:
    from flows.campaign import campaign

    assert p.kpi is not None and p.before is not None and p.after is not None
    folder = out / "verify" / p.code
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for arm, data in (("A", p.before), ("B", p.after)):
        files[arm] = folder / f"profile-{arm}.yaml"
        files[arm].write_text(yaml.safe_dump(data, sort_keys=False))
    runs: list[VerifyRun] = []
    t0, longest, stopped = time.monotonic(), 0.0, None
    for i, arm in enumerate(arm_order(repeats)):
        spent = time.monotonic() - t0
        if spent + longest > budget_s:
            stopped = f"stopped at the budget ({budget_s:.0f} s) after {len(runs)} of {2 * repeats} runs"
            break
        t_run = time.monotonic()
        state = campaign(
            profile=str(files[arm]), notify=False, output=str(folder / f"{i + 1:02d}-{arm}"), return_state=True
        )
        body = _verdict_body(state.result(raise_on_failure=False))
        longest = max(longest, time.monotonic() - t_run)
        if body is None:
            continue
        link_run(prof.store_url, body["run_id"], run_id, f"{arm} {p.code}")
        runs.append(VerifyRun(run_id=body["run_id"], arm=arm, verdict=body["verdict"], value=kpi_value(body, p.kpi)))
    return effect(p, runs, prof, scale, time.monotonic() - t0, stopped)


def _verdict_body(result: Any) -> dict[str, Any] | None:
    """An arm's verdict.json: the campaign's return value, or the verdict an incomplete run still published."""
    from tasks.runs import CampaignIncomplete

    if isinstance(result, dict):
        return result
    if isinstance(result, CampaignIncomplete):
        return result.verdict.to_json_dict()
    return None


def _publish(verdict: Any, prof: Any, out: Path, notify: bool) -> None:
    """The run's verdict with its verification: verdict.json and a verdict row (tasks.publish), the report
    rewritten with the before/after charts, and Slack."""
    from tasks.notify import send_verdict
    from tasks.publish import publish_verdict
    from tasks.report import write_outputs
    from tasks.runs import RunContext

    out.mkdir(parents=True, exist_ok=True)
    engine = store.open_store(prof.store_url)
    try:
        from soundcheck.bands import bands_for

        write_outputs(verdict, engine, out, profile_bands=bands_for(prof), history=prof.history)
    finally:
        engine.dispose()
    publish_verdict(verdict, out, prof.store_url)
    if notify:
        send_verdict(
            verdict,
            prof,
            RunContext(
                run_id=verdict.run_id,
                profile_name=verdict.profile,
                store_url=prof.store_url,
                run_dir=str(out),
                started_at=verdict.started_at,
            ),
        )
