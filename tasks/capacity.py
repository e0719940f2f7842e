"""The capacity stage (R-WHY-1…3): stairs of offered load per instance count, judged step by step.

For each instance count of `profile.sizing` (locally: reference-service workers under a cgroup CPU quota,
`LocalStack.set_instances`; on AWS: the auto-scaling group's desired capacity), `repeats` times: offer
`scenarios/capacity.js` at rising rates until the first step that fails the plan's gates at steady state
(`soundcheck.sizing.judge_step`). Every step is a stored scenario run ("capacity") with its seconds and
server samples, so nothing measured is lost when a later step, the budget or the machine gives out.

Then: the sustainable load per count with its spread, the knee and the first resource to saturate, a
USL fit across counts, the count for the plan's peak with headroom, the scale-out point, and a run at the
recommended count that checks the prediction (±15 %).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine, select

from soundcheck import store
from soundcheck.paths import SCENARIOS
from soundcheck.profile import Profile
from soundcheck.sizing import (
    PEAK_RPS,
    Gates,
    Recommendation,
    StepResult,
    UslFit,
    cpu_line,
    fit_usl,
    judge_step,
    prediction_holds,
    recommend,
    scale_out_point,
    stairs,
)
from soundcheck.sketch import Histogram

log = logging.getLogger(__name__)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger inside a flow (so each step shows in the UI), else this module's."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow or task run
        return log


#: Most cores the local instances may take together: the rest is k6's, Redis's and the broker's.
LOCAL_CORE_BUDGET = 1.0


@dataclass
class Stairs:
    instances: int
    repeat: int
    steps: list[StepResult]
    sustainable_rps: float | None
    knee_rps: float | None  # offered load of the first failing step
    bottleneck: str | None
    stopped: str | None = None  # budget, abort …


@dataclass
class SizingResult:
    scale: float
    instance_cpu: float | None
    quota: str  # how an instance's CPU share was held ("cgroup v1 quota 0.25 core", or why none)
    stairs: list[Stairs] = field(default_factory=list)
    per_count: dict[int, dict[str, Any]] = field(default_factory=dict)
    fit: dict[str, Any] | None = None
    recommendation: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    load_s: float = 0.0
    why_not: str | None = None  # what could not be concluded, in one sentence

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_count"] = {str(k): v for k, v in self.per_count.items()}
        return d


# ---------------------------------------------------------------------------------------------- one step
def step_from_store(
    engine: Engine, sid: int, offered: float, dropped: int, warmup_s: float, gates: Gates = Gates()
) -> StepResult:
    """Judge one stored step on its steady window (the warm-up left out)."""
    t = store.second_aggregates
    with engine.connect() as c:
        rows = c.execute(
            select(t.c.second, t.c.endpoint, t.c.count, t.c.s5xx, t.c.failed, t.c.sketch).where(
                t.c.scenario_run_id == sid
            )
        ).all()
    if not rows:
        return judge_step(StepResult(offered, 0.0, 0.0, None, None, None, None, 1.0, dropped), gates)
    t0, t1 = min(r.second for r in rows), max(r.second for r in rows)
    lo = t0 + warmup_s
    steady = [r for r in rows if lo <= r.second < t1] or rows  # the last second is partial
    seconds = max(1, len({r.second for r in steady}))
    mid = lo + (t1 - lo) / 2
    per_ep: dict[str, Histogram] = {}
    halves = (Histogram(), Histogram())
    n = bad = 0
    for r in steady:
        n += r.count
        bad += r.s5xx + r.failed
        if r.sketch:
            h = Histogram.from_bytes(r.sketch)
            per_ep.setdefault(r.endpoint, Histogram()).merge(h)
            halves[0 if r.second < mid else 1].merge(h)
    tok = per_ep.get("API-1")
    poll = per_ep.get("API-2")
    s = StepResult(
        offered_rps=offered,
        achieved_rps=n / seconds,
        seconds=float(seconds),
        token_p95_ms=tok.quantile(0.95) if tok else None,
        poll_p99_ms=poll.quantile(0.99) if poll else None,
        p95_first_ms=halves[0].quantile(0.95),
        p95_second_ms=halves[1].quantile(0.95),
        error_rate=bad / n if n else 1.0,
        dropped_iterations=dropped,
    )
    return judge_step(s, gates)


def step_resources(engine: Engine, run_id: str, t0: float, t1: float, instances: int) -> dict[str, float]:
    """Server samples during a step, as saturation figures: CPU per instance (%), DB pool use (share)."""
    t = store.server_samples
    with engine.connect() as c:
        rows = c.execute(select(t.c.kpi, t.c.value).where(t.c.run_id == run_id, t.c.ts >= t0, t.c.ts <= t1)).all()
    by: dict[str, list[float]] = {}
    for k, v in rows:
        by.setdefault(k, []).append(v)
    out: dict[str, float] = {}
    if by.get("cpu_percent"):
        out["cpu_percent_per_instance"] = statistics.median(by["cpu_percent"]) / instances
    if by.get("db_pool_in_use") and by.get("db_pool_size"):
        size = max(by["db_pool_size"])
        if size:
            out["db_pool_use"] = max(by["db_pool_in_use"]) / size
    if by.get("db_pool_waiting"):
        out["db_pool_waiting"] = max(by["db_pool_waiting"])
    if by.get("redis_memory_bytes"):
        out["redis_memory_bytes"] = max(by["redis_memory_bytes"])
    return out


def bottleneck(knee: StepResult | None, instance_cpu: float | None) -> str | None:
    """The first resource to saturate at the knee: the one nearest its limit (CPU against the instance's
    share or quota throttling, the DB pool against its size), with the figure that says so."""
    if knee is None:
        return None
    r = knee.resources
    cands: list[tuple[float, str]] = []
    if "cpu_percent_per_instance" in r:
        share = 100.0 * (instance_cpu or 1.0)
        cands.append(
            (r["cpu_percent_per_instance"] / share, f"CPU ({r['cpu_percent_per_instance']:.0f} % of {share:.0f} %)")
        )
    if "throttled_share" in r:
        cands.append((r["throttled_share"] * 2, f"CPU quota (throttled {r['throttled_share']:.0%} of the step)"))
    if "db_pool_use" in r:
        waiting = f", {r.get('db_pool_waiting', 0):.0f} waiting" if r.get("db_pool_waiting") else ""
        cands.append(
            (
                r["db_pool_use"] + (0.5 if r.get("db_pool_waiting") else 0),
                f"DB pool ({r['db_pool_use']:.0%} in use{waiting})",
            )
        )
    if not cands:
        return "not measured (no server samples)"
    return max(cands)[1]


# ---------------------------------------------------------------------------------------------- stairs
def run_stairs(
    engine: Engine,
    run_id: str,
    profile: Profile,
    endpoints: Any,
    instances: int,
    repeat: int,
    output_dir: Path,
    deadline: float,
    *,
    admin_token: str | None = None,
    quotas: list[Any] | None = None,
    instance_urls: list[str] | None = None,
    abort: threading.Event | None = None,
    start_rps: float | None = None,
) -> Stairs:
    """One climb at `instances`: steps until the first that fails, the budget's deadline, or an abort.
    With `instance_urls`, k6 sends each request to the next instance in turn (BASE_URLS), as a balancer.
    `start_rps`: a warm start (sizing.warm_start); its first step failing climbs again from the cold start."""
    from tasks.collect import start_sampler
    from tasks.load import LoadRequest, ScenarioStatus, run_scenario

    cfg = profile.sizing
    base_url = endpoints.base_url
    cold = cfg.start_rps * instances
    rates = stairs(max(cold, start_rps or cold), cfg.factor, cfg.max_steps)
    steps: list[StepResult] = []
    stopped = None

    def step(rate: float) -> StepResult:
        sid = store.start_scenario(engine, run_id, "capacity")
        throttled0 = sum(q.throttled_s() for q in quotas or [])
        cpu0 = [q.cpu_s() for q in quotas or []]
        sampler = start_sampler(profile, endpoints, engine, run_id, sid)
        script, env = _step_script(profile, rate)
        if instance_urls:
            env["BASE_URLS"] = ",".join(instance_urls)
        try:
            res = run_scenario(
                engine,
                run_id,
                LoadRequest(
                    "capacity",
                    base_url,
                    output_dir=output_dir,
                    scale=profile.scale,
                    time_scale=1.0,
                    env=env,
                    admin_token=admin_token,
                    deadline_s=cfg.hold_s + 60,
                    allowlist=profile.target.allowlist,
                    script=script,
                    progress=False,
                    scenario_run_id=sid,
                ),
                abort=abort,
            )
        finally:
            sampler.stop()
        s = step_from_store(engine, sid, rate, res.dropped_iterations, cfg.warmup_s)
        s.resources = step_resources(engine, run_id, res.started_at + cfg.warmup_s, res.finished_at, instances)
        if quotas:
            wall = max(1e-9, res.finished_at - res.started_at)
            held = sum(q.throttled_s() for q in quotas) - throttled0
            s.resources["throttled_share"] = held / (wall * len(quotas))
            # how evenly the instances worked (connections are handed to one worker each at accept time)
            cores = [(q.cpu_s() - c0) / wall for q, c0 in zip(quotas, cpu0, strict=True)]
            s.resources["cpu_cores_busiest_instance"] = max(cores)
            s.resources["cpu_cores_idlest_instance"] = min(cores)
        if res.status != ScenarioStatus.COMPLETED and s.passed:
            s.passed, s.why = False, [f"the step ended {res.status.value}: {res.reason or ''}".strip(": ")]
        store.finish_scenario(
            engine,
            sid,
            res.status.value,
            details={**res.details, "capacity": {"instances": instances, "repeat": repeat, "step": asdict(s)}},
        )
        steps.append(s)
        _logger().info(
            "capacity ×%d #%d: %s req/s offered, %.0f achieved: %s",
            instances,
            repeat,
            f"{rate:g}",
            s.achieved_rps,
            "passed" if s.passed else "; ".join(s.why),
        )
        return s

    def out_of_time() -> str | None:
        if time.time() + cfg.hold_s + 15 > deadline:
            return "the sizing budget ran out"
        if abort is not None and abort.is_set():
            return "aborted"
        return None

    time.sleep(cfg.settle_s)  # a restarted service: consumers joining their groups, caches filling

    def climb(offered: list[float]) -> tuple[StepResult | None, StepResult | None, str | None]:
        """Steps up `offered` until one fails: (the last pass, the first failure, why it stopped early)."""
        last: StepResult | None = None
        for rate in offered:
            why = out_of_time()
            if why:
                return last, None, why
            s = step(rate)
            if not s.passed:
                return last, s, None
            last = s
        return last, None, None

    best, knee, stopped = climb(rates)
    if best is None and knee is not None and knee.offered_rps > cold and not stopped:
        # the warm start was above this climb's knee: climb again from the cold start, below it
        best, lower, stopped = climb(stairs(cold, cfg.factor, cfg.max_steps, max_rps=knee.offered_rps / cfg.factor))
        knee = lower or knee
    # Between the last pass and the knee the stairs' factor leaves a gap; halve it `refine` times.
    for _ in range(cfg.refine if best is not None and knee is not None else 0):
        stopped = out_of_time()
        if stopped or best is None or knee is None:
            break
        s = step(round((best.offered_rps + knee.offered_rps) / 2, 1))
        best, knee = (s, knee) if s.passed else (best, s)
    return Stairs(
        instances,
        repeat,
        steps,
        best.achieved_rps if best else None,
        knee.offered_rps if knee else None,
        bottleneck(knee, profile.sizing.instance_cpu),
        stopped or (None if knee else "no step failed: the stairs ended below the knee"),
    )


# ---------------------------------------------------------------------------------------------- the stage
def set_instances(handle: Any, n: int, cpu: float | None, *, balanced: bool = True, fresh: bool = False) -> None:
    """Serve with `n` instances: local workers under a quota, or the auto-scaling group's desired capacity.
    Locally `balanced` gives each worker a port of its own, which the steps spread requests over (an ALB
    balances the auto-scaling group's instances by itself); `fresh` resets the data in the same restart (what
    `fresh_state` would do with a second one)."""
    if hasattr(handle, "set_instances"):
        handle.set_instances(n, cpu, balanced=balanced, reset_data=fresh)
    elif hasattr(handle, "set_capacity"):
        handle.set_capacity(n)
        handle.wait_healthy(n)
    else:
        raise ValueError("an external target has a fixed size: sizing needs the local stack or the AWS stack")


def _instances_of(handle: Any) -> dict[str, Any]:
    """What a climb needs of the running instances: their CPU quotas and their own URLs (local stack)."""
    return {"quotas": getattr(handle, "quotas", None), "instance_urls": getattr(handle, "instance_urls", None)}


def fresh_state(handle: Any) -> None:
    """Each climb from the same state: the local stack restarts its service with data reset (the queue's
    WAITING tokens of one climb would slow the next: positions are a COUNT over them). A team's own
    environment keeps its data; its repeats then include that drift, and their spread shows it."""
    if hasattr(handle, "set_instances"):
        handle.restart(reset_data=True)


def _step_script(profile: Profile, rate: float) -> tuple[Path, dict[str, str]]:
    """The k6 script and its environment for one step at `rate` req/s of the profile's mix."""
    cfg = profile.sizing
    if cfg.mix == "soak":  # the soak's own script, its rate and length set to the step's
        return SCENARIOS / "soak.js", {
            "SOAK_RATE": f"{rate / max(profile.scale, 1e-9):g}",  # the script multiplies by SCALE
            "SOAK_DURATION_S": f"{cfg.hold_s:g}",
        }
    return SCENARIOS / "capacity.js", {"RATE": f"{rate:g}", "HOLD_S": f"{cfg.hold_s:g}", "USER_COUNT": "10000"}


