"""Streaming ingest of k6's output into the result store, while k6 runs.

Format, chosen by measurement (`bench/output_format.py`, figures in the README's "Load stage"
section): k6's **CSV** output with ``K6_CSV_TIME_FORMAT=unix_milli`` and the system tags cut down to
``status, method, name, scenario, error_code, expected_response`` is ~3.5× smaller than the JSON output
for the same requests and, because every row starts with its metric name, the rows we need can be cut
out of a chunk with C-speed regex scans and parsed in bulk with pyarrow. k6 writes ~13 rows per
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
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas  # noqa: F401 - pyarrow imports it on its first conversion; pay that before the load, not during it
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv
from sqlalchemy import Engine, insert, update

from soundcheck import store
from soundcheck.sketch import Histogram

log = logging.getLogger(__name__)

#: Environment and flags the runner gives k6 so its output is what this module reads.
K6_ENV = {"K6_CSV_TIME_FORMAT": "unix_milli", "K6_CSV_SAVE_INTERVAL": "1s"}
SYSTEM_TAGS = "status,method,name,scenario,error_code,expected_response"

#: Scenarios whose every request is kept whole (the rest keep per-second aggregates only).
SMALL_SCENARIOS = frozenset({"race", "saga", "points"})

_RE_DURATION = re.compile(rb"\nhttp_req_duration,([^\n]*)")
_RE_CUSTOM = re.compile(rb"\n(sc_[A-Za-z0-9_]*),([^\n]*)")
_RE_VUS = re.compile(rb"\nvus,([^\n]*)")
_RE_DROPPED = re.compile(rb"\ndropped_iterations,([^\n]*)")
#: A line that does not start like a k6 CSV row: metric name, comma, a digit (its timestamp).
_RE_BAD_LINE = re.compile(rb"\n(?![a-z][a-z0-9_]*,\d)")
_RE_ENDPOINT = r"(?:^|&)endpoint=(?P<ep>[^&]*)"

QUANTILES = (0.5, 0.95, 0.99)
UNTAGGED = "UNTAGGED"


@dataclass
class SecondAggregate:
    """One endpoint's requests in one second: what `second_aggregates` stores and `on_second` gets."""

    second: int  # epoch second
    endpoint: str
    count: int
    s2xx: int
    s3xx: int
    s4xx: int
    s5xx: int
    failed: int
    codes: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    sketch: bytes

    def error_rate(self) -> float:
        """Share answered 5xx or not answered (the brief's `error_rate`)."""
        return (self.s5xx + self.failed) / self.count if self.count else 0.0


