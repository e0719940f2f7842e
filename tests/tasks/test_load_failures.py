"""How a load stage ends when things go wrong: every case leaves the rows already ingested, a clear
status and reason on the scenario run, and no k6 process behind."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import func, select

import tasks.load as load
from infra.sut.redis_server import free_port
from soundcheck import store
from soundcheck.models import ScenarioStatus
from soundcheck.paths import venv_bin
from tasks.load import LoadRequest
from tests.sut_harness import ADMIN, run_sut

pytestmark = [pytest.mark.slow, pytest.mark.skipif(venv_bin("k6") is None, reason="k6 binary not installed")]
RUN = "run-fail"


@pytest.fixture(scope="module")
def sut(tmp_path_factory):
    with run_sut(tmp_path_factory.mktemp("sut"), seed_users=2000, seed_seats=1000) as s:
        yield s


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = store.open_store(f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.db'}")
    store.start_run(e, RUN, "test", scale=0.01, time_scale=0.01, scenarios=[], target=None)
    return e


def _k6_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "k6"]


def _aggregates(engine, sid: int) -> int:
    with engine.connect() as c:
        return c.execute(
            select(func.count())
            .select_from(store.second_aggregates)
            .where(store.second_aggregates.c.scenario_run_id == sid)
        ).scalar_one()


def _run_in_thread(engine, base: str, tmp_path: Path, **kw):
    """Start a long soak (20 users, ~60 s) in a thread; returns (scenario run id, thread, result box)."""
    sid = store.start_scenario(engine, RUN, "soak")
    box: dict = {}
    abort = kw.pop("abort", None)

    def target() -> None:
        req = LoadRequest(
            "soak",
            base,
            output_dir=tmp_path,
            scale=0.02,
            time_scale=0.033,
            progress=False,
            admin_token=ADMIN["X-Admin-Token"],
            scenario_run_id=sid,
            stop_grace_s=5,
            **kw,
        )
        box["result"] = load.run_scenario(engine, RUN, req, abort=abort)

    th = threading.Thread(target=target, daemon=True)
    th.start()
    deadline = time.monotonic() + 40
    while _aggregates(engine, sid) < 2:
        assert time.monotonic() < deadline, "no rows ingested while k6 ran"
        assert th.is_alive(), box
        time.sleep(0.2)
    return sid, th, box


def _finished(engine, sid: int):
    with engine.connect() as c:
        return c.execute(select(store.scenario_runs).where(store.scenario_runs.c.id == sid)).one()


def test_target_down_before_start(engine, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    r = load.run_scenario(engine, RUN, LoadRequest("race", base, output_dir=tmp_path, progress=False))
    assert r.status == ScenarioStatus.TARGET_DOWN
    assert "down before the start" in r.reason and base in r.reason
    assert r.k6_exit_code is None and not Path(r.csv_path).exists()
    assert _finished(engine, r.scenario_run_id).status == "TARGET_DOWN"


def test_k6_missing(engine, sut, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(load, "venv_bin", lambda name: None)
    r = load.run_scenario(engine, RUN, LoadRequest("race", sut.base, output_dir=tmp_path, progress=False))
    assert r.status == ScenarioStatus.K6_MISSING and "k6" in r.reason


def test_k6_crash_mid_run_keeps_rows(engine, sut, tmp_path: Path) -> None:
    sid, th, box = _run_in_thread(engine, sut.base, tmp_path)
    before = _aggregates(engine, sid)
    (k6,) = _k6_children()
    k6.send_signal(signal.SIGKILL)
    th.join(60)
    r = box["result"]
    assert r.status == ScenarioStatus.K6_CRASHED
    assert "signal 9" in r.reason and r.k6_exit_code == -9
    assert _aggregates(engine, sid) >= before > 0
    row = _finished(engine, sid)
    assert row.status == "K6_CRASHED" and row.finished_at is not None and row.reason == r.reason
    assert not _k6_children()


def test_abort_event_stops_k6_gracefully(engine, sut, tmp_path: Path) -> None:
    abort = load.abort_event()
    sid, th, box = _run_in_thread(engine, sut.base, tmp_path, abort=abort)
    abort.reason = "aborted on harm: error rate 5.0% above the alarm level 1.0%."
    t0 = time.monotonic()
    abort.set()
    th.join(60)
    r = box["result"]
    assert time.monotonic() - t0 < 15
    assert r.status == ScenarioStatus.ABORTED and r.reason == abort.reason
    assert r.k6_exit_code is not None and r.k6_exit_code >= 0  # k6 stopped itself on SIGINT, not killed
    assert _aggregates(engine, sid) > 0 and r.ingest.requests > 0
    assert not _k6_children()


def test_deadline_times_out(engine, sut, tmp_path: Path) -> None:
    r = load.run_scenario(
        engine,
        RUN,
        LoadRequest("soak", sut.base, output_dir=tmp_path, scale=0.01, time_scale=0.033, deadline_s=4, progress=False),
    )
    assert r.status == ScenarioStatus.TIMED_OUT and "deadline" in r.reason
    assert r.finished_at - r.started_at < 30 and r.ingest.requests > 0
    assert not _k6_children()


def test_threshold_abort_is_told_apart(engine, sut, tmp_path: Path) -> None:
    script = tmp_path / "strict.js"
    script.write_text("""
