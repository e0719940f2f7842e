"""KPIs the verdict stage derives itself: from server samples, and trends from the per-second table.

`db_pool_use` is the 95th percentile of the sampled pool use (see POOL_USE_QUANTILE), not its maximum.

Server samples arrive under the brief's KPI names (db_pool_in_use, rss_bytes, …), possibly one series
per worker or instance (told apart by `labels`). Gauges are summed across series at each timestamp
(a service of N workers has N pools); counters are turned into increases per series (resets handled)
and summed.

Trends (soak, R-SOAK-1 and R-SOAK-4) are least-squares lines over the stage, reported as growth from
the line's start to its end relative to its start: robust to the noise of single samples, and zero
for a flat series whatever its level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from soundcheck.plan import KPIS, PLAN, SETUP_TAG, SPIKE_PHASES
from tasks.rundata import StageData, _ts

#: `db_pool_use` is the 95th percentile of the sampled in-use / size ratio: the sustained use the plan's
#: band speaks of. The maximum of 2-second gauge samples is one instant (any burst fills a pool of 5 for a
#: moment) and is kept as `db_pool_use_max`, unbanded; exhaustion itself is judged by the pool-timeout
#: counter (R-SPIKE-5, R-SOAK-2), which counts every request that waited too long for a connection.
POOL_USE_QUANTILE = 0.95

UNITS = {name: k.unit for name, k in KPIS.items() if k.derived}

#: What each server KPI needs; a stage under load that lacks them could not be judged (INCONCLUSIVE).
REQUIRED_SERVER_KPIS: dict[str, tuple[str, ...]] = {s.name: s.server_kpis for s in PLAN.values() if s.server_kpis}


@dataclass
class Derived:
    name: str
    value: float | None
    unit: str
    phase: str | None = None


def _label_key(labels: object) -> str:
    if isinstance(labels, dict):
        return json.dumps(labels, sort_keys=True)
    return "" if labels is None or (isinstance(labels, float) and np.isnan(labels)) else str(labels)


def gauge(server: pd.DataFrame, kpi: str) -> pd.Series:
    """A gauge summed across its series at each timestamp, indexed by ts."""
    s = server[server["kpi"] == kpi]
    if s.empty:
        return pd.Series(dtype=float)
    return s.groupby("ts")["value"].sum().sort_index()


def counter_increase(server: pd.DataFrame, kpi: str) -> float | None:
    """Increase of a counter over the samples, per series with resets handled, summed."""
    s = server[server["kpi"] == kpi]
    if s.empty:
        return None
    total = 0.0
    for _, g in s.assign(_k=s["labels"].map(_label_key)).groupby("_k"):
        v = g.sort_values("ts")["value"].to_numpy(dtype=float)
        d = np.diff(v)
        total += float(np.where(d >= 0, d, v[1:]).sum())  # a drop is a restart: count from zero
    return total


def growth(ts: np.ndarray, values: np.ndarray) -> tuple[float | None, float | None]:
    """(relative, absolute) growth of the least-squares line from the first to the last timestamp."""
    ok = ~(np.isnan(ts) | np.isnan(values))
    ts, values = ts[ok], values[ok]
    if len(ts) < 3 or ts.max() == ts.min():
        return None, None
    slope, intercept = np.polyfit(ts - ts.min(), values, 1)
    span = ts.max() - ts.min()
    start = intercept if intercept > 0 else float(np.mean(values))
    absolute = float(slope * span)
    return (absolute / start if start > 0 else None), absolute


def server_kpis(server: pd.DataFrame, phase: str | None = None) -> list[Derived]:
    """The brief's server-derived KPIs from one stage's (or one phase's) samples."""
    out: list[Derived] = []

    def add(name: str, value: float | None) -> None:
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            out.append(Derived(name, float(value), UNITS[name], phase))

    if server.empty:
        return out
    in_use, size = gauge(server, "db_pool_in_use"), gauge(server, "db_pool_size")
    if not in_use.empty and not size.empty:
        both = pd.concat([in_use.rename("u"), size.rename("s")], axis=1).sort_index().ffill().dropna()
        both = both[both["s"] > 0]
        if not both.empty:
            ratio = both["u"] / both["s"]
            add("db_pool_use", float(ratio.quantile(POOL_USE_QUANTILE, interpolation="lower")))
            add("db_pool_use_max", float(ratio.max()))
    add("db_pool_timeouts", counter_increase(server, "db_pool_timeouts_total"))
    add("lock_timeouts", counter_increase(server, "lock_timeouts_total"))
    lag = gauge(server, "consumer_lag_messages")
    add("consumer_lag", float(lag.max()) if not lag.empty else None)
    lag_s = server[server["kpi"] == "consumer_lag_seconds"]["value"]
    add("consumer_lag_s", float(lag_s.max()) if not lag_s.empty else None)
    redis = gauge(server, "redis_memory_bytes")
    add("redis_memory_bytes", float(redis.max()) if not redis.empty else None)
    gc = server[server["kpi"] == "gc_pause_max_s"]["value"]
    add("gc_pause_max_ms", float(gc.max()) * 1000 if not gc.empty else None)
    cpu = server[server["kpi"] == "db_cpu_percent"]["value"]
    add("db_cpu_percent", float(cpu.max()) if not cpu.empty else None)
    heap, heap_max = gauge(server, "heap_used_bytes"), gauge(server, "heap_max_bytes")
    if not heap.empty and not heap_max.empty:
        both = pd.concat([heap.rename("u"), heap_max.rename("m")], axis=1).sort_index().ffill().dropna()
        both = both[both["m"] > 0]
        if not both.empty:
            add("heap_use", float((both["u"] / both["m"]).max()))
    outbox = gauge(server, "outbox_pending")
    add("outbox_backlog", float(outbox.max()) if not outbox.empty else None)
    age = server[server["kpi"] == "outbox_oldest_age_s"]["value"]
    add("outbox_oldest_age_s", float(age.max()) if not age.empty else None)
    # memory growth: resident memory, else heap (a JVM target reports heap)
    for mem_kpi in ("rss_bytes", "heap_used_bytes"):
        mem = gauge(server, mem_kpi)
        if len(mem) >= 3:
            rel, _ = growth(mem.index.to_numpy(dtype=float), mem.to_numpy(dtype=float))
            add("memory_growth", rel)
            break
    return out


def latency_trend(seconds: pd.DataFrame, windows: int = 30) -> tuple[float | None, float | None]:
    """Growth of p95 latency over the stage (R-SOAK-4), per endpoint: per window, the request-weighted mean
    of the endpoint's per-second p95, then a least-squares line over the windows. The endpoint whose line
    rises most (by `upward_ms`) is returned. Per endpoint, because a mix of a slow endpoint (a 1 s concert
    list) and fast ones has a mean that follows the mix, not the latency: more concert-list calls in a
    window would read as a trend."""
    s = seconds[(seconds["count"] > 0) & (seconds["endpoint"] != SETUP_TAG)].dropna(subset=["p95_ms"])
    if s.empty:
        return None, None
    lo, hi = int(s["second"].min()), int(s["second"].max())
    width = max(1, (hi - lo + 1) // windows)
    best: tuple[float | None, float | None] = (None, None)
    for _, e in s.groupby("endpoint"):
        w = e.assign(_w=(e["second"] - lo) // width, _x=e["p95_ms"] * e["count"])
        g = w.groupby("_w").agg(x=("_x", "sum"), n=("count", "sum"))
        rel, absolute = growth(g.index.to_numpy(dtype=float) * width, (g["x"] / g["n"]).to_numpy(dtype=float))
        if rel is None:
            continue
        if best[0] is None or (upward_ms(rel, absolute), rel) > (upward_ms(*best), best[0]):
            best = (rel, absolute)
    return best


def upward_ms(relative: float | None, absolute: float | None) -> float:
    """R-SOAK-4's "no continuous increase": the p95 line's rise in ms, counted only when it is also
    more than 10 % of where it started (a 3 → 4 ms drift on an idle machine is not a trend)."""
    if relative is None or absolute is None or relative <= TREND_MIN_RELATIVE:
        return 0.0
    return max(0.0, absolute)


TREND_MIN_RELATIVE = 0.10


def load_start(st: StageData) -> float | None:
    """Epoch second the load began: the first per-second row, else the stage's start."""
    if not st.seconds.empty:
        return float(st.seconds["second"].min())
    return _ts(st.started_at)


def phase_windows(st: StageData, time_scale: float) -> dict[str, tuple[float, float]]:
    """Spike phase windows in epoch seconds: from the stage's details when the load stage recorded
    them ({"phases": {"ramp_up": [start, end], …}}, offsets from the load start or epoch seconds),
    else the plan's 10 s / 60 s / 120 s times scaled by --time-scale. The last phase runs to the end."""
    start = load_start(st)
    if start is None:
        return {}
    given = st.details.get("phases") if isinstance(st.details, dict) else None
    raw = (
        {k: (float(v[0]), float(v[1])) for k, v in given.items()}
        if isinstance(given, dict) and given
        else {k: (a * time_scale, b * time_scale) for k, (a, b) in SPIKE_PHASES.items()}
    )
    out = {k: ((a, b) if a > 1e9 else (start + a, start + b)) for k, (a, b) in raw.items()}
    end = max(float(st.seconds["second"].max()) + 1 if not st.seconds.empty else 0, _ts(st.finished_at) or 0)
    last = max(out, key=lambda k: out[k][1])
    out[last] = (out[last][0], max(out[last][1], end))
    return out


def stage_kpis(st: StageData, time_scale: float = 1.0) -> list[Derived]:
    """Every KPI the verdict stage derives for one stage (and per phase for the spike)."""
    out = server_kpis(st.server)
    if not st.seconds.empty:
        n = float(st.seconds["count"].sum())
        if n > 0:
            out.append(Derived("unanswered_rate", float(st.seconds["failed"].sum()) / n, UNITS["unanswered_rate"]))
    k6 = st.k6
    if not k6.empty and k6["metric"].astype(str).str.startswith("sc_saga").any():
        # sagas the client watched until it gave up (saga.js, spike.js): not "unmeasured", the harm itself
        n = float(k6.loc[k6["metric"] == "sc_saga_unfinished", "value"].sum())
        out.append(Derived("sagas_unfinished", n, UNITS["sagas_unfinished"]))
    if st.scenario == "soak":
        rel, absolute = latency_trend(st.seconds)
        if rel is not None:
            out.append(Derived("latency_trend", rel, UNITS["latency_trend"]))
            out.append(Derived("latency_trend_ms", absolute, UNITS["latency_trend_ms"]))
            out.append(Derived("latency_upward_ms", upward_ms(rel, absolute), UNITS["latency_upward_ms"]))
    if st.scenario == "spike" and not st.server.empty:
        for ph, (a, b) in phase_windows(st, time_scale).items():
            part = st.server[(st.server["ts"] >= a) & (st.server["ts"] < b)]
            out.extend(d for d in server_kpis(part, ph) if d.name != "memory_growth")
    return out
