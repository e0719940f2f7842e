"""One stage split across load generators (issue 14): k6 execution segments, a common start, merged results.

Real k6 throughout; the stage tests run the reference service and a PostgreSQL result store (skipped when
PostgreSQL is not reachable on loopback)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from sqlalchemy import func, select

import tasks.segments as tasks_segments
from soundcheck import k6synth, store
from soundcheck.models import ScenarioStatus
from soundcheck.paths import venv_bin
from soundcheck.plan import SETUP_TAG
from tasks.ingest import ingest_file
from tasks.kpis import compute_kpis
from tasks.load import LoadRequest
from tasks.segments import LocalDispatch, SegmentSpec, run_segmented
from tests.sut_harness import ADMIN, postgres_url, run_sut

K6 = venv_bin("k6")
needs_k6 = pytest.mark.skipif(K6 is None, reason="k6 binary not installed")
ADMIN_TOKEN = ADMIN["X-Admin-Token"]


def test_percentiles_of_two_generators_merge_within_the_sketch_accuracy(tmp_path: Path) -> None:
    """The same requests ingested as one k6 output and as two halves (two generators) give the same counts
    exactly and the same p95/p99 per endpoint within the sketch's 1 % relative accuracy."""
    syn = k6synth.requests_for(400, 20, 1_800_000_000, seed=7)
    whole = tmp_path / "whole.csv"
    with open(whole, "w") as fh:
        k6synth.write(fh, syn)
    halves = []
    for part in (0, 1):
        m = (syn.ts_ms * 7 + syn.duration_ms.astype(int)) % 2 == part  # an uneven, interleaved split
        sub = k6synth.Synthetic(syn.ts_ms[m], syn.endpoint[m], syn.status[m], syn.duration_ms[m], syn.endpoints)
        path = tmp_path / f"half{part}.csv"
        with open(path, "w") as fh:
            k6synth.write(fh, sub)
        halves.append(path)
    engine = store.open_store(f"sqlite:///{tmp_path / 's.db'}")
    store.start_run(engine, "r", "t", scale=1, time_scale=1, scenarios=["soak"], target=None)
    one = store.start_scenario(engine, "r", "soak")
    two = store.start_scenario(engine, "r", "soak")
    ingest_file(engine, one, "soak", whole)
    for h in halves:
        ingest_file(engine, two, "soak", h)
    a = {(k.name, k.phase): k.value for k in compute_kpis(engine, one)}
    b = {(k.name, k.phase): k.value for k in compute_kpis(engine, two)}
    for ep in ("API-2", "API-5", "API-3"):
        for q in ("p95_ms", "p99_ms"):
            assert b[(f"{q}.{ep}", None)] == pytest.approx(a[(f"{q}.{ep}", None)], rel=0.02), (q, ep)
    with engine.connect() as c:
        counts = [
            Counter(
                {
                    r.endpoint: r.count
                    for r in c.execute(
                        select(store.second_aggregates).where(store.second_aggregates.c.scenario_run_id == s)
                    )
                }
            )
            for s in (one, two)
        ]
    total = [
        sum(
            r.count
            for r in c.execute(select(store.second_aggregates).where(store.second_aggregates.c.scenario_run_id == s))
        )
        for s in (one, two)
        for c in [engine.connect()]
    ]
    assert total[0] == total[1] == len(syn.ts_ms)
    assert counts[0].keys() == counts[1].keys()


def test_sqlite_is_refused_for_several_generators(tmp_path: Path) -> None:
    engine = store.open_store(f"sqlite:///{tmp_path / 's.db'}")
    with pytest.raises(ValueError, match="needs a server database as the result store"):
        run_segmented(engine, "r", LoadRequest("race", "http://127.0.0.1:9", output_dir=tmp_path), 2)


# -- stages against the reference service, PostgreSQL result store ---------------------------------------------


@pytest.fixture(scope="module")
def pg_engine():
    url = postgres_url("segments")
    if url is None:
        pytest.skip("no PostgreSQL reachable on 127.0.0.1:5432")
    e = store.open_store(url)
    store.start_run(e, "run-seg", "test", scale=0.01, time_scale=0.01, scenarios=[], target=None)
    yield e
    e.dispose()


@pytest.fixture(scope="module")
def sut(tmp_path_factory):
    with run_sut(tmp_path_factory.mktemp("sut"), seed_users=2500, seed_seats=1000, outbox_interval_seconds=0.2) as s:
        yield s


def _k6_left() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "k6"]


def _req(sut, scenario: str, tmp_path: Path, **env: str) -> LoadRequest:
    return LoadRequest(
        scenario, sut.base, output_dir=tmp_path, env=env, admin_token=ADMIN_TOKEN, progress=False, scale=0.02
    )


