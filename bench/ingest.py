"""Benchmark of the load stage's ingest: the 30-minute soak at 3,333 req/s (6 M requests) as k6 CSV.

    uv run python bench/ingest.py                      # the plan's size (≈5.7 GB of CSV, a few minutes)
    uv run python bench/ingest.py --seconds 120        # quicker, same rates

Phases, each in its own child process so each peak RSS is its own:
- generate: synthetic k6 CSV row for row as k6 writes it (soundcheck.k6synth; 13 rows per request);
- offline:  `K6CsvIngest` over the finished file, then `compute_kpis` — rows/s, CPU, peak memory;
- floor:    only read the file (4 MB chunks) and find every line end with numpy — the part of any Python
            reader's cost that no parsing trick removes, so the ceiling of the ratio;
- pandas:   `pandas.read_csv` (default engine) of the same file, in 1 M-row chunks (a single read of 78 M
            rows would need ~17 GB, not on this shared machine; `--read-csv-whole` times the one call
            at small sizes — it costs about twice the chunked CPU) — rows/s, CPU, peak memory;
Every timed reader gets the file from the page cache (read once untimed just before).
- stream:   a writer appends the file at `--replay-speed` × the real rate (as k6 would, in pieces, cut
            mid-line) while `IngestThread` tails it into the store; when the writer stops (the end of the
            load) the ingest finishes and KPIs are computed: the time from the end of the load to KPIs
            ready. The ingest thread's CPU seconds divided by the load's real duration is the campaign's
            CPU per second of load at the real rate.
Ratios printed: offline ingest vs read_csv (wall and CPU), and read_csv of the whole file after the load
(what a batch pipeline waits for) vs the streamed end-of-load-to-KPIs time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_generate(a: argparse.Namespace) -> dict:
    from soundcheck import k6synth

    t = time.perf_counter()
    syn = k6synth.requests_for(a.rps, a.seconds, 1_795_660_000, seed=1)
    path = Path(a.dir) / "k6.csv"
    with open(path, "w", buffering=8 << 20) as f:
        size = k6synth.write(f, syn)
    return {
        "requests": int(len(syn.ts_ms)),
        "bytes": size,
        "lines": int(len(syn.ts_ms)) * 13 + 2 * a.seconds + 1,
        "wall_s": time.perf_counter() - t,
    }


def _store(a: argparse.Namespace, name: str):
    from soundcheck import store

    db = Path(a.dir) / f"{name}.db"
    db.unlink(missing_ok=True)
    e = store.open_store(f"sqlite:///{db}")
    store.start_run(e, name, "bench", scale=1.0, time_scale=1.0, scenarios=["soak"], target=None)
    return e, store.start_scenario(e, name, "soak")


def _warm(path: Path) -> None:
    """Read the file once untimed, so every timed reader finds it in the page cache (like with like)."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def phase_floor(a: argparse.Namespace) -> dict:
    """What any reader in Python pays before parsing anything: read the file in 4 MB chunks and find every
    line end (numpy). Bounds the ratio a numpy/pyarrow ingest can reach against read_csv."""
    import numpy as np

    path = Path(a.dir) / "k6.csv"
    _warm(path)
    buf = bytearray(4 << 20)
    t, c = time.perf_counter(), time.process_time()
    lines = 0
    with open(path, "rb") as f:
        while size := f.readinto(buf):
            lines += np.flatnonzero(np.frombuffer(buf, dtype=np.uint8, count=size) == 10).size
    return {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c, "lines": lines}


def phase_offline(a: argparse.Namespace) -> dict:
    from tasks.ingest import K6CsvIngest
    from tasks.kpis import compute_kpis

    e, sid = _store(a, "offline")
    _warm(Path(a.dir) / "k6.csv")
    t, c = time.perf_counter(), time.process_time()
    s = K6CsvIngest(e, sid, "soak", Path(a.dir) / "k6.csv").finish()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    t = time.perf_counter()
    kp = {k.name: k.value for k in compute_kpis(e, sid)}
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "requests": s.requests,
        "bytes": s.bytes_read,
        "errors": s.ingest_errors,
        "kpi_s": time.perf_counter() - t,
        "p95_ms": kp.get("p95_ms"),
        "throughput_rps": kp.get("throughput_rps"),
        "peak_mb": peak_mb(),
    }


