"""Streaming ingest of k6 CSV output: exact counts, percentiles within 1 %, exact merges, live hook,
bounded state, malformed lines counted and skipped without losing what was ingested."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from soundcheck import k6synth, store
from soundcheck.sketch import Histogram, merge_bytes
from tasks.ingest import IngestThread, K6CsvIngest, ingest_file

START = 1_795_660_000


@pytest.fixture()
def engine(tmp_path: Path):
    e = store.open_store(f"sqlite:///{tmp_path / 'store.db'}")
    store.start_run(e, "run-1", "test", scale=1.0, time_scale=1.0, scenarios=["soak"], target=None)
    return e


def _scenario(engine, name: str = "soak") -> int:
    return store.start_scenario(engine, "run-1", name)


def _write(path: Path, syn: k6synth.Synthetic) -> None:
    with open(path, "w") as f:
        k6synth.write(f, syn)


def _rows(engine, table, sid):
    with engine.connect() as c:
        return c.execute(select(table).where(table.c.scenario_run_id == sid)).all()


def test_counts_exact_and_percentiles_within_one_percent(engine, tmp_path: Path) -> None:
    syn = k6synth.requests_for(400, 12, START, seed=3, error_share=0.01)
    path = tmp_path / "k6.csv"
    _write(path, syn)
    sid = _scenario(engine)
    summary = ingest_file(engine, sid, "soak", path)
    assert summary.requests == len(syn.ts_ms)
    assert summary.ingest_errors == 0

    rows = _rows(engine, store.second_aggregates, sid)
    by_key = {(r.second, r.endpoint): r for r in rows}
    assert len(by_key) == len(rows)  # one row per (second, endpoint) when nothing arrives late
    secs = syn.ts_ms // 1000
    for (sec, ep_name), r in by_key.items():
        ep = syn.endpoints.index(ep_name)
        sel = (secs == sec) & (syn.endpoint == ep)
        vals, st = syn.duration_ms[sel], syn.status[sel]
        assert r.count == sel.sum()
        assert r.s5xx == int(((st >= 500) & (st < 600)).sum())
        assert r.failed == int((st == 0).sum())
        assert r.codes == {str(c): int((st == c).sum()) for c in np.unique(st)}
        for q, got in ((0.5, r.p50_ms), (0.95, r.p95_ms), (0.99, r.p99_ms)):
            exact = np.quantile(vals, q, method="lower")
            assert abs(got - exact) <= 0.01 * exact, (sec, ep_name, q, got, exact)
        assert r.max_ms == pytest.approx(vals.max())

    # sketches of every second merge exactly into the whole run's distribution (per endpoint and overall)
    for ep_name in syn.endpoints:
        ep = syn.endpoints.index(ep_name)
        merged = merge_bytes(r.sketch for r in rows if r.endpoint == ep_name)
        single = Histogram()
        single.add_values(syn.duration_ms[syn.endpoint == ep])
        assert np.array_equal(merged.counts, single.counts)
        for q in (0.5, 0.95, 0.99):
            exact = np.quantile(syn.duration_ms[syn.endpoint == ep], q, method="lower")
            assert abs(merged.quantile(q) - exact) <= 0.01 * exact
    everything = merge_bytes(r.sketch for r in rows)
    assert everything.count == len(syn.ts_ms)
    assert abs(everything.quantile(0.99) - np.quantile(syn.duration_ms, 0.99, method="lower")) <= 0.01 * np.quantile(
        syn.duration_ms, 0.99, method="lower"
    )


def test_streams_while_written_with_live_hook_and_bounded_state(engine, tmp_path: Path) -> None:
    syn = k6synth.requests_for(300, 20, START, seed=5)
    text = "".join(k6synth.lines(syn, block=500))
    path = tmp_path / "k6.csv"
    path.write_text("")
    sid = _scenario(engine)
    seen: list[tuple[int, dict]] = []
    open_seconds: list[int] = []
    writer_done = threading.Event()

    def hook(scenario: str, second: int, aggs: dict) -> None:
        assert scenario == "soak"
        seen.append((second, aggs, writer_done.is_set()))
        open_seconds.append(len({s for s, _ in ing._acc}))

    ing = K6CsvIngest(engine, sid, "soak", path, on_second=hook, lag_s=3, chunk_bytes=64 << 10)
    th = IngestThread(ing, interval_s=0.05)
    th.start()
    step = len(text) // 40
    with open(path, "a") as f:
        for i in range(0, len(text), step):
            f.write(text[i : i + step])  # cuts lines in the middle on purpose
            f.flush()
            time.sleep(0.03)
    writer_done.set()
    summary = th.stop()
    assert th.error is None
    assert summary.requests == len(syn.ts_ms) and summary.ingest_errors == 0
    # seconds were handed to the hook while the file was still being written, in order, once each
    assert any(not done for _, _, done in seen)
    assert [s for s, _, _ in seen] == sorted({int(t // 1000) for t in syn.ts_ms})
    assert sum(a.count for _, aggs, _ in seen for a in aggs.values()) == len(syn.ts_ms)
    assert max(open_seconds) <= 3 + 2  # only the lag window is held in memory
    a = seen[0][1]["API-2"]
    assert a.second == seen[0][0] and 0 <= a.error_rate() <= 1 and a.p95_ms is not None
    assert ing.live.vus == 1000


def test_malformed_lines_are_counted_and_skipped(engine, tmp_path: Path) -> None:
    syn = k6synth.requests_for(100, 3, START, seed=7)
    good = "".join(k6synth.lines(syn))
    head, body = good.split("\n", 1)
    lines = body.splitlines(keepends=True)
    mid = len(lines) // 2
    bad = [
        "this is not k6 output\n",  # not a metric row
        "\n",  # empty line
        f"http_req_duration,{START * 1000 + 500},not-a-number,,true,GET,poll,soak,200,endpoint=API-2,\n",
        f"http_req_duration,{START * 1000 + 500},12.5,only,three\n",  # wrong field count
        f"sc_saga_time_s,{START * 1000},oops,,,,,saga,,,\n",
    ]
    path = tmp_path / "k6.csv"
    path.write_text(
        head + "\n" + "".join(lines[:mid]) + "".join(bad) + "".join(lines[mid:]) + "http_req_duration,17956600"
    )  # k6 killed mid-line
    sid = _scenario(engine)
    summary = ingest_file(engine, sid, "soak", path)
    assert summary.requests == len(syn.ts_ms)  # every good request kept
    assert summary.ingest_errors == len(bad) + 1
    with engine.connect() as c:
        run = c.execute(select(store.scenario_runs).where(store.scenario_runs.c.id == sid)).one()
        total = sum(
            r.count
            for r in c.execute(
                select(store.second_aggregates.c.count).where(store.second_aggregates.c.scenario_run_id == sid)
            )
        )
    assert run.ingest_errors == len(bad) + 1
    assert total == len(syn.ts_ms)


def test_half_written_line_is_read_once_complete(engine, tmp_path: Path) -> None:
    syn = k6synth.requests_for(50, 2, START, seed=9)
    text = "".join(k6synth.lines(syn))
    cut = text.index("http_req_duration", 2000) + 10
    path = tmp_path / "k6.csv"
    path.write_text(text[:cut])
    sid = _scenario(engine)
    ing = K6CsvIngest(engine, sid, "soak", path)
    ing.poll()
    with open(path, "a") as f:
        f.write(text[cut:])
    s = ing.finish()
    assert s.requests == len(syn.ts_ms) and s.ingest_errors == 0


def test_small_scenarios_keep_every_request_and_custom_samples(engine, tmp_path: Path) -> None:
    path = tmp_path / "k6.csv"
    t = START * 1000
    path.write_text(
        k6synth.HEADER
        + f"http_req_duration,{t},12.5,,true,POST,tc3,race_tc3,200,endpoint=API-3&tc=tc3,\n"
        + f"http_req_duration,{t + 1},3.25,1409,true,POST,tc1,race_tc1,409,endpoint=API-3&tc=tc1,\n"
        + f"http_req_duration,{t + 2},30001,1211,false,POST,tc1,race_tc1,0,endpoint=API-3&tc=tc1,\n"
        + f"sc_tc3_reservation,{t + 3},1,,,,,race_tc3,,status=200&reservationId=abc-1&round=1,\n"
        + f"sc_release_offset_ms,{t + 4},2,,,,,race_tc1,,tc=tc1,\n"
        + f"dropped_iterations,{t + 5},3,,,,,race_tc1,,,\n"
    )
    sid = _scenario(engine, "race")
    s = ingest_file(engine, sid, "race", path)
    assert s.requests == 3 and s.dropped_iterations == 3
    reqs = _rows(engine, store.requests, sid)
    assert sorted((r.name, r.status) for r in reqs) == [("tc1", 0), ("tc1", 409), ("tc3", 200)]
    r0 = next(r for r in reqs if r.status == 200)
    assert r0.endpoint == "API-3" and r0.ts == pytest.approx(START) and r0.tags["k6_scenario"] == "race_tc3"
    assert r0.tags["tc"] == "tc3" and r0.duration_ms == 12.5
    samples = defaultdict(list)
    for r in _rows(engine, store.k6_samples, sid):
        samples[r.metric].append(r)
    assert samples["sc_tc3_reservation"][0].tags["reservationId"] == "abc-1"
    assert samples["sc_release_offset_ms"][0].value == 2
    assert sum(r.value for r in samples["dropped_iterations"]) == 3
    agg = _rows(engine, store.second_aggregates, sid)
    assert len(agg) == 1 and agg[0].count == 3 and agg[0].failed == 1 and agg[0].s4xx == 1


def test_vectorised_line_classifier_matches_line_by_line() -> None:
    """The numpy classifier (16-byte gathers, hand-padded tail) agrees with the plain line-by-line one,
    wherever a chunk starts and ends, on k6 rows mixed with short and malformed lines."""
    from tasks.k6csv import classify as _classify
    from tasks.k6csv import classify_slow as _classify_slow

    syn = k6synth.requests_for(50, 2, START, seed=11)
    body = "".join(k6synth.lines(syn)).split("\n", 1)[1]
    extra = [
        "",
        "x",
        "vus,1",
        "http",
        "http_req_duration",
        "sc_x,1,2,,,,,s,,,",
        "sc_",
        "dropped_iterations,1,2,,,,,,,,",
        "http_req_durationX,1,2,,,,,,,,",
        "garbage line that is long enough",
        "vus,17956600000,3.000000,,,,,,,,",
    ]
    rng = np.random.default_rng(5)
    lines = body.splitlines(keepends=True)
    for e in extra:
        lines.insert(int(rng.integers(0, len(lines))), e + "\n")
    lines += [e + "\n" for e in extra] + ["vus,1,2\n", "sc_a,1,2\n"]  # short lines at the very end of a chunk
    text = "".join(lines).encode()
    for start in (0, 1, 7, 15, 16, 17, 100):
        for end in (len(text), len(text) - 1, len(text) - 17, start + 16, start + 40):
            cut = text.rfind(b"\n", start, end) + 1
            if cut <= start:
                continue
            buf = bytearray(text) + bytearray(b"Z" * 32)  # stale bytes after the end must not matter
            assert _classify(buf, start, cut) == _classify_slow(text[start:cut]), (start, end)
