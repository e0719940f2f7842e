"""Every scenario end to end against the reference service at small scale (race at its full 100 users):
k6 → streaming ingest → result tables → KPIs, plus the database snapshot the plan's SQL checks read."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from soundcheck import store
from soundcheck.models import ScenarioStatus
from soundcheck.paths import venv_bin
from soundcheck.profile import parse_profile
from tasks.fixtures import apply_fixtures
from tasks.kpis import compute_kpis
from tasks.load import LoadRequest, run_scenario
from tasks.snapshot import snapshot
from tests.sut_harness import ADMIN, run_sut

pytestmark = [pytest.mark.slow, pytest.mark.skipif(venv_bin("k6") is None, reason="k6 binary not installed")]
ADMIN_TOKEN = ADMIN["X-Admin-Token"]


@pytest.fixture(scope="module")
def sut(tmp_path_factory):
    with run_sut(
        tmp_path_factory.mktemp("sut"),
        seed_users=2500,
        seed_seats=1000,
        outbox_interval_seconds=0.2,
        queue_sweep_seconds=0.5,
    ) as s:
        yield s


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = store.open_store(f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.db'}")
    store.start_run(e, "run-load", "test", scale=0.01, time_scale=0.01, scenarios=[], target=None)
    return e


def _run(engine, sut, scenario: str, tmp_path: Path, *, scale: float = 1.0, time_scale: float = 1.0, **env: str):
    r = run_scenario(
        engine,
        "run-load",
        LoadRequest(
            scenario,
            sut.base,
            output_dir=tmp_path,
            scale=scale,
            time_scale=time_scale,
            env=env,
            admin_token=ADMIN_TOKEN,
            progress=False,
        ),
    )
    assert not [p for p in psutil.Process().children(recursive=True) if p.name() == "k6"]
    return r


def _kpis(engine, sid: int) -> dict[tuple[str, str | None], float]:
    return {(k.name, k.phase): k.value for k in compute_kpis(engine, sid)}


def _rows(engine, table, sid):
    with engine.connect() as c:
        return c.execute(select(table).where(table.c.scenario_run_id == sid)).all()


def test_race_tc1_tc2_tc3_full_100_users(engine, sut, tmp_path: Path) -> None:
    r = _run(engine, sut, "race", tmp_path, TC_GAP_MS="3500", TC3_ROUND_GAP_MS="2500", RELEASE_DELAY_MS="2000")
    assert r.status == ScenarioStatus.COMPLETED, r.reason
    # the correctness thresholds hold; only the release-spread one (max < 50 ms) may fail on a loaded machine
    assert set(r.details.get("thresholds_failed", [])) <= {"sc_release_offset_ms{tc:tc1}: max<50"}, r.details
    assert r.k6_exit_code in (0, 99) and r.dropped_iterations == 0 and r.k6_cpu_share is not None
    reqs = _rows(engine, store.requests, r.scenario_run_id)
    by = Counter((q.name, q.status) for q in reqs if q.endpoint == "API-3")
    assert by[("tc1", 200)] == 1 and by[("tc1", 409)] == 99  # R-RACE-1
    assert by[("tc2", 200)] == 100  # R-RACE-2
    assert by[("tc3", 200)] == 100  # R-RACE-3: every answer 200 …
    assert {q.tags["seat"] for q in reqs if q.name == "tc1"} == {"1"}
    ids = {
        s.tags["reservationId"]
        for s in _rows(engine, store.k6_samples, r.scenario_run_id)
        if s.metric == "sc_tc3_reservation"
    }
    assert len(ids) == 1 and "" not in ids  # … with the same reservationId
    k = _kpis(engine, r.scenario_run_id)
    assert k[("rate_5xx", None)] == 0 and k[("error_rate", None)] == 0
    assert k[("lock_timeout_rate", None)] < 0.05
    assert 0 <= k[("tc1_release_spread_ms", None)] < 250  # a few ms on an idle machine; this one is shared
    assert k[("p95_ms.API-3", None)] > 0 and k[("throughput_rps", None)] > 0
    counts = snapshot(engine, r.scenario_run_id, sut.db_url, dt.datetime.fromtimestamp(r.started_at, dt.UTC))
    assert counts["reservation"] == 1 + 100 + 1
    seat1 = [
        s.row
        for s in _rows(engine, store.db_snapshots, r.scenario_run_id)
        if s.table_name == "reservation" and s.row["seat_id"] == 1
    ]
    assert len(seat1) == 1  # R-RACE-5: the §3.2 query returns 1


def test_saga_compensation_and_concurrent_payments(engine, sut, tmp_path: Path) -> None:
    # the campaign's fixtures step first: the compensation user must hold exactly 10,000, and this service's
    # users were seeded with 1,000,000 (an API cannot lower a balance), so the reference service's fast path
    profile = parse_profile({"name": "t", "scale": 0.1, "fixtures": {"mode": "admin"}})
    apply_fixtures(profile, "saga", sut.base, admin_token=ADMIN_TOKEN)
    r = _run(engine, sut, "saga", tmp_path, scale=0.1)
    assert r.status == ScenarioStatus.COMPLETED, r.reason
    samples = _rows(engine, store.k6_samples, r.scenario_run_id)
    sagas = [s for s in samples if s.metric == "sc_saga_time_s"]
    assert len(sagas) == 1 + 10
    comp = [s for s in sagas if s.tags.get("case") == "compensation"]
    assert comp[0].tags["status"] == "FAILED" and comp[0].tags["reason"] == "INSUFFICIENT_POINTS"
    counts = snapshot(engine, r.scenario_run_id, sut.db_url, dt.datetime.fromtimestamp(r.started_at, dt.UTC))
    assert counts["payment"] == 11 and counts["payment_outbox"] >= 11 * 2
    k = _kpis(engine, r.scenario_run_id)  # compensation read from the snapshot now
    assert k[("compensation_success", None)] == 1.0
    assert k[("saga_completion", None)] == 1.0
    assert 0 < k[("saga_time_s", None)] <= k[("saga_time_max_s", None)] < 10


def test_points_exact_balance(engine, sut, tmp_path: Path) -> None:
    r = _run(engine, sut, "points", tmp_path, scale=0.2, POINT_CHARGES_PER_VU="5")
    assert r.status == ScenarioStatus.COMPLETED, r.reason
    reqs = [q for q in _rows(engine, store.requests, r.scenario_run_id) if q.endpoint == "API-6"]
    assert len(reqs) == 20 * 5 and all(q.status == 200 for q in reqs)
    k = _kpis(engine, r.scenario_run_id)
    assert k[("point_balance_error", None)] == 0  # R-POINT-1


def test_spike_small_scale_with_phases(engine, sut, tmp_path: Path) -> None:
    r = _run(engine, sut, "spike", tmp_path, scale=0.008, time_scale=0.05, POLL_LIMIT_S="4", SEAT_IDS="900,901")
    assert r.status in (ScenarioStatus.COMPLETED,), r.reason
    k = _kpis(engine, r.scenario_run_id)
    # R-SPIKE-10: the capacity ENTERED at issue, plus at most one place freed by the one paying user
    # finishing (payment terminal → token DONE → next admitted) while late users were still arriving
    assert 50 <= k[("tokens_entered_at_issue", None)] <= 51
    assert k[("tokens_entered_at_issue", None)] + k[("tokens_waiting_at_issue", None)] == 80
    assert ("p95_ms.API-1", None) in k and ("p99_ms.API-2", None) in k
    assert ("wait_until_entered_s", None) in k
    assert {p for (_, p) in k} >= {None, "ramp_up", "plateau", "ramp_down"}
    assert k[("requests", "ramp_up")] > 0
    # one user got the seats and its payment was watched to a terminal state
    assert k[("saga_completion", None)] == 1.0
    assert not _rows(engine, store.requests, r.scenario_run_id)  # big scenario: aggregates only
    assert _rows(engine, store.second_aggregates, r.scenario_run_id)


def _poll_seconds(engine, sid: int) -> list[int]:
    """API-2 answers per second, from the first second with one to the last (quiet seconds as 0)."""
    by = Counter()
    for a in _rows(engine, store.second_aggregates, sid):
        if a.endpoint == "API-2":
            by[a.second] += a.count
    return [by[s] for s in range(min(by), max(by) + 1)] if by else []


def test_spike_polls_spread_when_the_ramp_is_compressed(engine, sut, tmp_path: Path) -> None:
    """Time scale 0.03: the 10 s ramp lasts 0.3 s, shorter than the 3 s poll interval. Real users arrive
    over 10 s and poll in every second; the compressed run must too, not in lockstep bursts every 3 s."""
    r = _run(
        engine,
        sut,
        "spike",
        tmp_path,
        scale=0.008,
        time_scale=0.03,
        POLL_LIMIT_S="10",
        SEAT_IDS="902,903",
        USER_OFFSET="2001",
        USER_COUNT="100",
        CONCERT_ID="2",
    )
    assert r.status == ScenarioStatus.COMPLETED, r.reason
    k = _kpis(engine, r.scenario_run_id)
    waiting = k[("tokens_waiting_at_issue", None)]
    assert waiting >= 25  # 80 users, 50 admitted at once
    per_s = _poll_seconds(engine, r.scenario_run_id)
    assert len(per_s) >= 7, per_s  # ~10 s of polling
    assert 0 not in per_s, per_s  # every second of the polling window has answers
    assert max(per_s) <= 0.6 * waiting, per_s  # no lockstep burst of every waiting user in one second


def test_soak_mix_arrival_rate(engine, sut, tmp_path: Path) -> None:
    r = _run(engine, sut, "soak", tmp_path, scale=0.02, time_scale=0.005)  # 20 users, 67 req/s, 9 s
    assert r.status == ScenarioStatus.COMPLETED, r.reason
    rows = _rows(engine, store.second_aggregates, r.scenario_run_id)
    by = Counter()
    for a in rows:
        by[a.endpoint] += a.count
    total = by["API-2"] + by["API-5"] + by["API-3"]
    assert total > 400
    assert abs(by["API-2"] / total - 0.7) < 0.08 and abs(by["API-5"] / total - 0.2) < 0.07
    assert abs(by["API-3"] / total - 0.1) < 0.06
    assert 20 <= by["API-1"] <= 134  # each VU takes its user's token once (50+ VUs act for the 20 users)
    k = _kpis(engine, r.scenario_run_id)
    assert k[("dropped_iterations", None)] == 0 and k[("error_rate", None)] == 0


def test_soak_users_queue_again_when_their_tokens_expire(engine, tmp_path: Path) -> None:
    """The plan's token TTL (30 min) is as long as its soak: tokens taken in the first second die in the last.
    A user whose token expired queues again, as a person would, and goes on reserving; it does not send a dead
    token (401) nor fall back to polling for the rest of the run. Here the TTL is 4 s in a 14 s soak."""
    with run_sut(tmp_path, seed_users=700, seed_seats=1100, queue_ttl_seconds=4) as short_ttl:
        r = _run(engine, short_ttl, "soak", tmp_path, scale=0.02, time_scale=0.008)  # 20 users, 67 req/s, 14 s
    assert r.status == ScenarioStatus.COMPLETED, r.reason
    rows = _rows(engine, store.second_aggregates, r.scenario_run_id)
    first = min(a.second for a in rows)
    by: Counter[str] = Counter()
    answered_late = 0  # reservations answered (not 401) after every first token had expired
    for a in rows:
        by[a.endpoint] += a.count
        if a.endpoint == "API-3":
            by["401"] += int((a.codes or {}).get("401", 0))
            if a.second >= first + 8:
                answered_late += a.count - int((a.codes or {}).get("401", 0))
    assert by["API-1"] >= 2 * 20, by  # every user took a new token at least once
    assert answered_late > 20, by  # reservations went on after the TTL
    # A dead token is sent at most once, by the request that finds it dead, and that is a reservation (not a
    # poll) about one time in eight (10 % against 70 %): 401s per token taken stay near 1/8. A user that kept
    # its dead token would answer 401 to nearly every late reservation with few new tokens. (A bound per
    # reservation moved with the number of VUs: 24 of 86 on a slower machine, with 150 tokens, 2026-12-04.)
    assert by["401"] <= 0.25 * by["API-1"], by


class _SlowTarget(http.server.ThreadingHTTPServer):
    """Loopback stand-in answering every API call after `delay_s` (a target whose latency is 0.4 s)."""

    daemon_threads = True
    delay_s = 0.4
    token_users: set[str]


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):  # quiet
        pass

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        if self.path.startswith("/api/"):
            time.sleep(self.server.delay_s)  # type: ignore[attr-defined]
            if "/queues/tokens/" in self.path:
                self.server.token_users.add(self.headers.get("Authorization", ""))  # type: ignore[attr-defined]
        body = b'{"token": "t-1", "status": "WAITING", "position": 1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815


def test_soak_pool_absorbs_latency_without_dropping(engine, tmp_path: Path) -> None:
    """Scale 0.02: 67 req/s from 20 users. At 0.4 s per answer that needs 27 requests in flight (Little's
    law) — more than 20 VUs. The pool grows (up to rate × 2 s) instead of dropping iterations, and the
    extra VUs act for the same 20 users."""
    srv = _SlowTarget(("127.0.0.1", 0), _SlowHandler)
    srv.token_users = set()
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        r = run_scenario(
            engine,
            "run-load",
            LoadRequest(
                "soak",
                f"http://127.0.0.1:{srv.server_address[1]}",
                output_dir=tmp_path,
                scale=0.02,
                time_scale=0.005,
                progress=False,
            ),
        )
    finally:
        srv.shutdown()
    assert not [p for p in psutil.Process().children(recursive=True) if p.name() == "k6"]
    assert r.status == ScenarioStatus.COMPLETED, r.reason
    assert r.dropped_iterations == 0
    vus = [s.value for s in _rows(engine, store.k6_samples, r.scenario_run_id) if s.metric == "vus"]
    assert max(vus) > 20  # more than 20 requests in flight: 20 VUs could not have carried this load
    assert srv.token_users == {f"Bearer test-user-{u}" for u in range(601, 621)}  # still exactly 20 users
