"""The abort watcher trips on each alarm band (and not below it); the abort and rollback are stored."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, select, text

from soundcheck import store
from soundcheck.profile import Abort, parse_profile
from tasks.safety import AbortWatcher, delete_test_data_sql, record_abort, rollback

T0 = 1_800_000_000


def sec(i, count=100, s5xx=0, failed=0, p95=50.0, endpoint="API-2"):
    return {"second": T0 + i, "endpoint": endpoint, "count": count, "s5xx": s5xx, "failed": failed, "p95_ms": p95}


def test_healthy_stream_never_trips():
    w = AbortWatcher(Abort())
    for i in range(120):
        w.on_second([sec(i, s5xx=0 if i % 10 else 1), sec(i, endpoint="API-5", p95=900)])
        w.on_sample("redis_memory_bytes", 400 * 1024**2, T0 + i)
        w.on_sample("consumer_lag_messages", 200, T0 + i)
        w.on_sample({"kpi": "db_pool_in_use", "value": 5, "ts": T0 + i})
        w.on_sample({"kpi": "db_pool_size", "value": 5, "ts": T0 + i})
        w.on_sample({"kpi": "db_pool_waiting", "value": 0, "ts": T0 + i})
    assert not w.tripped and not w.event.is_set()


def test_error_rate_over_one_percent_trips_at_once():
    ev = threading.Event()
    seen = []
    w = AbortWatcher(Abort(), ev, on_breach=seen.append)
    w.on_second(sec(0, count=100, s5xx=1))  # exactly 1 %: not above
    assert not ev.is_set()
    w.on_second(sec(1, count=100, s5xx=1, failed=1))  # 3 / 200 = 1.5 %
    assert ev.is_set() and w.breach.rule == "error_rate"
    assert seen == [w.breach]
    assert "error rate 1.5% above the alarm level 1.0%" in w.breach.reason()
    assert w.breach.data_ts == T0 + 2


def test_error_rate_needs_min_requests_and_ignores_admin():
    w = AbortWatcher(Abort(min_requests=50))
    w.on_second(sec(0, count=10, s5xx=10))
    w.on_second(sec(0, count=1000, s5xx=1000, endpoint="ADMIN"))
    assert not w.tripped
    w.on_second(sec(1, count=40, s5xx=0))
    assert w.tripped  # 10 / 50


def test_old_errors_leave_the_window():
    w = AbortWatcher(Abort(window_s=5, min_requests=10))
    w.on_second(sec(0, count=1000, s5xx=5))  # 0.5 %
    for i in range(1, 10):
        w.on_second(sec(i, count=1000, s5xx=5))
    assert not w.tripped


def test_p95_must_hold_over_the_window():
    w = AbortWatcher(Abort(window_s=5, p95_ms=3000))
    for i in range(10):  # one slow second in every five is not harm
        w.on_second(sec(i, p95=5000 if i % 5 == 0 else 200))
    assert not w.tripped
    for i in range(10, 14):
        w.on_second(sec(i, p95=3500))
    assert not w.tripped  # 4 slow seconds of 5
    w.on_second(sec(14, p95=3600))
    assert w.tripped and w.breach.rule == "p95_ms" and w.breach.observed == 3500


def test_a_profile_that_aborts_on_errors_only_lets_slowness_run():
    """abort.on_latency false (the staging choice): slow answers are measured, not stopped; errors still stop."""
    w = AbortWatcher(Abort(window_s=5, p95_ms=3000, on_latency=False))
    for i in range(20):
        w.on_second(sec(i, p95=9000))
    assert not w.tripped
    w.on_second(sec(20, count=1000, s5xx=50))
    assert w.tripped and w.breach.rule == "error_rate"


def test_p95_not_before_a_full_window_of_data():
    w = AbortWatcher(Abort(window_s=5))
    for i in range(4):
        w.on_second(sec(i, p95=9000))
    assert not w.tripped


def test_sketch_quantile_is_used_when_given():
    calls = []

    def q(sketches, quantile):
        calls.append(len(sketches))
        return 4000.0

    w = AbortWatcher(Abort(window_s=2), sketch_quantile=q)
    w.on_second({**sec(0, p95=10), "sketch": b"x"})
    w.on_second({**sec(1, p95=10), "sketch": b"y"})
    assert w.tripped and w.breach.observed == 4000.0 and calls[-1] == 2


@pytest.mark.parametrize(
    ("kpi", "value", "rule"),
    [
        ("redis_memory_bytes", 1.1 * 1024**3, "redis_memory"),
        ("consumer_lag_messages", 1001, "consumer_lag"),
        ("outbox_pending", 10001, "outbox_backlog"),
    ],
)
def test_gauge_alarms(kpi, value, rule):
    w = AbortWatcher(Abort())
    w.on_sample(kpi, value * 0.9, T0)
    assert not w.tripped
    w.on_sample(kpi, value, T0 + 2, {"instance": "i-1"})
    assert w.tripped and w.breach.rule == rule and "i-1" in w.breach.reason()


def test_heap_alarm_needs_both_gauges():
    w = AbortWatcher(Abort())
    w.on_sample("heap_used_bytes", 900, T0)
    assert not w.tripped
    w.on_sample("heap_max_bytes", 1000, T0)
    assert w.tripped and w.breach.rule == "heap"


def test_pool_exhaustion_must_be_sustained():
    w = AbortWatcher(Abort(pool_exhaustion_s=10))
    for t in range(0, 8, 2):  # full with waiters for 6 s, then recovers
        w.on_sample("db_pool_size", 5, T0 + t)
        w.on_sample("db_pool_in_use", 5, T0 + t)
        w.on_sample("db_pool_waiting", 3, T0 + t)
    w.on_sample("db_pool_waiting", 0, T0 + 8)
    assert not w.tripped
    for t in range(10, 22, 2):
        w.on_sample("db_pool_waiting", 2, T0 + t)
        w.on_sample("db_pool_in_use", 5, T0 + t)
    assert w.tripped and w.breach.rule == "pool_exhaustion" and w.breach.observed >= 10


def test_pool_timeouts_rising_counts_as_exhaustion():
    w = AbortWatcher(Abort(pool_exhaustion_s=4))
    for i, t in enumerate(range(0, 8, 2)):
        w.on_sample("db_pool_timeouts_total", 3 * i, T0 + t)
    assert w.tripped and "timeouts" in w.breach.detail


def test_profile_can_disable_and_first_breach_wins():
    assert not _feed_errors(AbortWatcher(parse_profile({"name": "x", "abort": {"enabled": False}}))).tripped
    w = _feed_errors(AbortWatcher(parse_profile({"name": "x"})))
    first = w.breach
    w.on_sample("redis_memory_bytes", 10 * 1024**3, T0)
    assert w.breach is first


def _feed_errors(w):
    for i in range(3):
        w.on_second(sec(i, s5xx=50))
    return w


def test_concurrent_feeds_trip_once():
    calls = []
    w = AbortWatcher(Abort(min_requests=1), on_breach=calls.append)

    def feed(k):
        for i in range(200):
            w.on_second(sec(i, count=10, s5xx=k))
            w.on_sample("outbox_pending", 20000 * k, T0 + i)

    ts = [threading.Thread(target=feed, args=(k,)) for k in (0, 1, 1, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(calls) == 1 and w.event.is_set()


@pytest.fixture
def result_store(tmp_path):
    eng = store.open_store(f"sqlite:///{tmp_path / 'r.db'}")
    store.start_run(eng, "run-1", "local", scale=0.01, time_scale=0.01, scenarios=["soak"], target="x")
    yield eng
    eng.dispose()


def test_abort_is_recorded(result_store):
    sr = store.start_scenario(result_store, "run-1", "soak")
    w = _feed_errors(AbortWatcher(Abort()))
    w.mark_stopped(w.breach.detected_at + 0.8)
    reason = record_abort(result_store, "run-1", sr, w, k6_exit_code=105)
    with result_store.connect() as c:
        row = c.execute(select(store.scenario_runs)).mappings().one()
        ev = c.execute(select(store.events)).mappings().one()
    assert row["status"] == "ABORTED" and row["reason"] == reason and row["k6_exit_code"] == 105
    assert row["details"]["abort"]["breach"]["rule"] == "error_rate"
    assert row["details"]["abort"]["stop"]["stop_s"] == pytest.approx(0.8)
    assert ev["kind"] == "abort" and "k6 stopped 0.80 s after detection" in ev["detail"]


def test_rollback_runs_every_step_and_stores_each(result_store):
    def boom():
        raise RuntimeError("ALB said no with token xoxb-1234567890-abcdef")

    steps = rollback(result_store, "run-1", deregister=boom, delete_test_data=lambda: "12 rows", restart=None)
    assert [(s.step, s.outcome) for s in steps] == [
        ("deregister_targets", "failed"),
        ("delete_test_data", "ok"),
        ("restart_service", "skipped"),
    ]
    with result_store.connect() as c:
        evs = c.execute(
            select(store.events.c.kind, store.events.c.outcome, store.events.c.detail).order_by(store.events.c.id)
        ).all()
    assert [(k, o) for k, o, _ in evs] == [("rollback", "failed"), ("rollback", "ok"), ("rollback", "skipped")]
    assert "xoxb-1234567890-abcdef" not in evs[0][2] and "ALB said no" in evs[0][2]


def _make_tables(url):
    eng = create_engine(url)
    with eng.begin() as c:
        for t in ("payment_outbox", "payment", "reservation", "queue_token", "seat"):
            c.execute(text(f"DROP TABLE IF EXISTS {t}"))
        ts_type = "TIMESTAMP" if eng.dialect.name != "sqlite" else "DATETIME"
        for t in ("reservation", "queue_token", "payment", "seat"):
            c.execute(
                text(
                    f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, created_at {ts_type}(6) NULL)"
                    if eng.dialect.name == "mysql"
                    else f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, created_at {ts_type})"
                )
            )
    return eng


def _rows(eng, t):
    with eng.connect() as c:
        return sorted(r[0] for r in c.execute(text(f"SELECT id FROM {t}")))


def _check_delete(url):
    eng = _make_tables(url)
    start = datetime.now(UTC).replace(microsecond=0)
    before, after = start - timedelta(minutes=5), start + timedelta(seconds=3)
    with eng.begin() as c:
        for t in ("reservation", "queue_token", "payment", "seat"):
            c.execute(
                text(f"INSERT INTO {t} (id, created_at) VALUES (1, :b), (2, :a), (3, :s)"),
                {"b": before.replace(tzinfo=None), "a": after.replace(tzinfo=None), "s": start.replace(tzinfo=None)},
            )
    detail = delete_test_data_sql(url, start)
    for t in ("reservation", "queue_token", "payment"):
        assert _rows(eng, t) == [1], t  # rows created at/after the start are gone, older ones kept
    assert _rows(eng, "seat") == [1, 2, 3]  # not a test-data table: untouched
    assert "payment_outbox: absent" in detail and "reservation: 2 deleted" in detail
    eng.dispose()


def test_delete_test_data_sqlite(tmp_path):
    _check_delete(f"sqlite:///{tmp_path / 'sut.db'}")


def _reachable(port):
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _reachable(3306), reason="MariaDB not reachable on 127.0.0.1:3306")
def test_delete_test_data_mariadb():
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", user="root", password="")
    conn.cursor().execute("CREATE DATABASE IF NOT EXISTS soundcheck_safety")
    conn.close()
    _check_delete("mysql+pymysql://root@127.0.0.1:3306/soundcheck_safety")


@pytest.mark.skipif(not _reachable(5432), reason="PostgreSQL not reachable on 127.0.0.1:5432")
def test_delete_test_data_postgres():
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'soundcheck_safety'").fetchone():
            conn.execute("CREATE DATABASE soundcheck_safety")
    _check_delete("postgresql+psycopg://postgres@127.0.0.1:5432/soundcheck_safety")


def _agg(i, durations, endpoint="API-2", s5xx=0):
    import numpy as np

    from soundcheck.sketch import Histogram
    from tasks.seconds import SecondAggregate

    h = Histogram()
    h.add_values(np.asarray(durations, dtype=float))
    n = len(durations)
    return SecondAggregate(
        second=T0 + i,
        endpoint=endpoint,
        count=n,
        s2xx=n - s5xx,
        s3xx=0,
        s4xx=0,
        s5xx=s5xx,
        failed=0,
        codes={"200": n - s5xx},
        p50_ms=None,
        p95_ms=float(max(durations)),
        p99_ms=None,
        max_ms=None,
        sketch=h.to_bytes(),
    )


def test_ingest_hook_signature_with_real_sketches():
    """The ingest stage calls on_second(scenario, second, {endpoint: SecondAggregate}); the window's p95 is
    read from the merged sketches (here each second's own p95 field says 'slow', the merged data does not)."""
    w = AbortWatcher(Abort(window_s=3, p95_ms=3000))
    for i in range(6):  # 3 % of requests at 4 s: merged p95 is fast
        w.on_second(
            "soak", T0 + i, {"API-2": _agg(i, [100.0] * 97 + [4000.0] * 3), "ADMIN": _agg(i, [9000.0] * 50, "ADMIN")}
        )
    assert not w.tripped
    for i in range(6, 9):  # 10 % at 4 s on another endpoint: the window p95 is above 3 s
        w.on_second("soak", T0 + i, {"API-2": _agg(i, [100.0] * 90), "API-5": _agg(i, [4000.0] * 10, "API-5")})
    assert w.tripped and w.breach.rule == "p95_ms" and 3000 < w.breach.observed < 4200


def test_abort_timing_defaults_to_the_load_stage_finish(result_store):
    sr = store.start_scenario(result_store, "run-1", "soak")
    w = _feed_errors(AbortWatcher(Abort()))
    store.finish_scenario(result_store, sr, "ABORTED", reason="x", details={"csv": "k6.csv"})  # as the load stage
    record_abort(result_store, "run-1", sr, w)
    with result_store.connect() as c:
        row = c.execute(select(store.scenario_runs)).mappings().one()
    stop = row["details"]["abort"]["stop"]
    assert stop is not None and 0 <= stop["stop_s"] < 5 and row["details"]["csv"] == "k6.csv"


def test_rollback_step_results_are_described_not_dumped(result_store):
    class Endpoints:
        base_url = "http://127.0.0.1:9"
        admin_token = "adm-should-not-appear-0001"

    class Handle:
        def restart(self):
            return Endpoints()

        def deregister_targets(self):
            return ["i-0abc", "i-0def"]

    from tasks.safety import rollback_steps_for

    prof = parse_profile(
        {
            "name": "x",
            "environment": {"kind": "external"},
            "target": {"base_url": "http://127.0.0.1:9", "database_url": "sqlite:///:memory:"},
        }
    )
    steps = rollback_steps_for(prof, Handle(), datetime.now(UTC).isoformat())
    res = rollback(result_store, "run-1", **steps)
    assert [r.outcome for r in res] == ["ok", "ok", "ok"]
    assert res[0].detail == "2 done: i-0abc, i-0def"
    assert "answering at http://127.0.0.1:9" in res[2].detail
    with result_store.connect() as c:
        details = " ".join(r[0] for r in c.execute(select(store.events.c.detail)))
    assert "adm-should-not-appear" not in details
