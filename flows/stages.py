"""One Prefect flow per scenario stage (spike, race, saga, soak, points), all the same recipe:

    start the server-metric sampler → run k6 with streaming ingest (watched live for harm)
    → stop the sampler → snapshot the target's rows → KPIs

The load is never retried: a second attempt would measure a different system (seats already sold,
queues already full), so a stage that fails is recorded with its status and the campaign decides.
Metric scrapes are retried inside the sampler. A breach of an alarm band stops k6 (R-SAFE), records
the abort, runs the plan's rollback and ends the campaign (`StageAborted`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from prefect import flow, get_run_logger
from prefect.cache_policies import NO_CACHE

from soundcheck import store
from soundcheck.dialect import dialect_path
from soundcheck.plan import PLAN, RACE_TC1_SEAT_BESIDE_SPIKE, k6_abort_env, shift_seats
from soundcheck.profile import Profile, target_limits
from soundcheck.schema_map import load_schema_map
from tasks.provision import StageEnv
from tasks.runs import RunContext, first_line
from tasks.safety import StageAborted


def _admin_token(profile: Profile, env: StageEnv) -> str | None:
    """The target's admin token: the provisioner's (a local stack makes one), else the profile's variable."""
    return (
        getattr(env.endpoints, "admin_token", None)
        or getattr(env.handle, "admin_token", None)
        or os.environ.get(profile.target.admin_token_env)
        or None
    )


#: How long the saga script watches a payment at the plan's time scale (scenarios/lib/common.js default) …
SAGA_WATCH_LIMIT_S = 120.0
#: … and never less than this: 1.5× the saga-time action band (20 s). A saga still running then is
#: already judged a failure; watching longer only makes a stuck outbox cost minutes at small scale.
SAGA_WATCH_FLOOR_S = 30.0


def scenario_overrides(name: str, scenarios: list[str], time_scale: float = 1.0) -> dict[str, str]:
    """Script variables for this campaign's stage.

    The plan puts both the spike's reservations and race TC-1 on seat 1 of show 101. In one campaign
    the service is not reset between stages, so whichever ran first would leave the seat HELD or SOLD
    and the other would measure nothing but 409s. The spike keeps the plan's seats [1, 2]; TC-1 moves.
    The saga's watch limit follows the time scale (120 s at 1.0), down to `SAGA_WATCH_FLOOR_S`.
    """
    if name == "race" and "spike" in scenarios:
        return {"TC1_SEAT": RACE_TC1_SEAT_BESIDE_SPIKE}
    if name == "saga":
        return {"WATCH_LIMIT_S": f"{max(SAGA_WATCH_FLOOR_S, SAGA_WATCH_LIMIT_S * time_scale):g}"}
    return {}


def stage_env(name: str, profile: Profile) -> dict[str, str]:
    """Every script variable the campaign sets for a stage: the target's concert and show, the stage's users
    and seats (moved by `target.user_offset` / `seat_offset`, with `scenario_overrides`), the target's lock
    wait (a contended reservation answered that late is a lock timeout, whatever its body says), its API
    dialect and admission mode, and the profile's abort levels (k6's abortOnFail thresholds)."""
    t = profile.target
    first, count = PLAN[name].users
    seats = shift_seats(
        {**PLAN[name].seats, **scenario_overrides(name, profile.scenarios, profile.time_scale)}, t.seat_offset
    )
    return {
        "CONCERT_ID": str(t.concert_id),
        "SHOW_ID": str(t.show_id),
        "USER_OFFSET": str(first + t.user_offset),
        "USER_COUNT": str(count),
        **seats,
        "LOCK_WAIT_S": str(target_limits(profile)["lock_wait_seconds"]),
        "DIALECT": profile.target.dialect,
        "DIALECT_FILE": str(dialect_path(profile.target.dialect)),
        "ADMISSION": profile.target.admission.mode,
        "ADMISSION_WAIT_S": str(profile.target.admission.wait_s),
        **k6_abort_env(profile.abort.error_rate, profile.abort.p95_ms, profile.abort.on_latency),
    }