def _quota_note(handle: Any, cpu: float | None) -> tuple[float | None, str]:
    from infra.cpu_quota import _layout, available

    if not hasattr(handle, "set_instances"):
        return None, "AWS: an instance is one EC2 instance of the auto-scaling group"
    if cpu is None:
        return None, "no quota (sizing.instance_cpu unset): the curve is this machine's, not one instance's"
    ok, why = available()
    if not ok:
        return None, f"no quota ({why}): the curve is this machine's, not one instance's"
    layout = _layout()
    return (
        cpu,
        f"each instance one service worker under a cgroup {layout[0] if layout else ''} CPU quota of {cpu:g} core",
    )


def summarize_count(climbs: list[Stairs]) -> dict[str, Any]:
    got = [c.sustainable_rps for c in climbs if c.sustainable_rps is not None]
    med = statistics.median(got) if got else None
    knees = [c.knee_rps for c in climbs if c.knee_rps is not None]
    return {
        "no_pass": sum(1 for c in climbs if c.sustainable_rps is None),  # climbs whose first step failed
        "sustainable_rps": got,
        "median_rps": med,
        "spread": (max(got) - min(got)) / med if med and len(got) > 1 else None,
        "knee_rps": statistics.median(knees) if knees else None,
        "bottleneck": next((c.bottleneck for c in climbs if c.bottleneck), None),
        "stopped": [c.stopped for c in climbs if c.stopped],
    }


