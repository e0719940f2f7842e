"""Which k6 output format should the ingest read? Size and parse speed of the same requests as CSV and JSON.

    uv run python bench/output_format.py [--requests 300000]

Both files hold the same synthetic requests row for row as k6 1.x writes them (13 samples per one-request
iteration; JSON lines as `--out json` writes them: a "Metric" line per metric, then one "Point" per sample
with an RFC 3339 nanosecond time and a tags object; CSV as `--out csv` with K6_CSV_TIME_FORMAT=unix_milli
and the runner's six system tags). Each is parsed to what the ingest needs per request — timestamp (ms),
endpoint, status, duration — by the fastest reader we have for it:
- CSV: the ingest's own path (`tasks.k6csv.classify` + pyarrow), per 4 MB chunk;
- JSON: lines of `http_req_duration` picked by substring, each decoded with orjson (the fastest JSON
  decoder installed), the time parsed from its string.
Prints bytes per request and requests parsed per CPU second for both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from soundcheck import k6synth  # noqa: E402


def write_json(path: Path, syn: k6synth.Synthetic) -> int:
    names = k6synth.REQ_METRICS
    iter_names = ("data_sent", "data_received", "iteration_duration", "iterations")
    n = 0
    with open(path, "wb") as f:
        for m in names + iter_names:
            line = orjson.dumps(
                {
                    "type": "Metric",
                    "data": {"name": m, "type": "trend", "contains": "time", "thresholds": [], "submetrics": None},
                    "metric": m,
                }
            )
            f.write(line + b"\n")
            n += len(line) + 1
        mix = k6synth.SOAK_MIX
        buf = io.BytesIO()
        for t, e, s, d in zip(
            syn.ts_ms.tolist(), syn.endpoint.tolist(), syn.status.tolist(), syn.duration_ms.tolist(), strict=True
        ):
            when = dt.datetime.fromtimestamp(t / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
            tags = {
                "endpoint": mix[e][0],
                "expected_response": "true" if 200 <= s < 500 else "false",
                "method": mix[e][1],
                "name": mix[e][2],
                "scenario": "soak",
                "status": str(s),
            }
            for m in names:
                v = d if m in ("http_req_duration", "http_req_waiting") else 1.0
                point = {"time": when, "value": v, "tags": tags}
                buf.write(orjson.dumps({"metric": m, "type": "Point", "data": point}))
                buf.write(b"\n")
            for m in iter_names:
                buf.write(
                    orjson.dumps(
                        {"metric": m, "type": "Point", "data": {"time": when, "value": d, "tags": {"scenario": "soak"}}}
                    )
                )
                buf.write(b"\n")
            if buf.tell() > 8 << 20:
                n += f.write(buf.getvalue())
                buf = io.BytesIO()
        n += f.write(buf.getvalue())
    return n


def parse_json(path: Path) -> int:
    key = b'"metric":"http_req_duration","type":"Point"'
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if key in line:
                p = orjson.loads(line)["data"]
                ts = dt.datetime.fromisoformat(p["time"][:26] + "+00:00").timestamp()
                _ = (ts, p["tags"]["endpoint"], int(p["tags"]["status"]), p["value"])
                n += 1
    return n


def parse_csv(path: Path) -> int:
    from soundcheck import store
    from tasks.ingest import K6CsvIngest

    e = store.open_store(f"sqlite:///{path.parent / 'fmt.db'}")
    run_id = store.new_run_id()
    store.start_run(e, run_id, "bench", scale=1, time_scale=1, scenarios=["soak"], target=None)
    sid = store.start_scenario(e, run_id, "soak")
    return K6CsvIngest(e, sid, "soak", path).finish().requests


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=300_000)
    a = p.parse_args()
    syn = k6synth.requests_for(a.requests / 60, 60, 1_795_660_000, seed=2)
    with tempfile.TemporaryDirectory() as d:
        csv_path, json_path = Path(d) / "k6.csv", Path(d) / "k6.json"
        with open(csv_path, "w") as f:
            csv_bytes = k6synth.write(f, syn)
        json_bytes = write_json(json_path, syn)
        parse_csv(csv_path)  # warm imports
        out = {}
        for name, fn, path in (("csv", parse_csv, csv_path), ("json", parse_json, json_path)):
            c, t = time.process_time(), time.perf_counter()
            n = fn(path)
            out[name] = (n, time.process_time() - c, time.perf_counter() - t)
    reqs = len(syn.ts_ms)
    for name, size in (("csv", csv_bytes), ("json", json_bytes)):
        n, cpu, wall = out[name]
        print(
            f"{name:4s}: {size / reqs:,.0f} bytes/request, {n:,} requests parsed in {cpu:.2f} s CPU "
            f"({wall:.2f} s wall) → {n / cpu:,.0f} requests per CPU second"
        )
    print(f"csv is {json_bytes / csv_bytes:.1f}× smaller and {out['json'][1] / out['csv'][1]:.1f}× faster to read")


if __name__ == "__main__":
    main()
