"""Safety (R-SAFE, plan §6): refuse hosts off the allowlist, stop the load on harm, roll back.

- Allowlist: `check_allowlist`, the httpx guard and `k6_guard_args` live in `soundcheck.allowlist`
  (every step imports them from there or from here).
- Abort on harm: `AbortWatcher` is fed live — `on_second` from the ingest stage's per-second aggregates,
  `on_sample` from the server-metric sampler — and sets the load stage's abort `threading.Event` the
  moment an alarm band of `Profile.abort` is breached (the plan's soak watch bands: error rate > 1 %,
  p95 > 3 s, pool exhaustion sustained, Redis memory > 1 GB, consumer lag > 1,000, outbox backlog;
  plus heap > 85 % where the target reports a heap maximum). The caller then records the abort
  (`record_abort`) and runs the plan's rollback (`rollback`).
- Rollback (§6.2), each step logged and stored in `events` (kind "rollback", outcome ok/failed/skipped):
  take the test targets out of the ALB target group (AWS), delete this run's test data and nothing
  else (rows created at or after the run's start), restart the service.

Windowing rules (documented because they decide when a run is stopped):
- error rate: 5xx + unanswered over all answered-or-not requests in the last `window_s` seconds of data,
  once at least `min_requests` requests are in the window (ADMIN requests excluded);
- p95: above `p95_ms` in every second of the window that had requests, the window's data spanning at
  least `window_s` seconds (a slow second is not harm; a slow service is). When the ingest stage
  supplies mergeable sketches, the window's merged p95 is used instead;
- pool exhaustion: the pool is full with requests waiting, or its timeout counter rose, continuously for
  `pool_exhaustion_s` (sample timestamps);
- Redis memory, consumer lag, outbox backlog, heap: one sample above the alarm level (these levels are
  the plan's alarms, far above normal; a gauge does not spike there by chance).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from infra.reference_admin import delete_test_data_admin  # noqa: F401 - the fast path, re-exported
from soundcheck.allowlist import (  # noqa: F401  (re-exported: the safety API in one place)
    AllowlistError,
    check_allowlist,
    check_profile_urls,
    guarded_async_client,
    guarded_client,
    k6_guard_args,
    k6_guard_env,
)
from soundcheck.plan import ABORT, SETUP_TAG, TEST_DATA_TABLES
from soundcheck.profile import Abort, Profile
from soundcheck.redact import install_redaction, redact, redact_json, redact_tree  # noqa: F401
from soundcheck.schema_map import PLAN_NAMES, SchemaMap, load_schema_map

log = logging.getLogger("tasks.safety")

HEAP_ALARM_SHARE = ABORT.heap_share


class StageAborted(RuntimeError):
    """The load was stopped on harm; the reason is the breach sentence."""


@dataclass
class Breach:
    """An alarm band crossed: which, by how much, and when (data time and wall-clock detection)."""

    rule: str  # error_rate | p95_ms | pool_exhaustion | redis_memory | consumer_lag | outbox_backlog | heap
    observed: float
    threshold: float
    data_ts: float  # epoch seconds: end of the data that shows the breach
    detected_at: float  # epoch seconds (wall clock) when the watcher saw it and set the abort event
    detail: str = ""

    def reason(self) -> str:
        """One sentence for runs.reason / scenario_runs.reason and the Slack message."""
        units = {
            "error_rate": lambda v: f"{v:.1%}",
            "p95_ms": lambda v: f"{v:,.0f} ms",
            "pool_exhaustion": lambda v: f"{v:.0f} s",
            "redis_memory": lambda v: f"{v / 1024**2:,.0f} MB",
            "heap": lambda v: f"{v:.0%}",
        }
        fmt = units.get(self.rule, lambda v: f"{v:,.0f}")
        what = {
            "error_rate": "error rate",
            "p95_ms": "p95 response time",
            "pool_exhaustion": "DB pool exhausted for",
            "redis_memory": "Redis memory",
            "consumer_lag": "consumer lag",
            "outbox_backlog": "outbox backlog",
            "heap": "heap use",
        }
        s = (
            f"aborted on harm: {what.get(self.rule, self.rule)} {fmt(self.observed)} "
            f"above the alarm level {fmt(self.threshold)}"
        )
        return s + (f" ({self.detail})." if self.detail else ".")


@dataclass
class _Second:
    count: int = 0
    errors: int = 0
    p95: list[tuple[float, int]] = field(default_factory=list)  # (p95 ms, count) per endpoint row
    sketches: list[Any] = field(default_factory=list)


def _get(row: Any, key: str, default: Any = None) -> Any:
    if isinstance(row, Mapping):
        return row.get(key, default)
    return getattr(row, key, default)


class AbortWatcher:
    """Watches the live stream against the alarm bands; sets `event` at the first breach.

    Thread-safe: the ingest stage and the sampler call it from their own threads. After a breach
    further input is ignored (the first breach is the reason).
    """

    def __init__(
        self,
        bands: Abort | Profile,
        event: threading.Event | None = None,
        *,
        on_breach: Callable[[Breach], None] | None = None,
        clock: Callable[[], float] = time.time,
        sketch_quantile: Callable[[list[Any], float], float | None] | None = None,
    ) -> None:
        self.bands = bands.abort if isinstance(bands, Profile) else bands
        self.event = event if event is not None else threading.Event()
        self.on_breach = on_breach
        self.clock = clock
        self.sketch_quantile = sketch_quantile if sketch_quantile is not None else _soundcheck_sketch_quantile
        self.breach: Breach | None = None
        self.stopped_at: float | None = None
        self._lock = threading.Lock()
        self._seconds: dict[int, _Second] = defaultdict(_Second)
        self._latest_second: int | None = None
        self._first_second: int | None = None
        self._gauges: dict[tuple[str, str], tuple[float, float]] = {}  # (kpi, instance) → (ts, value)
        self._pool_since: dict[str, float | None] = {}
        self._last_timeouts: dict[str, float] = {}
        self._recent_timeout_rise: dict[str, float] = {}
        self.seconds_seen = 0
        self.samples_seen = 0

    # ------------------------------------------------------------------ public feed
    @property
    def tripped(self) -> bool:
        return self.breach is not None

    def on_second(self, *args: Any) -> None:
        """Per-second aggregates from the ingest stage.

        Called as the ingest hook `on_second(scenario, second, {endpoint: SecondAggregate})`, or with one
        row / an iterable of rows (mapping or object with `second`, `endpoint`, `count`, `s5xx`, `failed`,
        `p95_ms`, optional `sketch`)."""
        if not self.bands.enabled or self.breach is not None:
            return
        agg = args[-1]
        if isinstance(agg, Mapping) and "second" not in agg:
            agg = list(agg.values())  # {endpoint: aggregate}
        rows = [agg] if isinstance(agg, Mapping) or hasattr(agg, "second") else list(agg)
        with self._lock:
            for row in rows:
                if (_get(row, "endpoint") or "") == SETUP_TAG:
                    continue
                sec = int(_get(row, "second"))
                n = int(_get(row, "count", 0) or 0)
                if n <= 0:
                    continue
                s = self._seconds[sec]
                s.count += n
                s.errors += int(_get(row, "s5xx", 0) or 0) + int(_get(row, "failed", 0) or 0)
                p95 = _get(row, "p95_ms")
                if p95 is not None and not (isinstance(p95, float) and math.isnan(p95)):
                    s.p95.append((float(p95), n))
                sk = _get(row, "sketch")
                if sk is not None:
                    s.sketches.append(sk)
                self._first_second = sec if self._first_second is None else min(self._first_second, sec)
                self._latest_second = sec if self._latest_second is None else max(self._latest_second, sec)
                self.seconds_seen += 1
            breach = self._check_client()
        if breach:
            self._trip(breach)

    def on_sample(
        self,
        sample: Any = None,
        value: float | None = None,
        ts: float | None = None,
        labels: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        """A server-metric sample: `on_sample(kpi, value, ts, labels)` or `on_sample(row)` where the row has
        `kpi`, `value`, `ts`, `labels` (a server_samples row). Several rows may be passed as a list."""
        if not self.bands.enabled or self.breach is not None:
            return
        if isinstance(sample, list | tuple):
            for s in sample:
                self.on_sample(s)
            return
        if isinstance(sample, str):
            kpi = sample
        else:
            row = sample if sample is not None else kw
            kpi, value = _get(row, "kpi"), _get(row, "value")
            ts, labels = _get(row, "ts"), _get(row, "labels")
        if kpi is None or value is None:
            return
        ts = float(ts) if ts is not None else self.clock()
        inst = str((labels or {}).get("instance", "")) if isinstance(labels, Mapping) else ""
        with self._lock:
            self.samples_seen += 1
            self._gauges[(kpi, inst)] = (ts, float(value))
            breach = self._check_server(kpi, inst, ts)
        if breach:
            self._trip(breach)

    def mark_stopped(self, at: float | None = None) -> None:
        """The load stage reports when k6 exited after the abort (for the stop-time figure)."""
        self.stopped_at = self.clock() if at is None else at

    def stop_latency_s(self) -> dict[str, float] | None:
        """Breach-to-stop timings: detection (data second end → watcher), stop (watcher → k6 exited)."""
        if self.breach is None or self.stopped_at is None:
            return None
        b = self.breach
        return {
            "detect_s": round(b.detected_at - b.data_ts, 3),
            "stop_s": round(self.stopped_at - b.detected_at, 3),
            "total_s": round(self.stopped_at - b.data_ts, 3),
        }

    # ------------------------------------------------------------------ rules
    def _window(self) -> list[tuple[int, _Second]]:
        assert self._latest_second is not None
        lo = self._latest_second - max(1, int(math.ceil(self.bands.window_s))) + 1
        for old in [k for k in self._seconds if k < lo - 60]:
            del self._seconds[old]  # keep memory bounded on long soaks
        return sorted((k, v) for k, v in self._seconds.items() if k >= lo)

    def _check_client(self) -> Breach | None:
        if self._latest_second is None:
            return None
        b = self.bands
        win = self._window()
        total = sum(s.count for _, s in win)
        errors = sum(s.errors for _, s in win)
        data_ts = float(self._latest_second + 1)
        if total >= max(1, b.min_requests) and errors / total > b.error_rate:
            return self._breach(
                "error_rate",
                errors / total,
                b.error_rate,
                data_ts,
                f"{errors} of {total} requests failed or answered 5xx in {len(win)} s",
            )
        spans = self._first_second is not None and self._latest_second - self._first_second + 1 >= b.window_s
        if not b.on_latency or not spans or not win:
            return None
        if self.sketch_quantile is not None and all(s.sketches for _, s in win):
            q = self.sketch_quantile([sk for _, s in win for sk in s.sketches], 0.95)
            if q is not None:
                if q > b.p95_ms:
                    return self._breach("p95_ms", q, b.p95_ms, data_ts, f"all requests of the last {len(win)} s")
                return None
        per_second = [_weighted_p95(s.p95) for _, s in win if s.p95]
        if len(per_second) >= min(len(win), max(1, int(b.window_s))) and min(per_second) > b.p95_ms:
            return self._breach(
                "p95_ms", min(per_second), b.p95_ms, data_ts, f"every second of the last {len(per_second)} s"
            )
        return None

    def _check_server(self, kpi: str, inst: str, ts: float) -> Breach | None:
        b = self.bands
        v = self._gauges[(kpi, inst)][1]
        where = f" on {inst}" if inst else ""
        if kpi == "redis_memory_bytes" and v > b.redis_memory_bytes:
            return self._breach("redis_memory", v, b.redis_memory_bytes, ts, f"redis_memory_bytes{where}")
        if kpi == "consumer_lag_messages" and v > b.consumer_lag:
            return self._breach("consumer_lag", v, b.consumer_lag, ts, f"consumer_lag_messages{where}")
        if kpi == "outbox_pending" and v > b.outbox_backlog:
            return self._breach("outbox_backlog", v, b.outbox_backlog, ts, f"outbox_pending{where}")
        if kpi in ("heap_used_bytes", "heap_max_bytes"):
            used, mx = self._gauges.get(("heap_used_bytes", inst)), self._gauges.get(("heap_max_bytes", inst))
            if used and mx and mx[1] > 0 and used[1] / mx[1] > HEAP_ALARM_SHARE:
                return self._breach("heap", used[1] / mx[1], HEAP_ALARM_SHARE, ts, f"heap{where}")
        if kpi in ("db_pool_in_use", "db_pool_size", "db_pool_waiting", "db_pool_timeouts_total"):
            return self._check_pool(kpi, inst, ts)
        return None

    def _check_pool(self, kpi: str, inst: str, ts: float) -> Breach | None:
        b = self.bands
        if kpi == "db_pool_timeouts_total":
            v = self._gauges[(kpi, inst)][1]
            prev = self._last_timeouts.get(inst)
            self._last_timeouts[inst] = v
            if prev is not None and v > prev:
                self._recent_timeout_rise[inst] = ts
            elif prev is not None:
                self._recent_timeout_rise.pop(inst, None)
        g = self._gauges
        size, used, waiting = (
            g.get(("db_pool_size", inst)),
            g.get(("db_pool_in_use", inst)),
            g.get(("db_pool_waiting", inst)),
        )
        full = bool(size and used and waiting and used[1] >= size[1] > 0 and waiting[1] > 0)
        exhausted = full or inst in self._recent_timeout_rise
        if not exhausted:
            self._pool_since[inst] = None
            return None
        since = self._pool_since.get(inst)
        if since is None:
            self._pool_since[inst] = since = ts
        held = ts - since
        if held >= b.pool_exhaustion_s:
            where = f" on {inst}" if inst else ""
            why = "requests waiting on a full pool" if full else "pool timeouts rising"
            return self._breach("pool_exhaustion", held, b.pool_exhaustion_s, ts, f"{why}{where}")
        return None

    def _breach(self, rule: str, observed: float, threshold: float, data_ts: float, detail: str) -> Breach:
        return Breach(rule, float(observed), float(threshold), float(data_ts), self.clock(), detail)

    def _trip(self, breach: Breach) -> None:
        with self._lock:
            if self.breach is not None:
                return
            self.breach = breach
        with contextlib.suppress(AttributeError):  # the load stage reports `event.reason` as the stage's reason
            self.event.reason = breach.reason()  # type: ignore[attr-defined]
        self.event.set()  # first: the load stage is waiting on it
        log.warning("%s Stopping the load.", breach.reason())
        if self.on_breach is not None:
            try:
                self.on_breach(breach)
            except Exception:  # the abort must not depend on a callback
                log.exception("abort callback failed")


def _soundcheck_sketch_quantile(sketches: list[Any], q: float) -> float | None:
    """Merge the ingest stage's per-second sketches (`soundcheck.sketch`) and read a quantile."""
    blobs = [b for b in sketches if isinstance(b, bytes | bytearray | memoryview)]
    if len(blobs) != len(sketches):
        return None
    from soundcheck.sketch import merge_bytes

    try:
        return merge_bytes(bytes(b) for b in blobs).quantile(q)
    except ValueError:  # not our sketch format: fall back to the per-second rule
        return None