def size(
    profile: Profile,
    handle: Any,
    endpoints: Any,
    engine: Engine,
    run_id: str,
    output_dir: str | Path,
    *,
    abort: threading.Event | None = None,
) -> SizingResult:
    """The whole stage; bounded by `sizing.budget_s` of load. Leaves the environment at its own size."""
    cfg = profile.sizing
    out = Path(output_dir) / "capacity"
    cpu, note = _quota_note(handle, cfg.instance_cpu)
    result = SizingResult(scale=profile.scale, instance_cpu=cpu, quota=note)
    counts = sorted(set(cfg.instances))
    if cpu is not None and hasattr(handle, "set_instances"):
        fits = [n for n in counts if n * cpu <= LOCAL_CORE_BUDGET + 1e-9]
        if len(fits) < len(counts):
            result.why_not = (
                f"counts {', '.join(str(n) for n in counts if n not in fits)} × {cpu:g} core exceed the "
                f"{LOCAL_CORE_BUDGET:g} core this machine gives the service beside k6; not measured"
            )
        counts = fits
    original = getattr(handle, "workers", None)
    t0 = time.time()
    deadline = t0 + cfg.budget_s
    fitted: UslFit | None = None
    per_instance: list[float] = []  # each finished climb's sustainable load per instance (warm starts)
    try:
        for n in counts:
            set_instances(handle, n, cpu, fresh=True)  # the first climb's restart
            climbs = []
            for r in range(1, cfg.repeats + 1):
                if r > 1:
                    fresh_state(handle)  # a restart: new worker processes, quotas and ports
                warm = cfg.warm_start * statistics.median(per_instance) * n if cfg.warm_start and per_instance else None
                climb = run_stairs(
                    engine,
                    run_id,
                    profile,
                    endpoints,
                    n,
                    r,
                    out,
                    deadline,
                    abort=abort,
                    start_rps=warm,
                    **_instances_of(handle),
                )
                climbs.append(climb)
                if climb.sustainable_rps:
                    per_instance.append(climb.sustainable_rps / n)
            result.stairs += climbs
            result.per_count[n] = summarize_count(climbs)
        data = {n: v["sustainable_rps"] for n, v in result.per_count.items() if v["sustainable_rps"]}
        if len(data) < 2:
            result.why_not = result.why_not or (
                "fewer than two instance counts gave a sustainable load: no scalability fit, no recommendation"
            )
            return result
        fitted = fit_usl(data)
        result.fit = fitted.to_dict()
        peak = PEAK_RPS * profile.scale
        rec = recommend(fitted, peak, cfg.headroom)
        if rec.instances:
            line = cpu_line(
                [
                    (s.achieved_rps / c.instances, s.resources["cpu_percent_per_instance"])
                    for c in result.stairs
                    for s in c.steps
                    if s.passed and "cpu_percent_per_instance" in s.resources
                ]
            )
            share = 100.0 * (cpu or 1.0)
            rec = scale_out_point(
                rec,
                fitted,
                rec.instances,
                startup_s=cfg.startup_s,
                ramp_rps_per_s=cfg.ramp_rps_per_s or peak / 10.0,
                cpu_per_rps=line[1] * 100.0 / share if line else None,
                cpu_base=line[0] * 100.0 / share if line else 0.0,
            )
        result.recommendation = _rec_dict(rec)
        if rec.instances and cfg.verify:
            result.verification = verify_prediction(
                profile, handle, endpoints, engine, run_id, out, rec, fitted, cpu, deadline, abort=abort
            )
        return result
    finally:
        result.load_s = round(time.time() - t0, 1)
        changed = original is not None and (handle.workers != original or handle.instance_cpu or handle.balanced)
        if changed:  # the stages after this one see the environment as it was
            set_instances(handle, original, None, balanced=False)


