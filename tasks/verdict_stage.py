"""The verdict stage in one call, as the campaign flow and `soundcheck report` use it.

evaluate (GX suites) → derive server KPIs → bands + history → decision tree → store checks and KPIs →
report.html and headline.png in the run folder. verdict.json and the verdict row are `tasks.publish`'s.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from soundcheck import store
from soundcheck.bands import bands_for
from soundcheck.models import Decision, Verdict
from soundcheck.profile import Profile
from tasks.capacity import SIZING_FILE, apply_sizing, current_instances
from tasks.decide import judge as walk_tree
from tasks.expectations import Validator
from tasks.report import write_outputs
from tasks.runs import RunContext, reason


def judge_run(
    engine: Engine, run_id: str, profile: Profile, run_dir: str | Path, *, validator: Validator | None = None
) -> Verdict:
    """Judge a stored run (checks and KPIs stored) and write its report into `run_dir`."""
    verdict, run = walk_tree(engine, run_id, profile, validator=validator)
    sizing_file = Path(run_dir) / SIZING_FILE
    if sizing_file.exists():  # the capacity stage ran (campaign parameter `sizing`)
        apply_sizing(verdict, json.loads(sizing_file.read_text()), current_instances(profile))
    write_outputs(verdict, engine, run_dir, profile_bands=bands_for(profile), run=run, history=profile.history)
    return verdict


@task(name="judge", cache_policy=NO_CACHE)
def judge(profile: Profile, run: RunContext, status: str | None = None, why: str | None = None) -> Verdict:
    """evaluate (GX suites) → decide (bands + tree, against history) → report (HTML + headline PNG).

    The run row gets its end (`status`: COMPLETED by default, or ABORTED with the breach) before judging, so a
    judge that fails still leaves the run marked as it ended; the verdict is added when it is published.
    (No "COMPLETED" default: Prefect links an input to the run whose result is the same object, and a stage
    subflow returns that interned string — the UI's Task Runs tab cannot render an input from a flow run.)
    """
    status = status or "COMPLETED"
    engine = store.open_store(run.store_url)
    try:
        store.finish_run(engine, run.run_id, status, reason=why)
        verdict = judge_run(engine, run.run_id, profile, Path(run.run_dir))
        verdict.finished_at = verdict.finished_at or store.now().isoformat()
        return verdict
    finally:
        engine.dispose()


def judge_aborted(profile: Profile, run: RunContext, fallback: Verdict, why: str) -> Verdict:
    """Judge what a run stopped on harm measured, and keep the run ABORTED with the breach.

    A stage stopped because the target was harmed is evidence: its KPIs are banded and its checks count
    (a lock timeout answered 500 → BLOCK R-RACE-4). The verdict stage counts the aborted stage (and the
    scenarios that never ran) as unable to measure, so nothing but a defect outranks INCONCLUSIVE; an
    APPROVE cannot come out of the tree for an aborted run, and is refused here too.
    """
    try:
        v = judge(profile, run, status="ABORTED", why=why)
    except Exception as exc:  # noqa: BLE001 - the fallback (INCONCLUSIVE) still goes out
        get_run_logger().error("could not judge the aborted run: %s", reason(exc, run))
        v = fallback
    if v.verdict in (Decision.APPROVE, Decision.APPROVE_WITH_TUNING):
        v = fallback
    if v.verdict == Decision.INCONCLUSIVE and not any(r.code == "fix_test_environment" for r in v.remediations):
        v.remediations += fallback.remediations
    v.extra.update(status="ABORTED", reason=why)
    return v