def _weighted_p95(rows: list[tuple[float, int]]) -> float:
    """A second's p95 from its endpoints' p95s: the count-weighted median of them (one endpoint: itself)."""
    rows = sorted(rows)
    half = sum(n for _, n in rows) / 2
    acc = 0
    for v, n in rows:
        acc += n
        if acc >= half:
            return v
    return rows[-1][0]


# ------------------------------------------------------------------------------------ recording


def record_abort(
    engine: Any, run_id: str, scenario_run_id: int | None, watcher: AbortWatcher, **scenario_values: Any
) -> str:
    """Store the abort: the stage ABORTED with the reason and timings, an `abort` event, the run's reason.

    The run itself is finished by the orchestrator (`store.finish_run(..., "ABORTED", ...)`) after the
    rollback; this returns the reason sentence it should use.
    """
    from soundcheck import store

    b = watcher.breach
    reason = b.reason() if b else "aborted."
    timings = watcher.stop_latency_s()
    detail = {"breach": asdict(b) if b else None, "stop": timings}
    if scenario_run_id is not None:
        from sqlalchemy import select

        with engine.connect() as c:
            before, finished = c.execute(
                select(store.scenario_runs.c.details, store.scenario_runs.c.finished_at).where(
                    store.scenario_runs.c.id == scenario_run_id
                )
            ).one()
        if watcher.stopped_at is None and finished is not None and watcher.breach is not None:
            # the load stage finished the stage row when k6 had exited and its output was read
            fin = finished if finished.tzinfo else finished.replace(tzinfo=UTC)
            watcher.mark_stopped(max(fin.timestamp(), watcher.breach.detected_at))
        timings = watcher.stop_latency_s()
        detail["stop"] = timings
        details = {**(before or {}), **(scenario_values.pop("details", None) or {})}
        details["abort"] = detail
        store.finish_scenario(engine, scenario_run_id, "ABORTED", reason=reason, details=details, **scenario_values)
    extra = (
        f" k6 stopped {timings['stop_s']:.2f} s after detection, {timings['total_s']:.2f} s after the "
        "breaching second ended."
        if timings
        else ""
    )
    store.record_event(engine, run_id, "abort", "ok", reason + extra)
    return reason