@needs_k6
@pytest.mark.slow
def test_race_on_two_generators_gives_the_single_process_answers(pg_engine, sut, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tasks.load")
    fed: Counter[int] = Counter()

    def on_second(_scenario: str, second: int, rows) -> None:  # what the abort watcher sees, merged
        fed[second] += sum(r["count"] for r in rows)

    r = run_segmented(
        pg_engine,
        "run-seg",
        _req(sut, "race", tmp_path, TC_GAP_MS="3500", TC3_ROUND_GAP_MS="2500", RELEASE_DELAY_MS="2000"),
        2,
        pickup_timeout_s=60,
        on_second=on_second,
    )
    assert r.status == ScenarioStatus.COMPLETED, r.reason
    assert sum(fed.values()) >= 300  # both generators' reservations reached the live hook
    assert not _k6_left()
    assert [s["state"] for s in r.details["segments"]] == ["DONE", "DONE"]
    with pg_engine.connect() as c:
        reqs = c.execute(select(store.requests).where(store.requests.c.scenario_run_id == r.scenario_run_id)).all()
    by = Counter((q.name, q.status) for q in reqs if q.endpoint == "API-3")
    assert by[("tc1", 200)] == 1 and by[("tc1", 409)] == 99  # one seat, 100 users over two generators
    assert by[("tc2", 200)] == 100 and by[("tc3", 200)] == 100
    k = {(x.name, x.phase): x.value for x in compute_kpis(pg_engine, r.scenario_run_id)}
    assert k[("rate_5xx", None)] == 0
    # TC-1's release spread over both generators' send instants (one clock here; NTP between machines)
    assert 0 <= k[("tc1_release_spread_ms", None)] < 250
    assert r.details["resume_spread_ms"] < 1000
    # the progress line counts every generator's requests (the single runner's line, from the merged seconds)
    sa = store.second_aggregates
    with pg_engine.connect() as c:
        stored = c.execute(
            select(func.sum(sa.c.count)).where(sa.c.scenario_run_id == r.scenario_run_id, sa.c.endpoint != SETUP_TAG)
        ).scalar()
    lines = [m for m in caplog.messages if m.startswith("race: ") and "requests" in m]
    assert lines, caplog.messages
    assert f"total {stored} requests" in lines[-1], lines[-1]


@needs_k6
@pytest.mark.slow
def test_a_generator_that_dies_makes_the_stage_inconclusive_and_names_it(pg_engine, sut, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_second_generator() -> None:  # once both run, kill the second's k6 as an OOM killer would
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not killed:
            with pg_engine.connect() as c:
                states = [r.state for r in c.execute(select(store.load_segments).order_by(store.load_segments.c.id))]
            if states[-2:] == ["RUNNING", "RUNNING"]:
                time.sleep(2)
                for p in _k6_left():
                    if "1/2:1" in " ".join(p.cmdline()):
                        p.kill()
                        killed.append(p.pid)
                        return
            time.sleep(0.2)

    t = threading.Thread(target=kill_second_generator, daemon=True)
    t.start()
    r = run_segmented(pg_engine, "run-seg", _req(sut, "spike", tmp_path), 2, pickup_timeout_s=60)
    t.join(5)
    assert killed
    assert r.status == ScenarioStatus.K6_CRASHED
    assert "generator 2/2" in (r.reason or "") and "died during the run" in (r.reason or ""), r.reason
    assert not _k6_left()


class _NoWorker(LocalDispatch):
    """A work pool whose workers never pick anything up."""

    def start(self, specs: list[SegmentSpec], store_url: str) -> None:  # type: ignore[override]
        return None


@pytest.mark.slow
def test_a_generator_never_picked_up_fails_the_stage_before_any_load(pg_engine, sut, tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = run_segmented(pg_engine, "run-seg", _req(sut, "race", tmp_path), 2, dispatch=_NoWorker(), pickup_timeout_s=2)
    assert r.status == ScenarioStatus.INVALID
    assert "generator(s) 1/2, 2/2 not ready within 2 s" in (r.reason or "") and "no load was sent" in r.reason
    assert time.monotonic() - t0 < 60
    with pg_engine.connect() as c:
        n = c.execute(
            select(store.second_aggregates).where(store.second_aggregates.c.scenario_run_id == r.scenario_run_id)
        ).all()
    assert n == []


@needs_k6
@pytest.mark.slow
def test_a_generator_gone_before_the_start_is_named_and_nothing_is_sent(
    pg_engine, sut, tmp_path: Path, monkeypatch
) -> None:
    """Between READY and the common start the coordinator calls each k6's REST API; a generator whose machine
    went away then (here: its setup call refused) fails the stage with its name, not the coordinator."""
    real_post = tasks_segments.httpx.post

    def post(url: str, *a, **kw):
        if url.endswith("/v1/setup"):
            raise tasks_segments.httpx.ConnectError("[Errno 111] Connection refused")
        return real_post(url, *a, **kw)

    monkeypatch.setattr(tasks_segments.httpx, "post", post)
    r = run_segmented(pg_engine, "run-seg", _req(sut, "race", tmp_path), 2, pickup_timeout_s=60)
    assert r.status == ScenarioStatus.K6_CRASHED
    assert "generator 1/2" in (r.reason or "") and "did not answer its setup call" in r.reason, r.reason
    assert "no load was sent" in r.reason
    deadline = time.monotonic() + 30
    while _k6_left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _k6_left()


@needs_k6
@pytest.mark.slow
def test_an_abort_stops_every_generator(pg_engine, sut, tmp_path: Path) -> None:
    abort = threading.Event()
    abort.reason = "harm: test"  # type: ignore[attr-defined]
    threading.Timer(8.0, abort.set).start()
    t0 = time.monotonic()
    r = run_segmented(pg_engine, "run-seg", _req(sut, "spike", tmp_path), 2, pickup_timeout_s=60, abort=abort)
    assert r.status == ScenarioStatus.ABORTED and r.reason == "harm: test"
    assert time.monotonic() - t0 < 90  # the spike's plan is 30 minutes long
    assert [s["state"] for s in r.details["segments"]] == ["DONE", "DONE"]
    assert not _k6_left()


def test_a_profile_with_generators_needs_a_server_store() -> None:
    from soundcheck.profile import ProfileError, parse_profile

    with pytest.raises(ProfileError, match="'k6.generators' above 1 needs a server database as 'store_url'"):
        parse_profile({"name": "t", "k6": {"generators": 2}})
    p = parse_profile({"name": "t", "k6": {"generators": 2}, "store_url": "postgresql+psycopg://u@db/results"})
    assert p.k6.generators == 2 and p.k6.work_pool is None


@needs_k6
@pytest.mark.slow
def test_the_campaign_runs_its_race_on_two_generators(prefect_harness, tmp_path: Path) -> None:
    """profile → local stack → the race split in two → ingest into PostgreSQL → checks → verdict."""
    import json

    import yaml

    from soundcheck.cli import run_campaign
    from soundcheck.paths import ROOT

    url = postgres_url("campaign_gen")
    if url is None:
        pytest.skip("no PostgreSQL reachable on 127.0.0.1:5432")
    data = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    data.update(store_url=url, output_dir=str(tmp_path / "runs"), slack={"enabled": False})
    data["k6"] = {**(data.get("k6") or {}), "generators": 2}
    data["environment"]["local"]["seed_users"] = 700
    prof = tmp_path / "profile.yaml"
    prof.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    code = run_campaign(profile=prof, scenarios=["race"], scale=0.02, time_scale=0.03, output=out, notify=False)
    verdict = json.loads((out / "verdict.json").read_text())
    failed = [f"{c['id']}: {c['observed']}" for c in verdict["checks"] if not c["passed"]]
    assert verdict["verdict"] == "APPROVE" and code == 0, failed
    assert {c["id"] for c in verdict["checks"]} >= {"R-RACE-1", "R-RACE-2", "R-RACE-3"}
    e = store.open_store(url)
    with e.connect() as c:
        segs = c.execute(select(store.load_segments)).all()
        details = c.execute(select(store.scenario_runs.c.details)).scalar()
    e.dispose()
    assert sorted((s.segment, s.state) for s in segs) == [(0, "DONE"), (1, "DONE")]
    assert details["generators"] == 2
    assert not _k6_left()


def test_a_generator_picked_up_after_the_stage_ended_sends_nothing(pg_engine, tmp_path: Path) -> None:
    sid = store.start_scenario(pg_engine, "run-seg", "race")
    store.finish_scenario(pg_engine, sid, "INVALID", reason="generator(s) 2/2 not ready within 2 s")
    spec = SegmentSpec(
        "run-seg", sid, "race", "scenarios/race.js", {"BASE_URL": "http://127.0.0.1:9"}, 1, 2, str(tmp_path)
    )
    out = tasks_segments.run_segment(spec, pg_engine.url.render_as_string(hide_password=False))
    assert out["state"] == "SKIPPED" and "already ended (INVALID)" in out["reason"]
    with pg_engine.connect() as c:
        assert c.execute(select(store.load_segments).where(store.load_segments.c.scenario_run_id == sid)).all() == []
    assert not _k6_left()


def test_run_with_generators_on_a_sqlite_store_exits_2_with_one_sentence(capsys) -> None:
    from soundcheck.cli import run_campaign

    assert run_campaign(scenarios=["race"], generators=2, notify=False) == 2
    err = capsys.readouterr().err
    assert "'k6.generators' above 1 needs a server database as 'store_url'" in err