import http from 'k6/http';
export const options = { vus: 2, duration: '60s',
  thresholds: { http_req_duration: [{ threshold: 'p(95)<0.001', abortOnFail: true }] } };
export default function () {
  http.get(`${__ENV.BASE_URL}/api/v1/concerts/`, { tags: { endpoint: 'API-5', name: 'concerts' } });
}
""")
    r = load.run_scenario(
        engine, RUN, LoadRequest("soak", sut.base, output_dir=tmp_path, script=script, progress=False)
    )
    assert r.status == ScenarioStatus.THRESHOLD_ABORTED and r.k6_exit_code == 99
    assert "http_req_duration" in r.reason
    assert r.finished_at - r.started_at < 30 and r.ingest.requests > 0


def test_target_goes_down_mid_run(engine, tmp_path: Path) -> None:
    with run_sut(tmp_path, seed_users=200, seed_seats=50) as sut:
        sid, th, box = _run_in_thread(engine, sut.base, tmp_path, down_after_s=2.0)
        sut.proc.kill()
        sut.proc.wait(10)
        th.join(60)
    r = box["result"]
    assert r.status == ScenarioStatus.TARGET_DOWN and "stopped answering during the run" in r.reason
    assert _aggregates(engine, sid) > 0
    assert _finished(engine, sid).status == "TARGET_DOWN"
    assert not _k6_children()


def test_sigterm_in_a_flow_is_aborted_not_crashed(engine, sut, tmp_path: Path, monkeypatch) -> None:
    """Prefect turns SIGTERM into TerminationSignal in the flow's thread: the stage was stopped, not crashed."""
    from prefect.exceptions import TerminationSignal

    real_update = load._Progress.update

    def update(self, s, force=False):  # the signal lands while k6 runs and rows are coming in
        real_update(self, s, force)
        if s["requests_total"] > 0:
            raise TerminationSignal(signal.SIGTERM)

    monkeypatch.setattr(load._Progress, "update", update)
    sid = store.start_scenario(engine, RUN, "soak")
    with pytest.raises(TerminationSignal):
        load.run_scenario(
            engine,
            RUN,
            LoadRequest(
                "soak",
                sut.base,
                output_dir=tmp_path,
                scale=0.02,
                time_scale=0.033,
                progress=False,
                scenario_run_id=sid,
                stop_grace_s=5,
            ),
        )
    row = _finished(engine, sid)
    assert row.status == "ABORTED" and "TerminationSignal (SIGTERM)" in row.reason, (row.status, row.reason)
    assert _aggregates(engine, sid) > 0 and not _k6_children()  # the rows already ingested stay


def test_lag_s_reaches_the_ingest(engine, sut, tmp_path: Path, monkeypatch) -> None:
    seen: list[int] = []
    real = load.K6CsvIngest

    def spy(*a, **kw):
        ing = real(*a, **kw)
        seen.append(ing.lag_s)
        return ing

    monkeypatch.setattr(load, "K6CsvIngest", spy)
    r = load.run_scenario(
        engine,
        RUN,
        LoadRequest(
            "soak", sut.base, output_dir=tmp_path, scale=0.01, time_scale=0.033, deadline_s=3, progress=False, lag_s=1
        ),
    )
    assert r.status == ScenarioStatus.TIMED_OUT and seen == [1]
    assert not _k6_children()


def test_a_watched_stage_holds_seconds_back_briefly() -> None:
    """With a live hook (the abort watcher) the ingest writes each second WATCHED_LAG_S behind the newest
    sample, so a breach is seen ~1 s after it; without one the ingest keeps its own hold-back."""
    hook = lambda *a: None  # noqa: E731
    assert load._lag_kw(None, hook) == {"lag_s": load.WATCHED_LAG_S} and load.WATCHED_LAG_S <= 1
    assert load._lag_kw(None, None) == {}
    assert load._lag_kw(4, hook) == {"lag_s": 4}


@pytest.mark.skipif(load._SETPRIV is None, reason="no setpriv (Linux util-linux): k6 ends at its own plan's end")
def test_k6_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A campaign or generator killed outright (SIGKILL, OOM, a lost worker) leaves no k6 behind."""
    import subprocess
    import sys

    k6 = venv_bin("k6")
    if k6 is None:
        pytest.skip("k6 binary not installed")
    script = tmp_path / "idle.js"
    script.write_text("export const options = { vus: 1, duration: '10m' };\nexport default function () {}\n")
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\nfrom pathlib import Path\nfrom tasks.load import start_k6\n"
            f"p = start_k6([{k6!r}, 'run', '--paused', '--address', '127.0.0.1:0', {str(script)!r}], "
            f"Path({str(tmp_path / 'k6.log')!r}), dict(os.environ))\n"
            "print(p.pid, flush=True)\ntime.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(load.__file__).resolve().parents[1],
    )
    assert parent.stdout is not None
    k6_pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and psutil.Process(k6_pid).name() != "k6":
        time.sleep(0.1)  # setpriv has exec'd k6 in the same process
    assert psutil.Process(k6_pid).name() == "k6"
    parent.kill()
    parent.wait(10)

    def alive() -> bool:
        try:
            return psutil.Process(k6_pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(), "k6 outlived the process that started it"