# -------------------------------------------------------------------------------------- rollback


@dataclass
class StepResult:
    step: str  # deregister_targets | delete_test_data | restart_service
    outcome: str  # ok | failed | skipped
    detail: str
    seconds: float = 0.0


def _run_step(engine: Any, run_id: str, step: str, fn: Callable[[], str | None] | None, skip_reason: str) -> StepResult:
    t0 = time.monotonic()
    if fn is None:
        res = StepResult(step, "skipped", skip_reason)
    else:
        try:
            res = StepResult(step, "ok", redact(_describe(fn())))
        except Exception as e:  # every step runs even when one fails; the failure is recorded
            res = StepResult(step, "failed", redact(f"{type(e).__name__}: {e}"))
    res.seconds = round(time.monotonic() - t0, 3)
    level = logging.WARNING if res.outcome == "failed" else logging.INFO
    log.log(level, "rollback %s: %s (%s)", step, res.outcome, res.detail)
    if engine is not None:
        try:
            from soundcheck import store

            store.record_event(engine, run_id, "rollback", res.outcome, f"{step}: {res.detail}")
        except Exception:
            log.exception("could not store rollback step %s", step)
    return res


def rollback(
    engine: Any,
    run_id: str,
    *,
    deregister: Callable[[], str | None] | None = None,
    delete_test_data: Callable[[], str | None] | None = None,
    restart: Callable[[], str | None] | None = None,
) -> list[StepResult]:
    """The plan's rollback (§6.2) after k6 is stopped: each step is attempted, logged and stored.

    Steps are callables so the orchestrator passes what its environment offers (see
    `rollback_steps_for`); a missing one is recorded as skipped with the reason.
    """
    return [
        _run_step(engine, run_id, "deregister_targets", deregister, "no load balancer in this environment"),
        _run_step(engine, run_id, "delete_test_data", delete_test_data, "no way to reach the target's data"),
        _run_step(engine, run_id, "restart_service", restart, "the environment cannot restart the service"),
    ]