def phase_pandas(a: argparse.Namespace) -> dict:
    import pandas as pd

    path = Path(a.dir) / "k6.csv"
    _warm(path)
    t, c = time.perf_counter(), time.process_time()
    rows = 0
    if a.read_csv_whole:  # what a user would type; needs ~3 GB of memory per GB of CSV
        rows = len(pd.read_csv(path))
    else:
        for chunk in pd.read_csv(path, chunksize=1_000_000):
            rows += len(chunk)
    return {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c, "rows": rows, "peak_mb": peak_mb()}


def phase_stream(a: argparse.Namespace) -> dict:
    from tasks.ingest import IngestThread, K6CsvIngest
    from tasks.kpis import compute_kpis

    src = Path(a.dir) / "k6.csv"
    dst = Path(a.dir) / "k6-live.csv"
    dst.write_bytes(b"")
    e, sid = _store(a, "stream")
    size = src.stat().st_size
    rate = size / a.seconds * a.replay_speed  # bytes per second k6 would write, sped up
    th = IngestThread(K6CsvIngest(e, sid, "soak", dst), interval_s=0.5)
    t0 = time.perf_counter()
    th.start()
    step = 0.1
    with open(src, "rb") as fi, open(dst, "ab") as fo:
        written = 0
        while True:
            due = min(size, int((time.perf_counter() - t0 + step) * rate))
            while due > written:  # in pieces of at most 4 MB, like k6's periodic CSV flushes
                piece = fi.read(min(due - written, 4 << 20))
                fo.write(piece)
                written += len(piece)
            fo.flush()
            if written >= size:
                break
            time.sleep(step)
    t_end = time.perf_counter()  # the end of the load: k6 wrote its last line
    summary = th.stop()
    kp = {k.name: k.value for k in compute_kpis(e, sid)}
    t_ready = time.perf_counter()
    dst.unlink(missing_ok=True)
    return {
        "load_wall_s": t_end - t0,
        "end_to_kpis_s": t_ready - t_end,
        "ingest_cpu_s": th.cpu_s,
        "requests": summary.requests,
        "errors": summary.ingest_errors,
        "p95_ms": kp.get("p95_ms"),
        "peak_mb": peak_mb(),
    }


PHASES = {
    "generate": phase_generate,
    "floor": phase_floor,
    "offline": phase_offline,
    "pandas": phase_pandas,
    "stream": phase_stream,
}