def _rec_dict(rec: Recommendation) -> dict[str, Any]:
    d = asdict(rec)
    if d["predicted_interval"] is not None:
        d["predicted_interval"] = list(d["predicted_interval"])
    return d


def verify_prediction(
    profile: Profile,
    handle: Any,
    endpoints: Any,
    engine: Engine,
    run_id: str,
    out: Path,
    rec: Recommendation,
    fit: UslFit,
    cpu: float | None,
    deadline: float,
    *,
    abort: threading.Event | None = None,
) -> dict[str, Any]:
    """R-WHY-2's check: climb at the recommended count; the gates must hold at the plan's peak and the
    sustainable load must be within ±15 % of the fit's prediction."""
    n = rec.instances or 0
    predicted = fit.predict(n)
    if cpu is not None and hasattr(handle, "set_instances") and n * cpu > LOCAL_CORE_BUDGET + 1e-9:
        return {
            "instances": n,
            "predicted_rps": predicted,
            "verified": None,
            "why": f"{n} × {cpu:g} core exceed the {LOCAL_CORE_BUDGET:g} core this machine can give the service",
        }
    set_instances(handle, n, cpu, fresh=True)
    climb = run_stairs(engine, run_id, profile, endpoints, n, 0, out, deadline, abort=abort, **_instances_of(handle))
    measured = climb.sustainable_rps
    if measured is None:
        return {
            "instances": n,
            "predicted_rps": predicted,
            "verified": False,
            "why": "no step passed",
            "stairs": asdict(climb),
        }
    holds = prediction_holds(predicted, measured)
    at_peak = measured >= rec.peak_rps
    return {
        "instances": n,
        "predicted_rps": predicted,
        "measured_rps": measured,
        "error": measured / predicted - 1,
        "gates_hold_at_peak": at_peak,
        "verified": holds and at_peak,
        "why": (
            f"measured {measured:,.0f} req/s against {predicted:,.0f} predicted ({measured / predicted - 1:+.0%}; "
            f"±15 % {'holds' if holds else 'missed'}); the plan's gates "
            f"{'hold' if at_peak else 'do not hold'} at the peak of {rec.peak_rps:,.0f} req/s"
        ),
        "stopped": climb.stopped,
    }