def delete_test_data_sql(
    database_url: str, since: datetime, tables: Iterable[str] = TEST_DATA_TABLES, names: SchemaMap = PLAN_NAMES
) -> str:
    """DELETE the rows created at or after `since` from the plan's test-data tables (§6.2) — nothing else;
    under the target's names (`names`, its schema map).

    Tables without a `created_at` column or missing from the database are skipped, and said so.
    `since` is compared in UTC; a naive `created_at` column is assumed to hold UTC.
    """
    from sqlalchemy import create_engine, inspect, text

    since_utc = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
    eng = create_engine(database_url, future=True)
    done: list[str] = []
    try:
        insp = inspect(eng)
        present = set(insp.get_table_names())
        with eng.begin() as c:
            for plan_table in tables:
                t, created = names.table(plan_table), names.column(plan_table, "created_at")
                if t not in present:
                    done.append(f"{t}: absent")
                    continue
                cols = {col["name"]: col for col in insp.get_columns(t)}
                if created not in cols:
                    done.append(f"{t}: no {created}, left alone")
                    continue
                tz_aware = bool(getattr(cols[created]["type"], "timezone", False))
                param = since_utc if tz_aware else since_utc.replace(tzinfo=None)
                if eng.dialect.name == "sqlite":  # stored as text: compare in the same ISO form
                    param = since_utc.replace(tzinfo=None).isoformat(sep=" ")
                # names come from the plan catalogue and the profile's schema map, never from data
                n = c.execute(text(f"DELETE FROM {t} WHERE {created} >= :since"), {"since": param}).rowcount
                done.append(f"{t}: {n} deleted")
    finally:
        eng.dispose()
    return f"rows created since {since_utc.isoformat()}: " + ", ".join(done)


