"""The capacity stage (tasks.capacity): a step judged from its stored seconds, the verdict's sizing, warm starts,
the soak's mix, balanced instances, and a real climb against the reference service."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import insert

import tasks.capacity as cap
from infra.cpu_quota import available
from soundcheck import store
from soundcheck.models import Decision
from soundcheck.profile import parse_profile
from soundcheck.sketch import Histogram
from tasks.capacity import apply_sizing, fmt_sizing, size, step_from_store
from tasks.decide import judge
from tests.verdict_data import build_run, new_store


def _second(sid: int, sec: int, ep: str, latencies: list[float], s5xx: int = 0) -> dict:
    h = Histogram()
    h.add_values(np.asarray(latencies))
    n = len(latencies)
    return {
        "scenario_run_id": sid,
        "second": sec,
        "endpoint": ep,
        "count": n,
        "s2xx": n - s5xx,
        "s5xx": s5xx,
        "failed": 0,
        "sketch": h.to_bytes(),
    }


def test_a_step_is_judged_on_its_steady_window(tmp_path):
    e = new_store(tmp_path)
    store.start_run(e, "r", "p", scale=1, time_scale=1, scenarios=["capacity"], target=None)
    sid = store.start_scenario(e, "r", "capacity")
    rows = []
    for sec in range(100, 121):
        slow = sec < 103  # the warm-up: cold connections, left out
        rows.append(_second(sid, sec, "API-1", [900.0 if slow else 40.0] * 23))
        rows.append(_second(sid, sec, "API-2", [20.0] * 77))
    with e.begin() as c:
        c.execute(insert(store.second_aggregates), rows)
    s = step_from_store(e, sid, offered=100.0, dropped=0, warmup_s=3)
    assert s.passed, s.why
    assert s.achieved_rps == pytest.approx(100.0) and s.seconds == 17  # 103…119; the last second is partial
    assert s.token_p95_ms == pytest.approx(40.0, rel=0.03) and s.poll_p99_ms == pytest.approx(20.0, rel=0.03)
    failing = step_from_store(e, sid, offered=100.0, dropped=0, warmup_s=0)  # the warm-up counted
    assert not failing.passed and failing.why[0].startswith("token p95")
    assert step_from_store(e, sid, offered=150.0, dropped=7, warmup_s=3).why == [
        "7 iterations dropped (the generator could not offer the load)",
        "achieved 100 of 150 req/s offered",
    ]


SIZING = {
    "per_count": {"1": {"median_rps": 88.0}, "2": {"median_rps": 178.0}},
    "recommendation": {
        "instances": 2,
        "peak_rps": 86.7,
        "why": "2 instances carry 178 req/s by the fit; the peak needs 87 req/s with 30% headroom (124 req/s)",
        "scale_out_at_rps": 150.0,
        "scale_out_cpu_percent": 71.0,
        "scale_out_why": "start a new instance at 150 req/s",
    },
    "verification": {"verified": True, "why": "measured 176 req/s against 178 predicted"},
}


def test_a_measured_count_other_than_the_environments_holds_approval_with_the_numbers(tmp_path):
    e = new_store(tmp_path)
    build_run(e, "r1", ("points",))
    verdict, _ = judge(e, "r1", parse_profile({"name": "test", "scenarios": ["points"]}))
    assert verdict.verdict == Decision.APPROVE
    apply_sizing(verdict, SIZING, current=1)
    assert verdict.verdict == Decision.APPROVE_WITH_TUNING and verdict.sizing == SIZING
    r = verdict.remediations[-1]
    assert r.code == "scale_out" and "(the environment runs 1)" in r.reason
    assert "start a new instance at 150 req/s" in r.detail and "verified: measured 176" in r.detail
    assert verdict.trace[-1].subject == "sizing" and verdict.trace[-1].why.endswith("→ scale_out")
    assert verdict.to_json_dict()["sizing"]["recommendation"]["instances"] == 2
    same, _ = judge(e, "r1", parse_profile({"name": "test", "scenarios": ["points"]}))
    apply_sizing(same, SIZING, current=2)
    assert same.verdict == Decision.APPROVE and "nothing to change" in same.trace[-1].why
    assert fmt_sizing(SIZING) == (
        "sizing: sustainable req/s 1× 88, 2× 178; peak 87 req/s → 2 instances, verified; "
        "scale out at 150 req/s (71 % CPU)"
    )


@pytest.mark.skipif(not available()[0], reason=available()[1])
@pytest.mark.slow
def test_a_real_climb_finds_one_instances_knee_and_says_two_counts_are_needed(tmp_path):
    """One worker under a quarter of a core: the stairs pass, then a step fails the plan's gates; the
    bottleneck is named; one count gives no fit, and the stage says so rather than guessing."""
    from tasks.provision import provision

    prof = parse_profile(
        {
            "name": "size-test",
            "scale": 0.02,
            "environment": {"local": {"seed_users": 12000}},
            "sizing": {
                "instances": [1],
                "repeats": 1,
                "instance_cpu": 0.25,
                "hold_s": 8,
                "warmup_s": 2,
                "start_rps": 40,
                "factor": 2.0,
                "max_steps": 4,
                "refine": 1,
                "settle_s": 2,
                "budget_s": 200,
            },
        }
    )
    e = new_store(tmp_path)
    store.start_run(e, "sz", "size-test", scale=0.02, time_scale=1, scenarios=["capacity"], target=None)
    p = provision(prof, tmp_path / "run")
    try:
        result = size(prof, p.handle, p.endpoints, e, "sz", tmp_path / "run")
        assert p.handle.workers == 1 and p.handle.quotas == []  # left at its own size, without quotas
        assert not p.handle.balanced and p.handle.instance_urls == []  # and one port again
    finally:
        p.handle.stop()
    (climb,) = result.stairs
    assert [s.offered_rps for s in climb.steps][:2] == [40.0, 80.0] and climb.steps[0].passed
    knee = min((s for s in climb.steps if not s.passed), key=lambda s: s.offered_rps)
    last = max((s for s in climb.steps if s.passed and s.offered_rps < knee.offered_rps), key=lambda s: s.offered_rps)
    assert climb.knee_rps == knee.offered_rps and climb.sustainable_rps == last.achieved_rps
    refined = [s.offered_rps for s in climb.steps if s.offered_rps not in (40.0, 80.0, 160.0, 320.0)]
    assert len(refined) == 1  # one halving of the gap between the last pass and the first failure
    assert climb.bottleneck and ("CPU" in climb.bottleneck or "DB pool" in climb.bottleneck)
    assert result.fit is None and "fewer than two instance counts" in (result.why_not or "")
    assert "cgroup" in result.quota
    with e.connect() as c:
        n = c.execute(store.scenario_runs.select().where(store.scenario_runs.c.scenario == "capacity")).fetchall()
    assert len(n) == len(climb.steps)  # every step kept in the store


@pytest.mark.slow
def test_balanced_instances_each_serve_on_a_port_of_their_own(tmp_path):
    """Sizing's local instances are balanced per request, as an ALB would: each worker listens on a port of
    its own too (the shared port hands a keep-alive connection to one worker for good)."""
    import httpx
    import psutil

    from tasks.provision import provision

    p = provision(parse_profile({"name": "balanced", "scale": 0.02}), tmp_path / "run")
    try:
        p.handle.set_instances(2, None)
        urls = p.handle.instance_urls
        assert len(set(urls)) == 2 and all(u.startswith("http://127.0.0.1:") for u in urls)
        leader = psutil.Process(p.handle.procs.children["sut"].popen.pid)
        workers = {c.pid for c in leader.children(recursive=True)}
        owners = {int(f.stem) for f in (p.handle.dir / "instances").glob("*.port")}
        assert len(owners) == 2 and owners <= workers  # one port per worker process
        for u in urls:
            assert httpx.get(f"{u}/health", timeout=10).json()["status"] == "ok"
        p.handle.restart()  # new workers, new ports
        assert len(p.handle.instance_urls) == 2 and set(p.handle.instance_urls) != set(urls)
        p.handle.set_instances(1, None, balanced=False)
        assert p.handle.instance_urls == [] and not (p.handle.dir / "instances").exists()
    finally:
        p.handle.stop()


def test_the_soak_mix_runs_the_soaks_own_script_at_the_steps_rate():
    from tasks.capacity import _step_script

    spike = parse_profile({"name": "s", "scale": 0.02, "sizing": {"hold_s": 12}})
    script, env = _step_script(spike, 90.0)
    assert script.name == "capacity.js" and env["RATE"] == "90" and env["HOLD_S"] == "12"
    soak = parse_profile({"name": "s", "scale": 0.02, "sizing": {"hold_s": 12, "mix": "soak"}})
    script, env = _step_script(soak, 90.0)
    assert script.name == "soak.js" and float(env["SOAK_RATE"]) * 0.02 == pytest.approx(90.0)
    assert env["SOAK_DURATION_S"] == "12"


class _Simulated:
    """A service whose steps pass below `knee_per_instance × instances` req/s: the climbs' logic alone, with the
    store real and no load sent (k6 and the samplers replaced)."""

    def __init__(self, monkeypatch, knees: list[float]) -> None:
        import tasks.capacity as cap
        import tasks.collect
        import tasks.load
        from soundcheck.sizing import StepResult
        from tasks.load import ScenarioResult, ScenarioStatus

        self.knees = list(knees)  # per climb: its knee per instance
        self.offered: list[list[float]] = []
        self.starts: list[float | None] = []
        sim = self

        def run_scenario(engine, run_id, req, abort=None):
            t = time.time()
            sim.last_rate = float(req.env["RATE"])
            return ScenarioResult(req.scenario_run_id, "capacity", ScenarioStatus.COMPLETED, None, 0, 0, 0.1, t, t, "")

        def step_from_store(engine, sid, rate, dropped, warmup_s):
            sim.offered[-1].append(rate)
            ok = rate < sim.knee
            achieved = rate if ok else rate * 0.8
            return StepResult(rate, achieved, 8, 5, 5, 5, 5, 0, 0, passed=ok, why=[] if ok else ["p95"])

        real_run_stairs = cap.run_stairs

        def run_stairs(*a, start_rps=None, **kw):
            n = a[4]
            sim.knee = sim.knees.pop(0) * n
            sim.offered.append([])
            sim.starts.append(start_rps)
            return real_run_stairs(*a, start_rps=start_rps, **kw)

        monkeypatch.setattr(tasks.load, "run_scenario", run_scenario)
        monkeypatch.setattr(cap, "step_from_store", step_from_store)
        monkeypatch.setattr(cap, "step_resources", lambda *a, **k: {})
        monkeypatch.setattr(cap, "_step_script", lambda profile, rate: (Path("capacity.js"), {"RATE": str(rate)}))
        monkeypatch.setattr(tasks.collect, "start_sampler", lambda *a, **k: type("S", (), {"stop": lambda s: None})())
        monkeypatch.setattr(cap, "run_stairs", run_stairs)
        monkeypatch.setattr(cap, "set_instances", lambda *a, **k: None)
        monkeypatch.setattr(cap, "fresh_state", lambda handle: None)
        monkeypatch.setattr(cap, "_instances_of", lambda handle: {})
        monkeypatch.setattr(cap, "_quota_note", lambda handle, cpu: (None, "no quota"))


_real_set_instances, _real_fresh_state = cap.set_instances, cap.fresh_state


def _sizing_profile(**sizing):
    base = {"instances": [1, 2], "repeats": 2, "start_rps": 20, "factor": 1.3, "max_steps": 14, "refine": 2}
    base.update(settle_s=0, hold_s=8, warmup_s=2, budget_s=10_000, verify=False, instance_cpu=None, **sizing)
    return parse_profile({"name": "warm", "scale": 0.02, "sizing": base})


def test_later_climbs_start_near_the_load_already_measured(tmp_path, monkeypatch):
    sim = _Simulated(monkeypatch, [150, 150, 150, 150])
    e = new_store(tmp_path)
    store.start_run(e, "w", "warm", scale=0.02, time_scale=1, scenarios=["capacity"], target=None)
    handle = type("H", (), {"workers": 1, "instance_cpu": None, "balanced": False})()
    result = size(_sizing_profile(), handle, type("E", (), {"base_url": "http://127.0.0.1:9"})(), e, "w", tmp_path)
    assert sim.starts[0] is None and sim.offered[0][0] == 20.0  # the first climb starts cold
    first = result.stairs[0].sustainable_rps
    assert sim.starts[1] == pytest.approx(0.6 * first)  # then at 60 % of what one instance sustained
    one = [c.sustainable_rps for c in result.stairs[:2]]
    assert sim.starts[2] == pytest.approx(0.6 * float(np.median(one)) * 2)  # two instances: twice the median
    assert all(len(o) < len(sim.offered[0]) for o in sim.offered[1:])  # fewer steps below the knee
    for c in result.stairs:  # and the same answer: within the refined gap of the knee
        assert 150 * c.instances / 1.3 <= c.sustainable_rps <= 150 * c.instances


def test_a_warm_start_above_the_knee_climbs_again_from_the_cold_start(tmp_path, monkeypatch):
    _Simulated(monkeypatch, [150, 60])  # the second climb's service is far slower
    e = new_store(tmp_path)
    store.start_run(e, "w", "warm", scale=0.02, time_scale=1, scenarios=["capacity"], target=None)
    handle = type("H", (), {"workers": 1, "instance_cpu": None, "balanced": False})()
    prof = _sizing_profile(instances=[1])
    result = size(prof, handle, type("E", (), {"base_url": "http://127.0.0.1:9"})(), e, "w", tmp_path)
    second = result.stairs[1]
    assert not second.steps[0].passed and second.steps[1].offered_rps == 20.0  # failed warm, then cold
    assert 60 / 1.3 <= second.sustainable_rps < 60 and second.knee_rps <= 60 * 1.3


def test_every_climb_starts_from_one_restart_with_fresh_data(tmp_path, monkeypatch):
    """A new instance count and its first climb share one restart; each later climb has its own. No climb
    starts on a service whose data another climb left (the WAITING tokens would slow it)."""
    sim = _Simulated(monkeypatch, [150, 150, 150, 150])
    monkeypatch.setattr(cap, "set_instances", _real_set_instances)
    monkeypatch.setattr(cap, "fresh_state", _real_fresh_state)
    events: list[str] = []

    class Handle:
        workers, instance_cpu, balanced = 1, None, False

        def set_instances(self, n, cpu=None, *, balanced=True, reset_data=False):
            self.workers = n
            events.append(f"restart {n} {'fresh' if reset_data else 'kept'}")

        def restart(self, *, reset_data=False):
            events.append(f"restart {self.workers} {'fresh' if reset_data else 'kept'}")

    real = cap.run_stairs

    def climb(*a, **kw):
        events.append(f"climb {a[4]}")
        return real(*a, **kw)

    monkeypatch.setattr(cap, "run_stairs", climb)
    e = new_store(tmp_path)
    store.start_run(e, "f", "fresh", scale=0.02, time_scale=1, scenarios=["capacity"], target=None)
    size(_sizing_profile(), Handle(), type("E", (), {"base_url": "http://127.0.0.1:9"})(), e, "f", tmp_path)
    climbs = [i for i, ev in enumerate(events) if ev.startswith("climb")]
    assert len(climbs) == 4 and sim.offered
    for i in climbs:
        assert events[i - 1] == f"restart {events[i].split()[1]} fresh", events
    assert events[-1] == "restart 1 kept"  # left at its own size afterwards
    assert sum(ev.startswith("restart") for ev in events) == 5  # 4 climbs + the way back, not 4 + 2 + 1
