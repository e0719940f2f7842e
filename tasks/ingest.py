"""Streaming ingest of k6's output into the result store, while k6 runs.

Three parts, one module each: `tasks.k6csv` picks the rows to read out of each chunk, `tasks.seconds`
aggregates a second per endpoint, and this module tails the file and writes the store.

Format, chosen by measurement (`bench/output_format.py`, figures in docs/load.md): k6's **CSV** output
with ``K6_CSV_TIME_FORMAT=unix_milli`` and the system tags cut down to
``status, method, name, scenario, error_code, expected_response`` is ~3.5× smaller than the JSON output for the
same requests (947 vs ~3,300 bytes per one-request iteration) and, because every row starts
with its metric name, the rows we need can be cut out of a chunk by a vectorised scan of the line
starts (numpy) and parsed in bulk with pyarrow, never touching the other 12 rows per request. k6 writes ~13 rows per
request; only ``http_req_duration`` (one per request, carrying status, endpoint and name), the
campaign's custom metrics (``sc_*``), ``vus`` and ``dropped_iterations`` are read, the rest skipped
without being parsed.

What lands in the store (soundcheck.store):
- ``second_aggregates``: for every scenario, one row per (second, endpoint) with count, status
  classes, status codes, p50/p95/p99/max and the mergeable sketch (`soundcheck.sketch`). A second
  is written once it is `lag_s` behind the newest sample; a sample arriving later still (a request
  longer than the lag) adds another row for the same (second, endpoint) — consumers merge rows by
  key (sketches and counts add up exactly), as `tasks.kpis` does.
- ``requests``: every request whole, when `keep_requests` (race, saga, points).
- ``k6_samples``: every ``sc_*`` custom-metric sample with its tags (saga time, wait until ENTERED,
  TC-3 reservation ids, release offsets, lock timeouts), plus ``vus`` (last value per second) and
  ``dropped_iterations`` (sum per second).
- ``scenario_runs.ingest_errors``: lines that could not be read (skipped, counted), updated as they
  are found, so rows already ingested are never lost.

Memory stays bounded: the file is read in chunks, only seconds still inside the lag window are held.

Live hook for safety and progress: ``on_second(scenario, second, aggregates)`` is called for every
second as it is written, with ``aggregates: dict[endpoint, SecondAggregate]`` (count, s5xx, failed,
error_rate(), p95_ms …). It runs on the ingest thread: keep it quick, and set an Event to stop the
load rather than doing the stopping inside. An exception in the hook is logged and ignored.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas  # noqa: F401 - pyarrow imports it on its first conversion; pay that before the load, not during it
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv
from sqlalchemy import Engine, insert, update

from soundcheck import sketch, store
from soundcheck.plan import SETUP_TAG
from soundcheck.sketch import Histogram
from tasks.k6csv import classify, parse_tags
from tasks.seconds import UNTAGGED, OnSecond, SecondAccumulator, SecondAggregate

log = logging.getLogger(__name__)

#: Scenarios whose every request is kept whole (the rest keep per-second aggregates only).
SMALL_SCENARIOS = frozenset({"race", "saga", "points"})

#: Open (second, endpoint) accumulators (~10 KB each) above which a poll writes finished seconds before
#: reading its next chunk; otherwise it writes them once at its end (fewer, larger transactions).
_FLUSH_ACCS = 64
#: Duration rows are parsed (pyarrow) and aggregated once this many bytes of them are cut out, or at the
#: end of a poll: per-call overheads amortised over ~14,000 requests, while line cutting stays in
#: cache-sized 4 MB chunks.
_PARSE_BATCH = 1 << 20


@dataclass
class IngestSummary:
    requests: int = 0
    seconds_written: int = 0
    aggregate_rows: int = 0
    request_rows: int = 0
    sample_rows: int = 0
    ingest_errors: int = 0
    dropped_iterations: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    bytes_read: int = 0


@dataclass
class LiveStats:
    """The newest complete second, for progress displays."""

    second: int | None = None
    vus: int = 0
    rps: int = 0
    p95_ms: float | None = None
    errors: int = 0
    requests_total: int = 0
    errors_total: int = 0

    def progress(self, elapsed_s: float) -> dict[str, Any]:
        """The fields of a progress line (`tasks.load._Progress.update`)."""
        return {
            "elapsed": elapsed_s,
            "vus": self.vus,
            "rps": self.rps,
            "p95_ms": self.p95_ms,
            "errors": self.errors,
            "requests_total": self.requests_total,
            "errors_total": self.errors_total,
        }


class K6CsvIngest:
    """Tails one k6 CSV output file into the result store. Call `poll()` repeatedly, then `finish()`."""

    def __init__(
        self,
        engine: Engine,
        scenario_run_id: int,
        scenario: str,
        path: str | Path,
        *,
        keep_requests: bool | None = None,
        on_second: OnSecond | None = None,
        lag_s: int = 3,
        chunk_bytes: int = 4 << 20,
    ) -> None:
        self.engine = engine
        self.scenario_run_id = scenario_run_id
        self.scenario = scenario
        self.path = Path(path)
        self.keep_requests = scenario in SMALL_SCENARIOS if keep_requests is None else keep_requests
        self.on_second = on_second
        self.lag_s = lag_s
        self.chunk_bytes = chunk_bytes
        self.summary = IngestSummary()
        self.live = LiveStats()
        self._fh: io.BufferedReader | None = None
        self._buf: bytearray | None = None
        self._pos = 0
        self._wanted = {"timestamp", "metric_value", "status", "extra_tags"} | (
            {"name", "error_code", "scenario", "method"} if self.keep_requests else set()
        )
        self._columns: list[str] | None = None
        self._acc: dict[tuple[int, str], SecondAccumulator] = {}
        self._watermark = -1  # newest second seen
        self._vus: dict[int, float] = {}
        self._dropped: dict[int, float] = {}
        self._errors_written = 0
        self._pending: list[bytes] = []  # duration rows cut out but not yet parsed (parsed in batches)
        self._pending_bytes = 0
        self._finished = False
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------------
    def _open(self) -> bool:
        if self._fh is None:
            try:
                self._fh = open(self.path, "rb")  # noqa: SIM115 - held open while tailing
            except FileNotFoundError:
                return False
        return True

    def poll(self) -> int:
        """Read and store whatever complete lines k6 has written since the last call; bytes consumed.

        Reads whole chunks and re-reads from the start of an incomplete last line next time (no
        copying of carried-over bytes)."""
        with self._lock:
            if self._finished or not self._open():
                return 0
            assert self._fh is not None
            consumed = 0
            if self._buf is None:
                self._buf = bytearray(self.chunk_bytes)  # reused: no fresh allocation (page faults) per chunk
            buf = self._buf
            while True:
                self._fh.seek(self._pos)
                size = self._fh.readinto(buf)
                if not size:
                    break
                cut = buf.rfind(b"\n", 0, size)
                if cut < 0:
                    if size < self.chunk_bytes:
                        break  # an incomplete line: wait for the rest
                    self.summary.ingest_errors += 1  # a "line" longer than a chunk is not k6 output
                    self._pos += size
                    consumed += size
                    continue
                self._process(buf, cut + 1)
                self._pos += cut + 1
                consumed += cut + 1
                if len(self._acc) > _FLUSH_ACCS:
                    self._drain()
                    self._flush(final=False)  # within a poll too: a backlog never piles up in memory
                if size < self.chunk_bytes:
                    break
            if consumed:
                self._drain()
                self._flush(final=False)
            self.summary.bytes_read += consumed
            return consumed

    def finish(self) -> IngestSummary:
        """Read to the end, write every open second and the counts; a partial last line is an error."""
        self.poll()
        with self._lock:
            if self._finished:
                return self.summary
            if self._fh is not None:
                self._fh.seek(self._pos)
                rest = self._fh.read()
                if rest.strip():
                    # k6 was stopped mid-line: keep the line if it parses, else count it.
                    self._process(rest + b"\n", len(rest) + 1)
                    self.summary.bytes_read += len(rest)
            self._drain()
            self._flush(final=True)
            self._finished = True
            if self._fh is not None:
                self._fh.close()
            return self.summary

    # -- parsing ---------------------------------------------------------------------------------
    def _process(self, lines: bytes | bytearray, end: int) -> None:
        """Handle the whole lines in lines[:end]."""
        start = 0
        if self._columns is None:
            start = lines.find(b"\n") + 1
            cols = lines[:start].decode("utf-8", "replace").strip().split(",")
            if not cols or cols[0] != "metric_name" or "timestamp" not in cols or "metric_value" not in cols:
                self.summary.ingest_errors += 1
                log.warning("k6 output %s has no CSV header; first line skipped", self.path)
                cols = [
                    "metric_name",
                    "timestamp",
                    "metric_value",
                    "error_code",
                    "expected_response",
                    "method",
                    "name",
                    "scenario",
                    "status",
                    "extra_tags",
                    "metadata",
                ]
            self._columns = cols
        if end <= start:
            return
        dur_blob, custom, vus, dropped, bad = classify(lines, start, end)
        self.summary.ingest_errors += bad
        if dur_blob:
            self._pending.append(dur_blob)
            self._pending_bytes += len(dur_blob)
            if self._pending_bytes >= _PARSE_BATCH:
                self._drain()
        if custom:
            self._process_custom(custom)
        for rest in vus:
            p = self._small(rest)
            if p:
                self._vus[int(p[0] // 1000)] = p[1]
                self.live.vus = int(p[1])
        for rest in dropped:
            p = self._small(rest)
            if p:
                sec = int(p[0] // 1000)
                self._dropped[sec] = self._dropped.get(sec, 0.0) + p[1]
                self.summary.dropped_iterations += int(p[1])

    def _drain(self) -> None:
        """Parse and aggregate the duration rows cut out so far, in one batch."""
        if self._pending:
            blob = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending, self._pending_bytes = [], 0
            self._process_durations(blob)

    def _small(self, rest: bytes) -> tuple[float, float, list[str]] | None:
        """Parse one non-request row: (timestamp ms, value, all fields); None (counted) if malformed."""
        fields = rest.decode("utf-8", "replace").split(",")
        try:
            if len(fields) != len(self._columns or ()) - 1:
                raise ValueError("field count")
            return float(fields[0]), float(fields[1]), fields
        except ValueError:
            self.summary.ingest_errors += 1
            return None

    def _parse_table(self, blob: bytes) -> pa.Table | None:
        cols = self._columns[1:]  # type: ignore[index]
        bad = 0

        def on_invalid(_row: Any) -> str:
            nonlocal bad
            bad += 1
            return "skip"

        size = len(blob)
        types = {"timestamp": pa.int64(), "metric_value": pa.float64(), "status": pa.int32()}
        strings = {c: pa.string() for c in cols if c not in types}
        try:
            table = pacsv.read_csv(
                io.BytesIO(blob),
                read_options=pacsv.ReadOptions(
                    column_names=cols, block_size=max(1 << 20, size + 1), use_threads=size > (8 << 20)
                ),
                parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(
                    column_types={**types, **strings},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                    include_columns=[c for c in cols if c in self._wanted],
                ),
            )
        except pa.ArrowInvalid:
            return None  # a value that is not a number: fall back to line by line
        self.summary.ingest_errors += bad
        return table

    def _parse_slow(self, blob: bytes) -> pa.Table:
        cols = self._columns[1:]  # type: ignore[index]
        good: dict[str, list[Any]] = {c: [] for c in cols}
        for rest in blob.splitlines():
            fields = rest.decode("utf-8", "replace").split(",")
            try:
                if len(fields) != len(cols):
                    raise ValueError("field count")
                rec = dict(zip(cols, fields, strict=True))
                vals = (int(rec["timestamp"]), float(rec["metric_value"]), int(rec.get("status") or 0))
            except ValueError:
                self.summary.ingest_errors += 1
                continue
            for c in cols:
                good[c].append(rec[c])
            good["timestamp"][-1], good["metric_value"][-1] = vals[0], vals[1]
            if "status" in good:
                good["status"][-1] = vals[2]
        return pa.table(good)

    def _process_durations(self, blob: bytes) -> None:
        table = self._parse_table(blob)
        if table is None:
            table = self._parse_slow(blob)
        if table.num_rows == 0:
            return
        ts = table.column("timestamp").to_numpy(zero_copy_only=False)
        values = table.column("metric_value").to_numpy(zero_copy_only=False)
        status = (
            table.column("status").fill_null(0).to_numpy(zero_copy_only=False)
            if "status" in table.column_names
            else np.zeros(len(ts), dtype=np.int32)
        )
        if "extra_tags" in table.column_names:
            # few distinct tag sets: find the endpoint once per distinct value, not once per row
            enc = pc.dictionary_encode(table.column("extra_tags")).combine_chunks()
            per_value = [parse_tags(v).get("endpoint") or UNTAGGED for v in enc.dictionary.to_pylist()]
            ep_names = sorted(set(per_value))
            remap = np.array([ep_names.index(e) for e in per_value], dtype=np.int64)
            ep_idx = remap[enc.indices.to_numpy(zero_copy_only=False)]
        else:
            ep_names, ep_idx = [UNTAGGED], np.zeros(len(ts), dtype=np.int32)
        secs = ts // 1000
        self.summary.requests += len(ts)
        first, last = float(ts.min()) / 1000, float(ts.max()) / 1000
        s = self.summary
        s.first_ts = first if s.first_ts is None else min(s.first_ts, first)
        s.last_ts = last if s.last_ts is None else max(s.last_ts, last)
        self._watermark = max(self._watermark, int(secs.max()))
        # group by (second, endpoint) with one sort, then add each group's values in bulk
        gkey = secs * 1024 + ep_idx
        order = np.argsort(gkey, kind="stable")
        gsorted = gkey[order]
        bounds = np.flatnonzero(np.diff(gsorted)) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [len(gsorted)]))
        # every group's histogram in one pass, and every group's status codes in one count
        hists = sketch.grouped(values[order], starts)
        ngroup = np.repeat(np.arange(starts.size), ends - starts)
        combo, counts = np.unique(ngroup * 4096 + np.clip(status[order], 0, 4095), return_counts=True)
        codes_of: list[dict[int, int]] = [{} for _ in range(starts.size)]
        for cb, n in zip(combo.tolist(), counts.tolist(), strict=True):
            codes_of[cb // 4096][cb % 4096] = n
        for i, g in enumerate(gsorted[starts].tolist()):
            key = (g // 1024, ep_names[g % 1024])
            acc = self._acc.get(key)
            if acc is None:
                acc = self._acc[key] = SecondAccumulator()
            acc.hist.merge(hists[i])
            for c, n in codes_of[i].items():
                acc.codes[c] = acc.codes.get(c, 0) + n
        if self.keep_requests:
            self._write_requests(table, ts, values, status, ep_names, ep_idx)

    def _write_requests(
        self,
        table: pa.Table,
        ts: np.ndarray,
        values: np.ndarray,
        status: np.ndarray,
        ep_names: list[str],
        ep_idx: np.ndarray,
    ) -> None:
        cols = table.column_names
        names = table.column("name").to_pylist() if "name" in cols else [None] * len(ts)
        errs = table.column("error_code").to_pylist() if "error_code" in cols else [None] * len(ts)
        extras = table.column("extra_tags").to_pylist() if "extra_tags" in cols else [""] * len(ts)
        k6sc = table.column("scenario").to_pylist() if "scenario" in cols else [None] * len(ts)
        methods = table.column("method").to_pylist() if "method" in cols else [None] * len(ts)
        rows = []
        for i in range(len(ts)):
            tags = parse_tags(extras[i])
            tags.pop("endpoint", None)
            if k6sc[i]:
                tags["k6_scenario"] = k6sc[i]
            if methods[i]:
                tags["method"] = methods[i]
            rows.append(
                {
                    "scenario_run_id": self.scenario_run_id,
                    "ts": float(ts[i]) / 1000.0,
                    "endpoint": ep_names[ep_idx[i]],
                    "name": names[i] or None,
                    "status": int(status[i]),
                    "duration_ms": float(values[i]),
                    "error_code": errs[i] or None,
                    "tags": tags or None,
                }
            )
        with self.engine.begin() as c:
            c.execute(insert(store.requests), rows)
        self.summary.request_rows += len(rows)

    def _process_custom(self, rows: list[tuple[bytes, bytes]]) -> None:
        cols = self._columns or []
        out = []
        for name, rest in rows:
            p = self._small(rest)
            if p is None:
                continue
            fields = dict(zip(cols[1:], p[2], strict=False))
            tags = parse_tags(fields.get("extra_tags", ""))
            for k in ("name", "scenario", "status"):
                if fields.get(k):
                    tags["k6_scenario" if k == "scenario" else k] = fields[k]
            out.append(
                {
                    "scenario_run_id": self.scenario_run_id,
                    "ts": p[0] / 1000.0,
                    "metric": name.decode(),
                    "value": p[1],
                    "tags": tags or None,
                }
            )
        if out:
            with self.engine.begin() as c:
                c.execute(insert(store.k6_samples), out)
            self.summary.sample_rows += len(out)

    # -- writing ---------------------------------------------------------------------------------
    def _flush(self, *, final: bool) -> None:
        limit = None if final else self._watermark - self.lag_s
        ready_set = {sec for sec, _ in self._acc if limit is None or sec <= limit}
        ready = sorted(ready_set)
        agg_rows: list[dict[str, Any]] = []
        per_second: list[tuple[int, dict[str, SecondAggregate]]] = []
        by_sec: dict[int, list[str]] = {}
        for sec, ep in self._acc:
            if sec in ready_set:
                by_sec.setdefault(sec, []).append(ep)
        for sec in ready:
            accs = {ep: self._acc.pop((sec, ep)) for ep in by_sec[sec]}
            eps = {ep: acc.summary(sec, ep) for ep, acc in accs.items()}
            self._update_live(sec, eps, accs)
            per_second.append((sec, eps))
            for a in eps.values():
                agg_rows.append(
                    {
                        "scenario_run_id": self.scenario_run_id,
                        "second": sec,
                        "endpoint": a.endpoint,
                        "count": a.count,
                        "s2xx": a.s2xx,
                        "s3xx": a.s3xx,
                        "s4xx": a.s4xx,
                        "s5xx": a.s5xx,
                        "failed": a.failed,
                        "codes": a.codes,
                        "p50_ms": a.p50_ms,
                        "p95_ms": a.p95_ms,
                        "p99_ms": a.p99_ms,
                        "max_ms": a.max_ms,
                        "sketch": a.sketch,
                    }
                )
        samples = []
        for table_, metric in ((self._vus, "vus"), (self._dropped, "dropped_iterations")):
            for sec in sorted(s for s in table_ if limit is None or s <= limit):
                samples.append(
                    {
                        "scenario_run_id": self.scenario_run_id,
                        "ts": float(sec),
                        "metric": metric,
                        "value": table_.pop(sec),
                        "tags": None,
                    }
                )
        errors_changed = self.summary.ingest_errors != self._errors_written
        if agg_rows or samples or errors_changed or final:
            with self.engine.begin() as c:
                if agg_rows:
                    c.execute(insert(store.second_aggregates), agg_rows)
                if samples:
                    c.execute(insert(store.k6_samples), samples)
                if errors_changed or final:
                    c.execute(
                        update(store.scenario_runs)
                        .where(store.scenario_runs.c.id == self.scenario_run_id)
                        .values(ingest_errors=self.summary.ingest_errors)
                    )
            self._errors_written = self.summary.ingest_errors
            self.summary.aggregate_rows += len(agg_rows)
            self.summary.sample_rows += len(samples)
            self.summary.seconds_written += len(per_second)
        for sec, eps in per_second:
            if self.on_second is not None:
                try:
                    self.on_second(self.scenario, sec, eps)
                except Exception:  # the hook must never stop the ingest
                    log.exception("on_second hook failed for %s second %s", self.scenario, sec)

    def _update_live(self, sec: int, eps: dict[str, SecondAggregate], accs: dict[str, SecondAccumulator]) -> None:
        counted = [a for ep, a in eps.items() if ep != SETUP_TAG]
        n = sum(a.count for a in counted)
        errors = sum(a.s5xx + a.failed for a in counted)
        hist = Histogram()
        for ep, acc in accs.items():
            if ep != SETUP_TAG:
                hist.merge(acc.hist)
        lv = self.live
        if lv.second is None or sec >= lv.second:
            lv.second, lv.rps, lv.errors, lv.p95_ms = sec, n, errors, hist.quantile(0.95)
        lv.requests_total += n
        lv.errors_total += errors


class IngestThread(threading.Thread):
    """Polls a `K6CsvIngest` every `interval_s` until `stop` is set, then finishes it."""

    def __init__(self, ingest: K6CsvIngest, interval_s: float = 0.5) -> None:
        super().__init__(name=f"ingest-{ingest.scenario}", daemon=True)
        self.ingest = ingest
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.cpu_s = 0.0  # this thread's CPU time (campaign overhead while k6 runs)

    def run(self) -> None:
        t0 = time.thread_time()
        try:
            while not self.stop_event.is_set():
                if self.ingest.poll() == 0:
                    self.stop_event.wait(self.interval_s)
            self.ingest.finish()
        except BaseException as e:  # surfaced by the runner; rows written so far stay
            self.error = e
            log.exception("ingest of %s failed", self.ingest.path)
        finally:
            self.cpu_s = time.thread_time() - t0

    def stop(self, timeout: float | None = 120.0) -> IngestSummary:
        self.stop_event.set()
        self.join(timeout)
        return self.ingest.summary


def ingest_file(
    engine: Engine,
    scenario_run_id: int,
    scenario: str,
    path: str | Path,
    *,
    keep_requests: bool | None = None,
    on_second: OnSecond | None = None,
) -> IngestSummary:
    """Ingest a finished k6 CSV file in one go (same code path as streaming)."""
    ing = K6CsvIngest(engine, scenario_run_id, scenario, path, keep_requests=keep_requests, on_second=on_second)
    return ing.finish()


def start_streaming(
    engine: Engine,
    scenario_run_id: int,
    scenario: str,
    path: str | Path,
    *,
    keep_requests: bool | None = None,
    on_second: OnSecond | None = None,
    interval_s: float = 0.5,
) -> IngestThread:
    """Start tailing `path` (it may not exist yet) on a thread; `thread.stop()` finishes and returns the summary."""
    th = IngestThread(
        K6CsvIngest(engine, scenario_run_id, scenario, path, keep_requests=keep_requests, on_second=on_second),
        interval_s,
    )
    th.start()
    return th
