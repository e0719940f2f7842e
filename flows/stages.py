"""One Prefect flow per scenario stage (spike, race, saga, soak, points), all the same recipe:

    start the server-metric sampler → run k6 with streaming ingest (watched live for harm)
    → stop the sampler → snapshot the target's rows → KPIs

The load is never retried: a second attempt would measure a different system (seats already sold,
queues already full), so a stage that fails is recorded with its status and the campaign decides.
Metric scrapes are retried inside the sampler. A breach of an alarm band stops k6 (R-SAFE), records
the abort, runs the plan's rollback and ends the campaign (`StageAborted`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from soundcheck import store
from soundcheck.profile import Profile


class RunContext(BaseModel):
    """What every step needs to find the run: plain values, so Prefect can show them as parameters."""

    run_id: str
    profile_name: str
    store_url: str
    run_dir: str
    started_at: str


class StageEnv(BaseModel):
    """Where the provisioned system under test answers; `handle` is the provisioner's own object (teardown)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base_url: str
    database_url: str | None = None
    metrics_url: str | None = None
    handle: Any = Field(default=None, exclude=True)

    @classmethod
    def from_provisioned(cls, env: Any) -> StageEnv:
        return cls(base_url=env.base_url, database_url=getattr(env, "database_url", None),
                   metrics_url=getattr(env, "metrics_url", None), handle=env)


class StageAborted(RuntimeError):
    """The load was stopped on harm; the reason is the breach sentence."""


def run_stage(name: str, profile: Profile, run: RunContext, env: StageEnv) -> str:
    """The stage recipe as a plain function; returns the scenario run's status."""
    from tasks.collect import start_sampler
    from tasks.kpis import compute_kpis
    from tasks.snapshot import take_snapshot

    from tasks.load import run_scenario
    from tasks.safety import AbortWatcher, record_abort, rollback

    log = get_run_logger()
    engine = store.open_store(run.store_url)
    try:
        scenario_run_id = store.start_scenario(engine, run.run_id, name)
        abort = threading.Event()
        watcher = AbortWatcher(profile, abort)
        sampler = start_sampler(profile, env, engine, run.run_id, scenario_run_id, on_sample=watcher.on_sample)
        try:
            outcome = run_scenario(name, profile, env.base_url, engine, scenario_run_id, Path(run.run_dir),
                                   abort=abort, on_second=watcher.on_second)
        finally:
            sampler.stop()
        if watcher.tripped:
            reason = record_abort(engine, run.run_id, scenario_run_id, watcher)
            rollback(engine, run.run_id, **getattr(env.handle, "rollback_steps", lambda _since: {})(run.started_at))
            store.finish_run(engine, run.run_id, "ABORTED", reason=reason)
            raise StageAborted(reason)
        if env.database_url:
            take_snapshot(engine, scenario_run_id, name, env.database_url, since=run.started_at)
        compute_kpis(engine, run.run_id, scenario_run_id, name, profile)
        status = str(getattr(outcome, "status", outcome))
        log.info("stage %s: %s", name, status)
        return status
    finally:
        engine.dispose()


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