@dataclass
class _Acc:
    hist: Histogram = field(default_factory=Histogram)
    codes: dict[int, int] = field(default_factory=dict)

    def summary(self, second: int, endpoint: str) -> SecondAggregate:
        classes = [0, 0, 0, 0, 0, 0]  # index = status // 100; 0 = no answer
        for code, n in self.codes.items():
            classes[min(max(code // 100, 0), 5)] += n
        p50, p95, p99 = self.hist.quantiles(QUANTILES)
        return SecondAggregate(
            second=second, endpoint=endpoint, count=int(self.hist.count), s2xx=classes[2], s3xx=classes[3],
            s4xx=classes[4],
            s5xx=classes[5], failed=classes[0] + classes[1], codes={str(k): v for k, v in sorted(self.codes.items())},
            p50_ms=p50, p95_ms=p95, p99_ms=p99, max_ms=self.hist.max if self.hist.count else None,
            sketch=self.hist.to_bytes())


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


OnSecond = Callable[[str, int, dict[str, SecondAggregate]], None]


def _parse_tags(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if raw:
        for part in raw.split("&"):
            k, sep, v = part.partition("=")
            if sep:
                out[k] = v
    return out


class K6CsvIngest:
    """Tails one k6 CSV output file into the result store. Call `poll()` repeatedly, then `finish()`."""

    def __init__(self, engine: Engine, scenario_run_id: int, scenario: str, path: str | Path, *,
                 keep_requests: bool | None = None, on_second: OnSecond | None = None, lag_s: int = 3,
                 chunk_bytes: int = 16 << 20) -> None:
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
        self._carry = b""
        self._columns: list[str] | None = None
        self._acc: dict[tuple[int, str], _Acc] = {}
        self._watermark = -1  # newest second seen
        self._vus: dict[int, float] = {}
        self._dropped: dict[int, float] = {}
        self._errors_written = 0
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
        """Read and store whatever complete lines k6 has written since the last call; bytes consumed."""
        with self._lock:
            if self._finished or not self._open():
                return 0
            assert self._fh is not None
            total = 0
            while True:
                data = self._fh.read(self.chunk_bytes)
                if not data:
                    break
                total += len(data)
                data = self._carry + data
                cut = data.rfind(b"\n")
                if cut < 0:
                    self._carry = data
                    continue
                self._carry = data[cut + 1:]
                self._process(data[: cut + 1])
                if len(data) < self.chunk_bytes:
                    break
            self.summary.bytes_read += total
            self._flush(final=False)
            return total

    def finish(self) -> IngestSummary:
        """Read to the end, write every open second and the counts; a partial last line is an error."""
        self.poll()
        with self._lock:
            if self._finished:
                return self.summary
            if self._carry.strip():
                # k6 was stopped mid-line: keep the line if it parses, else count it.
                self._process(self._carry + b"\n")
            self._carry = b""
            self._flush(final=True)
            self._finished = True
            if self._fh is not None:
                self._fh.close()
            return self.summary

    # -- parsing ---------------------------------------------------------------------------------
    def _process(self, lines: bytes) -> None:
        if self._columns is None:
            head, _, lines = lines.partition(b"\n")
            cols = head.decode("utf-8", "replace").strip().split(",")
            if not cols or cols[0] != "metric_name" or "timestamp" not in cols or "metric_value" not in cols:
                self.summary.ingest_errors += 1
                log.warning("k6 output %s has no CSV header; first line skipped", self.path)
                cols = ["metric_name", "timestamp", "metric_value", "error_code", "expected_response", "method",
                        "name", "scenario", "status", "extra_tags", "metadata"]
            self._columns = cols
        buf = b"\n" + lines
        self.summary.ingest_errors += len(_RE_BAD_LINE.findall(buf, 0, len(buf) - 1))
        self._process_durations(_RE_DURATION.findall(buf))
        custom = _RE_CUSTOM.findall(buf)
        if custom:
            self._process_custom(custom)
        for rest in _RE_VUS.findall(buf):
            p = self._small(rest)
            if p:
                self._vus[int(p[0] // 1000)] = p[1]
                self.live.vus = int(p[1])
        for rest in _RE_DROPPED.findall(buf):
            p = self._small(rest)
            if p:
                sec = int(p[0] // 1000)
                self._dropped[sec] = self._dropped.get(sec, 0.0) + p[1]
                self.summary.dropped_iterations += int(p[1])

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

    def _parse_table(self, rows: list[bytes]) -> pa.Table | None:
        cols = self._columns[1:]  # type: ignore[index]
        bad = 0

        def on_invalid(_row: Any) -> str:
            nonlocal bad
            bad += 1
            return "skip"

        size = sum(map(len, rows)) + len(rows)
        types = {"timestamp": pa.int64(), "metric_value": pa.float64(), "status": pa.int32()}
        strings = {c: pa.string() for c in cols if c not in types}
        try:
            table = pacsv.read_csv(
                io.BytesIO(b"\n".join(rows) + b"\n"),
                read_options=pacsv.ReadOptions(column_names=cols, block_size=max(1 << 20, size + 1),
                                               use_threads=size > (8 << 20)),
                parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(column_types={**types, **strings}, strings_can_be_null=False,
                                                     quoted_strings_can_be_null=False))
        except pa.ArrowInvalid:
            return None  # a value that is not a number: fall back to line by line
        self.summary.ingest_errors += bad
        return table

    def _parse_slow(self, rows: list[bytes]) -> pa.Table:
        cols = self._columns[1:]  # type: ignore[index]
        good: dict[str, list[Any]] = {c: [] for c in cols}
        for rest in rows:
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

    def _process_durations(self, rows: list[bytes]) -> None:
        if not rows:
            return
        table = self._parse_table(rows)
        if table is None:
            table = self._parse_slow(rows)
        if table.num_rows == 0:
            return
        ts = table.column("timestamp").to_numpy(zero_copy_only=False)
        values = table.column("metric_value").to_numpy(zero_copy_only=False)
        status = (table.column("status").fill_null(0).to_numpy(zero_copy_only=False) if "status" in table.column_names
                  else np.zeros(len(ts), dtype=np.int32))
        if "extra_tags" in table.column_names:
            ep_arr = pc.struct_field(pc.extract_regex(table.column("extra_tags"), _RE_ENDPOINT), [0])
            ep_arr = pc.fill_null(ep_arr, UNTAGGED)
        else:
            ep_arr = pa.array([UNTAGGED] * len(ts))
        enc = pc.dictionary_encode(ep_arr).combine_chunks()
        ep_names = enc.dictionary.to_pylist()
        ep_idx = enc.indices.to_numpy(zero_copy_only=False)
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
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            idx = order[a:b]
            g = int(gsorted[a])
            key = (g // 1024, ep_names[g % 1024])
            acc = self._acc.get(key)
            if acc is None:
                acc = self._acc[key] = _Acc()
            acc.hist.add_values(values[idx])
            codes, counts = np.unique(status[idx], return_counts=True)
            for c, n in zip(codes.tolist(), counts.tolist(), strict=True):
                acc.codes[c] = acc.codes.get(c, 0) + n
        if self.keep_requests:
            self._write_requests(table, ts, values, status, ep_names, ep_idx)

    def _write_requests(self, table: pa.Table, ts: np.ndarray, values: np.ndarray, status: np.ndarray,
                        ep_names: list[str], ep_idx: np.ndarray) -> None:
        cols = table.column_names
        names = table.column("name").to_pylist() if "name" in cols else [None] * len(ts)
        errs = table.column("error_code").to_pylist() if "error_code" in cols else [None] * len(ts)
        extras = table.column("extra_tags").to_pylist() if "extra_tags" in cols else [""] * len(ts)
        k6sc = table.column("scenario").to_pylist() if "scenario" in cols else [None] * len(ts)
        methods = table.column("method").to_pylist() if "method" in cols else [None] * len(ts)
        rows = []
        for i in range(len(ts)):
            tags = _parse_tags(extras[i])
            tags.pop("endpoint", None)
            if k6sc[i]:
                tags["k6_scenario"] = k6sc[i]
            if methods[i]:
                tags["method"] = methods[i]
            rows.append({"scenario_run_id": self.scenario_run_id, "ts": float(ts[i]) / 1000.0,
                         "endpoint": ep_names[ep_idx[i]], "name": names[i] or None, "status": int(status[i]),
                         "duration_ms": float(values[i]), "error_code": errs[i] or None, "tags": tags or None})
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
            tags = _parse_tags(fields.get("extra_tags", ""))
            for k in ("name", "scenario", "status"):
                if fields.get(k):
                    tags["k6_scenario" if k == "scenario" else k] = fields[k]
            out.append({"scenario_run_id": self.scenario_run_id, "ts": p[0] / 1000.0,
                        "metric": name.decode(), "value": p[1], "tags": tags or None})
        if out:
            with self.engine.begin() as c:
                c.execute(insert(store.k6_samples), out)
            self.summary.sample_rows += len(out)

    # -- writing ---------------------------------------------------------------------------------
    def _flush(self, *, final: bool) -> None:
        limit = None if final else self._watermark - self.lag_s
        ready = sorted({sec for sec, _ in self._acc if limit is None or sec <= limit})
        agg_rows: list[dict[str, Any]] = []
        per_second: list[tuple[int, dict[str, SecondAggregate]]] = []
        for sec in ready:
            eps = {ep: self._acc.pop((sec, ep)).summary(sec, ep) for (s, ep) in list(self._acc) if s == sec}
            per_second.append((sec, eps))
            for a in eps.values():
                agg_rows.append({"scenario_run_id": self.scenario_run_id, "second": sec, "endpoint": a.endpoint,
                                 "count": a.count, "s2xx": a.s2xx, "s3xx": a.s3xx, "s4xx": a.s4xx, "s5xx": a.s5xx,
                                 "failed": a.failed, "codes": a.codes, "p50_ms": a.p50_ms, "p95_ms": a.p95_ms,
                                 "p99_ms": a.p99_ms, "max_ms": a.max_ms, "sketch": a.sketch})
        samples = []
        for table_, metric in ((self._vus, "vus"), (self._dropped, "dropped_iterations")):
            for sec in sorted(s for s in table_ if limit is None or s <= limit):
                samples.append({"scenario_run_id": self.scenario_run_id, "ts": float(sec), "metric": metric,
                                "value": table_.pop(sec), "tags": None})
        errors_changed = self.summary.ingest_errors != self._errors_written
        if agg_rows or samples or errors_changed or final:
            with self.engine.begin() as c:
                if agg_rows:
                    c.execute(insert(store.second_aggregates), agg_rows)
                if samples:
                    c.execute(insert(store.k6_samples), samples)
                if errors_changed or final:
                    c.execute(update(store.scenario_runs).where(store.scenario_runs.c.id == self.scenario_run_id)
                              .values(ingest_errors=self.summary.ingest_errors))
            self._errors_written = self.summary.ingest_errors
            self.summary.aggregate_rows += len(agg_rows)
            self.summary.sample_rows += len(samples)
            self.summary.seconds_written += len(per_second)
        for sec, eps in per_second:
            self._update_live(sec, eps)
            if self.on_second is not None:
                try:
                    self.on_second(self.scenario, sec, eps)
                except Exception:  # the hook must never stop the ingest
                    log.exception("on_second hook failed for %s second %s", self.scenario, sec)

    def _update_live(self, sec: int, eps: dict[str, SecondAggregate]) -> None:
        counted = [a for ep, a in eps.items() if ep != "ADMIN"]
        n = sum(a.count for a in counted)
        errors = sum(a.s5xx + a.failed for a in counted)
        hist = Histogram()
        for a in counted:
            hist.merge(Histogram.from_bytes(a.sketch))
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


def ingest_file(engine: Engine, scenario_run_id: int, scenario: str, path: str | Path, *,
                keep_requests: bool | None = None, on_second: OnSecond | None = None) -> IngestSummary:
    """Ingest a finished k6 CSV file in one go (same code path as streaming)."""
    ing = K6CsvIngest(engine, scenario_run_id, scenario, path, keep_requests=keep_requests, on_second=on_second)
    return ing.finish()


def start_streaming(engine: Engine, scenario_run_id: int, scenario: str, path: str | Path, *,
                    keep_requests: bool | None = None, on_second: OnSecond | None = None,
                    interval_s: float = 0.5) -> IngestThread:
    """Start tailing `path` (it may not exist yet) on a thread; `thread.stop()` finishes and returns the summary."""
    th = IngestThread(K6CsvIngest(engine, scenario_run_id, scenario, path, keep_requests=keep_requests,
                                  on_second=on_second), interval_s)
    th.start()
    return th