def run_stage(name: str, profile: Profile, run: RunContext, env: StageEnv) -> str:
    """The stage recipe as a plain function; returns the scenario run's status (models.ScenarioStatus)."""
    from tasks.collect import backfill_task, start_sampler
    from tasks.fixtures import fixtures_task
    from tasks.kpis import compute_kpis_task
    from tasks.load import LoadRequest
    from tasks.safety import AbortWatcher, record_abort, rollback, rollback_steps_for
    from tasks.segments import run_load
    from tasks.snapshot import snapshot_task

    # Their inputs include the store's Engine, which has no cache key: these steps are never cached anyway.
    backfill_task, compute_kpis_task, snapshot_task = (
        t.with_options(cache_policy=NO_CACHE) for t in (backfill_task, compute_kpis_task, snapshot_task)
    )

    log = get_run_logger()
    engine = store.open_store(run.store_url)
    restore = None
    try:
        scenario_run_id = store.start_scenario(engine, run.run_id, name)
        try:  # set-up traffic, before the stage's clock and samplers start
            log.info(
                "fixtures: %s", fixtures_task(profile, name, env.base_url, _admin_token(profile, env), _write_dsn(env))
            )
            restore = raise_capacity(name, profile, env)
        except Exception as exc:  # noqa: BLE001 - a stage that could not be set up is recorded, not fatal
            reason = f"set-up failed: {first_line(exc)}"
            store.finish_scenario(engine, scenario_run_id, "INVALID", reason=reason)
            log.error("stage %s: %s", name, reason)
            return "INVALID"
        stage_start = store.now()
        abort = threading.Event()
        watcher = AbortWatcher(profile, abort)
        sampler = start_sampler(profile, env.endpoints, engine, run.run_id, scenario_run_id, on_batch=watcher.on_sample)
        try:
            # Never retried: a second attempt would load a different system (seats sold, queues full).
            result = run_load(
                engine,
                run.run_id,
                profile,
                LoadRequest(
                    name,
                    env.base_url,
                    output_dir=run.run_dir,
                    scale=profile.scale,
                    time_scale=profile.time_scale,
                    env=stage_env(name, profile),
                    admin_token=_admin_token(profile, env),
                    allowlist=profile.target.allowlist,
                    stop_grace_s=profile.k6.stop_grace_s,
                    max_cpu_share=profile.k6.max_cpu_share,
                    scenario_run_id=scenario_run_id,
                ),
                abort=abort,
                on_second=watcher.on_second,
            )
        finally:
            sampler.stop()
        if watcher.tripped:
            reason = record_abort(engine, run.run_id, scenario_run_id, watcher)
            rollback(
                engine,
                run.run_id,
                **rollback_steps_for(
                    profile, env.handle, run.started_at, base_url=env.base_url, database_url=env.database_url
                ),
            )
            store.finish_run(engine, run.run_id, "ABORTED", reason=reason)
            raise StageAborted(reason)
        if profile.metrics.source == "prometheus" or profile.metrics.cloudwatch.queries:
            # Sources that keep history are read again for the whole stage (CloudWatch publishes late).
            backfill_task(
                profile,
                env.endpoints,
                run.store_url,
                run.run_id,
                result.started_at,
                result.finished_at,
                scenario_run_id,
            )
        if env.database_url:
            snapshot_task(
                engine,
                scenario_run_id,
                env.database_url,
                stage_start,  # retried: read-only
                load_schema_map(profile.target.schema_map),
            )
        compute_kpis_task(engine, scenario_run_id)
        log.info("stage %s: %s%s", name, result.status.value, f" ({result.reason})" if result.reason else "")
        return result.status.value
    finally:
        if restore is not None:
            restore()
        engine.dispose()


def raise_capacity(name: str, profile: Profile, env: StageEnv) -> Callable[[], None] | None:
    """For race and saga with `target.admission.raise_capacity`: set the target's queue capacity through the
    environment (the local stack restarts the reference service with it) and return how to restore it."""
    cap = profile.target.admission.raise_capacity
    apply = getattr(env.handle, "apply_settings", None)
    if not cap or name not in ("race", "saga") or not callable(apply):
        return None
    before = target_limits(profile)["queue_capacity"]
    apply({"queue_capacity": cap})
    get_run_logger().info("%s: queue capacity raised to %s for the stage (restored to %s after)", name, cap, before)
    return lambda: apply({"queue_capacity": before})


def _write_dsn(env: StageEnv) -> str | None:
    """The local stack's database with write rights (SQL fixtures), when the environment has one."""
    return (getattr(env.endpoints, "extra", None) or {}).get("write_database_url")


@flow(name="stage-spike")
def spike(profile: Profile, run: RunContext, env: StageEnv) -> str:
    """R-SPIKE: ticket open, 10,000 users at scale 1."""
    return run_stage("spike", profile, run, env)


@flow(name="stage-race")
def race(profile: Profile, run: RunContext, env: StageEnv) -> str:
    """R-RACE: TC-1/2/3, 100 users released at one instant."""
    return run_stage("race", profile, run, env)


@flow(name="stage-saga")
def saga(profile: Profile, run: RunContext, env: StageEnv) -> str:
    """R-SAGA: compensation and 100 concurrent payments."""
    return run_stage("saga", profile, run, env)


@flow(name="stage-soak")
def soak(profile: Profile, run: RunContext, env: StageEnv) -> str:
    """R-SOAK: 1,000 users for 30 minutes at scale 1."""
    return run_stage("soak", profile, run, env)


@flow(name="stage-points")
def points(profile: Profile, run: RunContext, env: StageEnv) -> str:
    """R-POINT: concurrent charges to one user."""
    return run_stage("points", profile, run, env)


STAGES = {"spike": spike, "race": race, "saga": saga, "soak": soak, "points": points}
