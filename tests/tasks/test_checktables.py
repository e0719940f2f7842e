"""The tables the suites run on, built from constructed stage data (no GX: fast)."""

from __future__ import annotations

import pandas as pd

from tasks.checktables import race_tables, timeline
from tasks.rundata import StageData

T0 = 1_790_000_000


def _sec(counts: list[int], max_ms: list[float] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "second": T0 + i,
                "endpoint": "API-2",
                "count": c,
                "s5xx": 0,
                "failed": 0,
                "max_ms": (max_ms[i] if max_ms else 30.0),
            }
            for i, c in enumerate(counts)
            if c
        ]
    )


def test_quiet_seconds_of_a_sparse_load_are_not_missing():
    # 3 users polling every 3 s: one second in three carries the responses
    t = timeline(_sec([3, 0, 0] * 10 + [3]))
    assert not t["missing"].any()
    assert (t["count"] == 0).sum() == 20


def test_a_silent_run_inside_a_dense_load_is_missing():
    t = timeline(_sec([50] * 10 + [0, 0, 0] + [50] * 10))
    assert t["missing"].tolist() == [False] * 10 + [True] * 3 + [False] * 10
    assert t.loc[t["missing"], "expected"].min() == 50


def test_a_stall_keeps_requests_in_flight():
    # the pool stalls: nothing completes for 4 s, then the waiting requests complete after ~5 s
    t = timeline(_sec([50] * 5 + [0, 0, 0, 0] + [50] * 5, max_ms=[30.0] * 9 + [5200.0] + [30.0] * 4))
    assert not t["missing"].any(), t
    assert t["in_flight"].sum() == 4


def test_a_k6_sample_covers_a_second():
    k6 = pd.DataFrame([{"ts": T0 + 10.5, "metric": "vus", "value": 100.0, "tags": None}])
    t = timeline(_sec([50] * 10 + [0] + [50] * 10), k6)
    assert not t["missing"].any()


def test_race_lock_timeouts_come_from_k6_samples_not_error_code():
    req = pd.DataFrame(
        [
            {
                "ts": T0,
                "endpoint": "API-3",
                "name": "tc2",
                "status": 409,
                "duration_ms": 3000.0,
                "error_code": "1050",
                "tags": {"tc": "tc2"},
            }
            for _ in range(4)
        ]
        + [
            {
                "ts": T0,
                "endpoint": "API-3",
                "name": "tc2",
                "status": 200,
                "duration_ms": 5.0,
                "error_code": None,
                "tags": {"tc": "tc2"},
            }
        ]
    )
    k6 = pd.DataFrame(
        [
            {
                "ts": T0,
                "metric": "sc_lock_timeouts",
                "value": 1.0,
                "tags": {"endpoint": "API-3", "name": "tc2", "tc": "tc2", "status": s},
            }
            for s in ("409", "409", "500")
        ]
    )
    st = StageData(1, "race", "COMPLETED", None, None, requests=req, k6=k6)
    row = race_tables(st)["answers"].set_index("tc").loc["tc2"]
    assert (row["lock_timeouts"], row["lock_timeouts_5xx"]) == (3, 1)
    assert row["lock_timeout_rate"] == 3 / 5


def test_latency_trend_is_per_endpoint_not_the_mix():
    """A constant 1 s concert list among 5 ms polls: the share of concert-list calls grows over the run, so
    the mixed mean rises; no endpoint got slower, so there is no trend (R-SOAK-4)."""
    from tasks.serverkpis import latency_trend, upward_ms

    rows = []
    for i in range(60):
        rows.append({"second": T0 + i, "endpoint": "API-2", "count": 20, "p95_ms": 5.0})
        rows.append({"second": T0 + i, "endpoint": "API-5", "count": 1 + i // 10, "p95_ms": 1000.0})
    flat = pd.DataFrame(rows)
    assert upward_ms(*latency_trend(flat)) == 0.0
    rising = flat.assign(
        p95_ms=[5.0 + (10.0 * (r["second"] - T0) if r["endpoint"] == "API-5" else 0.0) for r in rows]
    )  # the concert list itself slows down by 10 ms a second
    rel, absolute = latency_trend(rising)
    assert absolute > 500 and upward_ms(rel, absolute) > 100