def child(a: argparse.Namespace, phase: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--seconds",
        str(a.seconds),
        "--rps",
        str(a.rps),
        "--replay-speed",
        str(a.replay_speed),
        "--dir",
        a.dir,
    ] + (["--read-csv-whole"] if a.read_csv_whole else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=1800)
    p.add_argument("--rps", type=float, default=3333)
    p.add_argument("--replay-speed", type=float, default=30.0)
    p.add_argument("--dir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the generated file")
    p.add_argument(
        "--read-csv-whole",
        action="store_true",
        help="time pd.read_csv(path) in one call instead of 1 M-row chunks (small --seconds only: memory)",
    )
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase:
        print(json.dumps(PHASES[a.phase](a)))
        return
    made = a.dir is None
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)", flush=True)
    a.dir = a.dir or f"/tmp/soundcheck-bench-ingest-{os.getpid()}"
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    try:
        gen = child(a, "generate")
        print(
            f"generated {gen['requests']:,} requests, {gen['lines']:,} lines, {gen['bytes'] / 1e9:.2f} GB "
            f"in {gen['wall_s']:.0f} s",
            flush=True,
        )
        flo = child(a, "floor")
        off = child(a, "offline")
        pdr = child(a, "pandas")
        st = child(a, "stream")
    finally:
        if made and not a.keep:
            shutil.rmtree(a.dir, ignore_errors=True)
    lines = gen["lines"]
    res = {
        "requests": gen["requests"],
        "lines": lines,
        "gigabytes": gen["bytes"] / 1e9,
        "offline_wall_s": off["wall_s"],
        "offline_cpu_s": off["cpu_s"],
        "offline_rows_per_s": lines / off["wall_s"],
        "offline_requests_per_s": off["requests"] / off["wall_s"],
        "offline_peak_mb": off["peak_mb"],
        "kpis_from_tables_s": off["kpi_s"],
        "pandas_wall_s": pdr["wall_s"],
        "pandas_cpu_s": pdr["cpu_s"],
        "pandas_rows_per_s": pdr["rows"] / pdr["wall_s"],
        "pandas_peak_mb": pdr["peak_mb"],
        "ratio_vs_read_csv_wall": pdr["wall_s"] / off["wall_s"],
        "ratio_vs_read_csv_cpu": pdr["cpu_s"] / off["cpu_s"],
        "floor_wall_s": flo["wall_s"],
        "floor_cpu_s": flo["cpu_s"],
        "floor_ratio_vs_read_csv_cpu": pdr["cpu_s"] / flo["cpu_s"],
        "read_csv_whole": a.read_csv_whole,
        "stream_replay_speed": a.replay_speed,
        "stream_load_wall_s": st["load_wall_s"],
        "end_of_load_to_kpis_s": st["end_to_kpis_s"],
        "stream_peak_mb": st["peak_mb"],
        "ratio_read_csv_after_load_vs_streamed_kpis": pdr["wall_s"] / st["end_to_kpis_s"],
        "ingest_cpu_s_per_s_of_load": st["ingest_cpu_s"] / a.seconds,
        "p95_ms_offline": off["p95_ms"],
        "p95_ms_stream": st["p95_ms"],
        "errors": off["errors"] + st["errors"],
        "stream_requests": st["requests"],
    }
    print(f"""
ingest of {res["requests"]:,} requests ({lines:,} CSV rows, {res["gigabytes"]:.2f} GB):
  offline   {res["offline_wall_s"]:.1f} s wall, {res["offline_cpu_s"]:.1f} s CPU → \
{res["offline_rows_per_s"]:,.0f} rows/s ({res["offline_requests_per_s"]:,.0f} requests/s), \
peak {res["offline_peak_mb"]:.0f} MB; KPIs from tables {res["kpis_from_tables_s"]:.2f} s
  read_csv  {res["pandas_wall_s"]:.1f} s wall, {res["pandas_cpu_s"]:.1f} s CPU → \
{res["pandas_rows_per_s"]:,.0f} rows/s, peak {res["pandas_peak_mb"]:.0f} MB \
({"one call" if a.read_csv_whole else "1 M-row chunks"})
  ratio     {res["ratio_vs_read_csv_wall"]:.1f}× (wall), {res["ratio_vs_read_csv_cpu"]:.1f}× (CPU) \
faster than read_csv
  floor     read + find line ends only: {res["floor_wall_s"]:.1f} s wall, {res["floor_cpu_s"]:.2f} s CPU = \
read_csv / {res["floor_ratio_vs_read_csv_cpu"]:.1f} (CPU): the best ratio any numpy reader of this file can reach
  streamed  load replayed at {a.replay_speed:g}× in {res["stream_load_wall_s"]:.0f} s; end of load → KPIs ready \
{res["end_of_load_to_kpis_s"]:.2f} s (target ≤ 15 s); peak {res["stream_peak_mb"]:.0f} MB (target ≤ 1,024 MB)
            read_csv of the file after the load / streamed end-to-KPIs = \
{res["ratio_read_csv_after_load_vs_streamed_kpis"]:.0f}×
  CPU       ingest {res["ingest_cpu_s_per_s_of_load"] * 100:.2f} % of one core per second of load at the real rate \
(target ≤ 5 %)
  check     p95 offline {res["p95_ms_offline"]:.2f} ms = streamed {res["p95_ms_stream"]:.2f} ms; \
malformed lines {res["errors"]}; streamed requests {res["stream_requests"]:,}""")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
