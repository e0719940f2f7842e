"""The `campaign` flow: the whole pre-release run as one recipe.

    profile → preflight → provision → one stage flow per scenario → judge → publish → notify → artifacts
    → teardown; the flow run's final state is named after the verdict (tasks.artifacts.final_state)

Each step is one task defined once in `tasks/`. A run that fails part-way keeps every row it measured:
it is marked INCOMPLETE with the reason (ABORTED when stopped on harm, and judged on what it measured),
gets an INCONCLUSIVE verdict that is published and sent like any other, and the flow run ends Failed
with the same reason. The `soundcheck run` command's body is `soundcheck.cli.run_campaign`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.stages import STAGES
from soundcheck.models import Verdict
from soundcheck.profile import Profile, resolve_profile
from tasks.artifacts import create_artifacts, final_state
from tasks.capacity import capacity_stage
from tasks.notify import send_verdict
from tasks.provision import StageEnv, provision_env, teardown_env
from tasks.publish import DISK_DETAIL, publish, write_verdict_file
from tasks.runs import (
    CampaignIncomplete,
    RunContext,
    StoreUnavailable,
    incomplete_verdict,
    new_run,
    note_environment,
    reason,
    record,
    register_run,
    undelivered,
)
from tasks.safety import StageAborted, preflight
from tasks.verdict_stage import judge, judge_aborted

#: The scenario names as a type, so the Prefect UI's run form offers them as choices.
ScenarioName = Literal["spike", "race", "saga", "soak", "points"]


@flow(name="campaign", log_prints=True)
def campaign(
    profile: str = "deployments/local.yaml",
    scenarios: list[ScenarioName] | None = None,
    scale: float | None = None,
    time_scale: float | None = None,
    target: str = "",
    notify: bool = True,
    output: str = "",
    build: str = "",
    sizing: bool = False,
    generators: int = 0,
) -> Any:
    """Run the load campaign and post its verdict.

    Args:
        profile: Campaign profile (YAML), relative to the working directory or the repository,
            e.g. deployments/local.yaml (local stack) or deployments/staging.yaml (AWS).
        scenarios: Scenarios to run, in order: any of spike, race, saga, soak, points. Empty: the profile's list.
        scale: Multiplies users and request rates; 1.0 is the plan (10,000 spike users). 0.02 with time scale
            0.03 is the quick campaign (about 3 minutes); the full plan takes over an hour. Empty: the profile's.
        time_scale: Multiplies durations; 1.0 is the plan (30-minute soak). Empty: the profile's.
        target: Base URL of an already running system under test; must be on the profile's allowlist.
            Empty: the profile's target (the local stack starts the reference service).
        notify: Post the verdict to Slack (credentials from the environment or a Prefect Secret block).
        output: Folder for verdict.json, the report and k6 output. Empty: runs/RUN_ID under the working directory.
        build: Commit or build id being judged, stored with the run so a regression points at it. Empty:
            $SOUNDCHECK_BUILD, else the checkout's commit for the local stack. On AWS with
            `environment.aws.app` it is deployed before the load; "latest" is the newest tag in the registry.
        sizing: After the scenarios, the capacity stage (profile `sizing`: stairs per instance count, a
            scalability fit, the count for the plan's peak, the scale-out point); adds up to the profile's
            `sizing.budget_s` of load (20 min by default).
        generators: Load generators per stage: above 1, each stage runs as that many k6 execution segments
            (on the workers of the profile's `k6.work_pool`, else on this machine) with one merged verdict;
            needs a PostgreSQL or MariaDB result store. 0: the profile's (`k6.generators`, 1 by default).
    """
    # text fields are "" when empty (the UI's form renders `None` defaults as "Property is type None")
    prof = resolve_profile(
        profile,
        scenarios=scenarios,
        scale=scale,
        time_scale=time_scale,
        target=target or None,
        build=build or None,
        generators=generators or None,
    )
    preflight(prof)  # a target outside the allowlist, an unusable store URL: Failed before a single request
    run = new_run(prof, output or None)
    try:
        register_run(prof, run)
    except StoreUnavailable as exc:  # nothing could be kept: no load, the sentence where the user looks
        return _store_unavailable(exc, prof, run, notify)
    env: StageEnv | None = None
    failure: BaseException | None = None
    try:
        try:
            env = provision_env(prof, run.run_dir)
            note_environment(run, env.endpoints)
            for name in prof.scenarios:
                STAGES[name](profile=prof, run=run, env=env)
            if sizing:
                capacity_stage(prof, run, env)
            verdict = judge(prof, run)
        except BaseException as exc:  # noqa: BLE001 - Ctrl-C included: recorded, published, re-raised below
            failure, why = exc, reason(exc, run)
            get_run_logger().error("campaign stopped: %s", why)
            verdict = incomplete_verdict(run, why)
            if isinstance(exc, StageAborted):
                verdict = judge_aborted(prof, run, verdict, why)
        verdict_path, failure = _publish(verdict, run, failure)
        notified = send_verdict(verdict, prof, run) if notify else None
        _artifacts(verdict, verdict_path, run, prof, notified)
    finally:
        if env is not None:
            _teardown(env, run)
    get_run_logger().info(
        "verdict %s; report %s; verdict.json %s", verdict.verdict.value, verdict.report or "none", verdict_path
    )
    if failure is None:
        return final_state(verdict, verdict.to_json_dict() | {"verdict_path": str(verdict_path)})
    if not isinstance(failure, Exception):
        raise failure  # Ctrl-C and kill: after the verdict is out
    raise CampaignIncomplete(
        verdict.extra.get("reason") or reason(failure, run), verdict, str(verdict_path) if verdict_path else None
    ) from failure


def _publish(
    verdict: Verdict, run: RunContext, failure: BaseException | None
) -> tuple[Path | None, BaseException | None]:
    """Publish; a verdict that cannot be written or stored still goes to Slack, and fails the run."""
    try:
        return publish(verdict, run), failure
    except Exception as exc:  # noqa: BLE001 - no disk, store gone
        get_run_logger().error("could not write or store the verdict: %s", reason(exc, run))
        if not isinstance(exc, OSError):  # a file error is already in the verdict (tasks.publish)
            undelivered(verdict, f"the verdict could not be stored: {reason(exc, run)}", DISK_DETAIL)
        path = Path(run.run_dir) / "verdict.json"
        return (path if path.exists() else None), failure or exc


def _artifacts(verdict: Verdict, path: Path | None, run: RunContext, prof: Profile, notified: str | None) -> None:
    """The flow run's artifacts (tasks.artifacts); one that cannot be made is logged, never fatal."""
    try:
        create_artifacts(verdict, path, run.run_dir, prof, notified)
    except Exception as exc:  # noqa: BLE001
        get_run_logger().warning("could not create the Prefect artifacts: %s", reason(exc, run))


def _teardown(env: StageEnv, run: RunContext) -> None:
    """A failed teardown is logged and recorded; it must not hide the verdict."""
    try:
        teardown_env(env)
    except Exception as exc:  # noqa: BLE001
        get_run_logger().error("teardown failed: %s", reason(exc))
        record(run, "teardown", "failed", reason(exc))


def _store_unavailable(exc: StoreUnavailable, prof: Profile, run: RunContext, notify: bool) -> dict[str, Any]:
    """No result store: no load (nothing could be kept), an INCONCLUSIVE verdict.json in the output
    folder and to Slack, and the flow run Failed with the sentence."""
    why = str(exc)
    get_run_logger().error("campaign failed: %s", why)
    verdict = incomplete_verdict(run, why, "start the result store (or fix store_url in the profile) and re-run")
    try:
        path: Path | None = write_verdict_file(verdict, run.run_dir)
    except OSError:
        path = None
    if notify:
        send_verdict(verdict, prof, run, store_ok=False)
    raise CampaignIncomplete(why, verdict, str(path) if path else None) from exc