# ---------------------------------------------------------------------------------------------- the verdict
SIZING_FILE = "sizing.json"


def write_sizing(run_dir: str | Path, result: SizingResult) -> Path:
    import json

    path = Path(run_dir) / SIZING_FILE
    path.write_text(json.dumps(result.to_dict(), indent=1, default=str))
    return path


def current_instances(profile: Profile) -> int:
    env = profile.environment
    return env.aws.desired_capacity if env.kind == "aws" else env.local.workers


def apply_sizing(verdict: Any, sizing: dict[str, Any], current: int) -> None:
    """verdict.sizing, a `scale_out` remediation with the numbers, and its trace step. An APPROVE becomes
    APPROVE_WITH_TUNING when the measured count differs from what the environment runs, or none suffices."""
    from soundcheck.models import Decision, Remediation, TraceStep
    from soundcheck.plan import REMEDIATIONS

    verdict.sizing = sizing
    rec = sizing.get("recommendation")
    if not rec:
        verdict.trace.append(
            TraceStep(subject="sizing", branch=verdict.verdict.value, why=sizing.get("why_not") or "no recommendation")
        )
        return
    n = rec.get("instances")
    ver = sizing.get("verification") or {}
    detail = "; ".join(
        x
        for x in (
            REMEDIATIONS["scale_out"],
            rec.get("scale_out_why") or "",
            f"verified: {ver['why']}" if ver.get("verified") else (f"not verified: {ver['why']}" if ver else ""),
        )
        if x
    )
    differs = n is None or n != current
    verdict.remediations.append(
        Remediation(code="scale_out", reason=f"{rec['why']} (the environment runs {current})", detail=detail)
    )
    if differs and verdict.verdict == Decision.APPROVE:
        verdict.verdict = Decision.APPROVE_WITH_TUNING
    verdict.trace.append(
        TraceStep(
            subject="sizing",
            branch=verdict.verdict.value,
            why=f"{rec['why']}; the environment runs {current}"
            + (" → scale_out" if differs else ": as measured, nothing to change"),
        )
    )


