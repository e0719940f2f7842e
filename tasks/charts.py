"""Charts for the report and Slack, drawn with matplotlib's Agg backend (no display, no network).

Every chart is a PNG in memory; the report inlines them as base64 data URIs so the HTML opens offline.
Time axes are seconds from the start of the stage's load.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from soundcheck.models import Verification  # noqa: E402
from soundcheck.plan import SETUP_TAG  # noqa: E402
from tasks.rundata import StageData  # noqa: E402
from tasks.serverkpis import gauge, load_start  # noqa: E402

VERDICT_COLOURS = {
    "APPROVE": "#2e7d32",
    "APPROVE_WITH_TUNING": "#f9a825",
    "BLOCK": "#c62828",
    "INCONCLUSIVE": "#616161",
}
DPI = 80


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # fixed margins: bbox_inches="tight" would draw twice
    plt.close(fig)
    return buf.getvalue()


def _fig(title: str, ylabel: str, size: tuple[float, float] = (6.4, 2.6)) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=size)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.88, bottom=0.2)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_xlabel("s since load start", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return fig, ax


def load_seconds(st: StageData) -> pd.DataFrame:
    """The stage's per-second rows without the campaign's own admin calls (seeding, cleanup)."""
    return st.seconds[st.seconds["endpoint"] != SETUP_TAG] if not st.seconds.empty else st.seconds


def latency(st: StageData, t0: float) -> bytes | None:
    s = load_seconds(st)
    if s.empty:
        return None
    fig, ax = _fig(f"{st.scenario}: latency p95 (solid) / p99 (dotted) per endpoint", "ms")
    for i, (ep, g) in enumerate(s.sort_values("second").groupby("endpoint")):
        colour = f"C{i % 10}"
        ax.plot(g["second"] - t0, g["p95_ms"], color=colour, lw=1, label=ep)
        ax.plot(g["second"] - t0, g["p99_ms"], color=colour, lw=0.8, ls=":")
    ax.legend(fontsize=7, ncol=4)
    return png(fig)


def throughput(st: StageData, t0: float) -> bytes | None:
    s = load_seconds(st)
    if s.empty:
        return None
    fig, ax = _fig(f"{st.scenario}: throughput", "req/s")
    g = s.groupby("second")["count"].sum().sort_index()
    ax.plot(g.index - t0, g.values, lw=1, color="C0")
    return png(fig)


def errors(st: StageData, t0: float) -> bytes | None:
    s = load_seconds(st)
    if s.empty:
        return None
    fig, ax = _fig(f"{st.scenario}: errors", "per s")
    g = s.groupby("second")[["s5xx", "failed", "s4xx"]].sum().sort_index()
    ax.plot(g.index - t0, g["s5xx"], lw=1, color="#c62828", label="5xx")
    ax.plot(g.index - t0, g["failed"], lw=1, color="#6a1b9a", label="no answer")
    ax.plot(g.index - t0, g["s4xx"], lw=0.8, color="#9e9e9e", label="4xx (409 expected in races)")
    ax.legend(fontsize=7)
    return png(fig)


def users(st: StageData, t0: float) -> bytes | None:
    k = st.k6[st.k6["metric"] == "vus"] if not st.k6.empty else st.k6
    if k.empty:
        return None
    fig, ax = _fig(f"{st.scenario}: users (k6 VUs)", "VUs")
    g = k.groupby("ts")["value"].max().sort_index()
    ax.plot(g.index - t0, g.values, lw=1, color="C2")
    return png(fig)


def _server(
    st: StageData,
    t0: float,
    title: str,
    unit: str,
    series: list[tuple[str, str, Callable[[pd.Series], pd.Series] | None]],
) -> bytes | None:
    drawn = [(label, gauge(st.server, kpi), f) for kpi, label, f in series] if not st.server.empty else []
    drawn = [(label, s if f is None else f(s), f) for label, s, f in drawn if not s.empty]
    if not drawn:
        return None
    fig, ax = _fig(f"{st.scenario}: {title}", unit)
    for label, s, _ in drawn:
        ax.plot(s.index - t0, s.values, lw=1, label=label)
    ax.legend(fontsize=7)
    return png(fig)


def _mb(s: pd.Series) -> pd.Series:
    return s / 1024**2


def _ms(s: pd.Series) -> pd.Series:
    return s * 1000


def server_charts(st: StageData, t0: float) -> dict[str, bytes | None]:
    return {
        "DB pool use (n / size)": _server(
            st,
            t0,
            "DB pool (in use / size)",
            "connections",
            [("db_pool_in_use", "in use", None), ("db_pool_size", "size", None), ("db_pool_waiting", "waiting", None)],
        ),
        "Redis memory": _server(st, t0, "Redis memory", "MB", [("redis_memory_bytes", "used", _mb)]),
        "Consumer lag": _server(
            st,
            t0,
            "consumer lag",
            "messages",
            [("consumer_lag_messages", "lag", None), ("outbox_pending", "outbox pending", None)],
        ),
        "Memory (RSS / heap)": _server(
            st,
            t0,
            "memory",
            "MB",
            [("rss_bytes", "RSS", _mb), ("heap_used_bytes", "heap used", _mb), ("heap_max_bytes", "heap max", _mb)],
        ),
        "GC pause": _server(st, t0, "longest GC pause", "ms", [("gc_pause_max_s", "max pause", _ms)]),
    }


MIN_POINTS = 5  # a stage over in a second or two (a race) has nothing to plot over time


def chartable(st: StageData) -> bool:
    seconds = st.seconds["second"].nunique() if not st.seconds.empty else 0
    samples = st.server["ts"].nunique() if not st.server.empty else 0
    return max(seconds, samples) >= MIN_POINTS


def stage_charts(st: StageData) -> dict[str, bytes]:
    """Every chart one stage has data for, titled; absent data gives no chart (the report says so)."""
    if not chartable(st):
        return {}
    t0 = load_start(st) or 0.0
    out = {
        "Latency percentiles per endpoint": latency(st, t0),
        "Throughput": throughput(st, t0),
        "Errors": errors(st, t0),
        "Users (k6 VUs)": users(st, t0),
        **server_charts(st, t0),
    }
    return {k: v for k, v in out.items() if v is not None}


def headline(stages: dict[str, StageData], verdict: str, run_id: str) -> bytes:
    """The Slack chart: p95 per endpoint and throughput of the main load stage, verdict in the title."""
    st = next(
        (stages[s] for s in ("spike", "soak", "race", "saga", "points") if s in stages and not stages[s].seconds.empty),
        None,
    )
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 4.2), sharex=True)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.12, hspace=0.1)
    fig.suptitle(
        f"soundcheck {verdict} · {run_id}", fontsize=11, color=VERDICT_COLOURS.get(verdict, "black"), x=0.01, ha="left"
    )
    if st is None:
        a1.text(0.5, 0.5, "no per-second data", ha="center", va="center")
    else:
        s = load_seconds(st)
        t0 = load_start(st) or 0.0
        for ep, g in s.sort_values("second").groupby("endpoint"):
            a1.plot(g["second"] - t0, g["p95_ms"], lw=1, label=ep)
        a1.set_ylabel(f"{st.scenario} p95 ms", fontsize=8)
        a1.legend(fontsize=7, ncol=4)
        g = s.groupby("second")["count"].sum().sort_index()
        a2.plot(g.index - t0, g.values, lw=1, color="C0")
        a2.set_ylabel("req/s", fontsize=8)
        a2.set_xlabel("s since load start", fontsize=8)
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.tick_params(labelsize=7)
    return png(fig)


def trends(
    series: dict[str, tuple[list[str], list[float], str]], marks: dict[str, list[int]], title: str
) -> bytes | None:
    """Small multiples of gated KPIs over the last nights (KPI → run labels, values, unit), each lasting change
    marked by a dashed line at its first run; the newest run is the last point."""
    names = [n for n, (_, values, _) in series.items() if len(values) >= 2]
    if not names:
        return None
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.0 * rows), squeeze=False)
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    for ax, name in zip(axes.flat, names, strict=False):
        labels, values, unit = series[name]
        xs = list(range(len(values)))
        ax.plot(xs, values, marker="o", ms=3, lw=1, color="C0")
        ax.plot(xs[-1:], values[-1:], marker="o", ms=5, color="C3")
        for i in marks.get(name, []):
            ax.axvline(i - 0.5, color="C3", ls="--", lw=1)
            ax.annotate(labels[i][-10:], (i - 0.5, max(values)), fontsize=6, color="C3", rotation=90, va="top")
        ax.set_title(f"{name} ({unit})" if unit else name, fontsize=8)
        ax.set_xticks([xs[0], xs[-1]], [labels[0][-10:], labels[-1][-10:]], fontsize=6)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return png(fig)


def before_after(v: Verification, edges: tuple[float | None, float | None] = (None, None)) -> bytes | None:
    """One remediation's re-test: the watched KPI in each run, before (A) and after (B) in run order, with
    the band edges; the title says whether it is proven."""
    if not v.runs:
        return None
    fig, ax = _fig(f"{v.code}: {v.kpi}/{v.scenario} — {v.status}", v.unit or "", size=(5.2, 2.4))
    for arm, colour in (("A", "C3"), ("B", "C2")):
        pts = [(i, r.value) for i, r in enumerate(v.runs) if r.arm == arm and r.value is not None]
        if pts:
            ax.scatter(
                [p[0] for p in pts],
                [p[1] for p in pts],
                color=colour,
                s=24,
                label="before (A)" if arm == "A" else "after (B)",
                zorder=3,
            )
    for edge, colour, name in ((edges[0], "#2e7d32", "target"), (edges[1], "#f9a825", "allowed")):
        if edge is not None:
            ax.axhline(edge, color=colour, ls="--", lw=1, label=f"{name} edge")
    ax.set_xticks(range(len(v.runs)), [r.arm for r in v.runs], fontsize=7)
    ax.legend(fontsize=6)
    return png(fig)


def sizing(result: dict) -> bytes | None:
    """The capacity stage: achieved throughput (left) and p95 of the steady window (right) against the
    offered load, one line per instance count and repeat; each climb's knee (first failing step) crossed."""
    climbs = result.get("stairs") or []
    if not climbs:
        return None
    fig, ax = _fig("capacity: throughput and p95 against offered load (× knee)", "achieved req/s", size=(6.4, 2.8))
    ax2 = ax.twinx()
    ax2.set_ylabel("p95 ms", fontsize=7)
    ax2.tick_params(labelsize=7)
    for c in climbs:
        steps = c["steps"]
        if not steps:
            continue
        colour = f"C{(int(c['instances']) - 1) % 10}"
        x = [s["offered_rps"] for s in steps]
        label = f"{c['instances']} instance{'s' if c['instances'] != 1 else ''}" + (
            f" #{c['repeat']}" if c["repeat"] else " (verification)"
        )
        ax.plot(x, [s["achieved_rps"] for s in steps], color=colour, marker="o", ms=3, lw=1, label=label)
        p95 = [(s["offered_rps"], s["p95_second_ms"]) for s in steps if s["p95_second_ms"] is not None]
        if p95:
            ax2.plot([p[0] for p in p95], [p[1] for p in p95], color=colour, ls=":", lw=1)
        knee = next((s for s in steps if not s["passed"]), None)
        if knee is not None:
            ax.scatter([knee["offered_rps"]], [knee["achieved_rps"]], color=colour, marker="x", s=60, zorder=4)
    ax.set_xlabel("offered req/s", fontsize=7)
    ax.legend(fontsize=6, loc="upper left")
    return png(fig)