def _as_datetime(since: datetime | str) -> datetime:
    return since if isinstance(since, datetime) else datetime.fromisoformat(str(since))


def rollback_steps_for(
    profile: Profile, handle: Any, since: datetime | str, base_url: str | None = None, database_url: str | None = None
) -> dict[str, Any]:
    """The rollback callables this environment offers, for `rollback(engine, run_id, **steps)`.

    - deregister: the environment handle's `deregister_targets()` (AWS: ALB target group), if it has one;
    - delete test data: the plan's §6.2 SQL through a DSN with write rights — the fixtures' write DSN
      (`fixtures.write_dsn_env`), else the local stack's own database, else the profile's database URL —
      under the target's schema map; the reference service's admin cleanup only where the fixtures use its
      admin fast path;
    - restart: the handle's `restart()` (local stack process or AWS instances), if it has one.
    """
    import os

    from tasks.fixtures import resolved_mode

    start = _as_datetime(since)
    steps: dict[str, Any] = {}
    dereg = getattr(handle, "deregister_targets", None)
    if callable(dereg):
        steps["deregister"] = lambda: _describe(dereg())
    env_dsn = os.environ.get(profile.fixtures.write_dsn_env) if profile.fixtures.write_dsn_env else None
    local_dsn = (getattr(getattr(handle, "endpoints", None), "extra", None) or {}).get("write_database_url")
    db = (
        env_dsn
        or (local_dsn if resolved_mode(profile) != "admin" else None)
        or profile.target.database_url
        or (database_url if profile.environment.kind != "local" else None)
    )
    url = base_url or getattr(handle, "base_url", None) or profile.target.base_url
    if db:
        names = load_schema_map(profile.target.schema_map)
        steps["delete_test_data"] = lambda: delete_test_data_sql(db, start, names=names)
    elif url and resolved_mode(profile) == "admin":
        token = os.environ.get(profile.target.admin_token_env) or getattr(handle, "admin_token", None)
        steps["delete_test_data"] = lambda: delete_test_data_admin(
            url, start, admin_token=token, allowlist=profile.target.allowlist
        )
    restart = getattr(handle, "restart", None)
    if callable(restart):
        steps["restart"] = lambda: _describe(restart())
    return steps


def _describe(result: Any) -> str:
    """A short account of a step's result; objects are named, not dumped (they may hold tokens)."""
    if result is None:
        return "done"
    if isinstance(result, str | int | float):
        return str(result)[:300]
    if isinstance(result, list | tuple):
        return (
            f"{len(result)} done: "
            + ", ".join(str(r) if isinstance(r, str | int) else type(r).__name__ for r in result)[:300]
        )
    base = getattr(result, "base_url", None)
    return f"done; answering at {base}" if base else f"done ({type(result).__name__})"


def preflight(profile: Profile) -> None:
    """Refuse what is configuration, before anything is sent: a target outside the allowlist
    (AllowlistError, a ProfileError) and a result-store URL no driver can open (bad URL, unknown
    dialect, driver not installed). A store that is merely down is found later, when the run opens it.
    Also installs log redaction for the profile's secrets."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from soundcheck.profile import ProfileError
    from soundcheck.store import store_location

    install_redaction(profile=profile)
    check_profile_urls(profile, profile.target.base_url)
    try:
        create_engine(profile.store_url).dispose()  # no connection is made here
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProfileError(f"store_url {store_location(profile.store_url)!r} cannot be used: {said}") from exc