def fmt_sizing(sizing: dict[str, Any]) -> str:
    """One line for Slack and the Prefect artifact."""
    per = sizing.get("per_count") or {}
    loads = ", ".join(f"{k}× {v['median_rps']:,.0f}" for k, v in per.items() if v.get("median_rps") is not None)
    rec = sizing.get("recommendation") or {}
    n = rec.get("instances")
    head = f"sizing: sustainable req/s {loads or 'none'}"
    if not rec:
        return f"{head}; {sizing.get('why_not') or 'no recommendation'}"
    ver = sizing.get("verification") or {}
    verified = {True: ", verified", False: ", prediction missed"}.get(ver.get("verified"), "")
    return (
        f"{head}; peak {rec['peak_rps']:,.0f} req/s → "
        + (f"{n} instance{'s' if n != 1 else ''}{verified}" if n else "no count suffices")
        + (f"; scale out at {rec['scale_out_at_rps']:,.0f} req/s" if rec.get("scale_out_at_rps") else "")
        + (f" ({rec['scale_out_cpu_percent']:.0f} % CPU)" if rec.get("scale_out_cpu_percent") else "")
    )


# ---------------------------------------------------------------------------------------------- Prefect
@task(name="capacity", cache_policy=NO_CACHE)
def capacity_stage(profile: Profile, run: Any, env: Any) -> dict[str, Any]:
    """The capacity stage as a Prefect task, no retries: a re-run would repeat minutes of load. Its result
    goes to the run folder (sizing.json), where the verdict stage reads it."""
    from tasks.runs import record

    engine = store.open_store(run.store_url)
    try:
        result = size(profile, env.handle, env.endpoints, engine, run.run_id, run.run_dir)
    finally:
        engine.dispose()
    write_sizing(run.run_dir, result)
    record(run, "sizing", "measured" if result.recommendation else "inconclusive", fmt_sizing(result.to_dict()))
    return result.to_dict()
