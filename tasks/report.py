"""The verdict's outputs: verdict.json, a self-contained HTML report, and the headline PNG for Slack.

The report is one HTML file with no external resource (no CDN, no web font, charts inlined as base64
PNG), so it opens offline and can be attached anywhere. A person should read it in a minute: the
verdict banner first, then what to do (remediations), why (decision trace), the KPI band table with
deltas against the previous comparable run, every check with observed against expected, and the
charts per stage.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from soundcheck.bands import BAND_SOURCES, Judgement, band, bands_for
from soundcheck.models import KPI, Verdict
from soundcheck.plan import fmt_value as fmt_number  # one formatter for every output
from soundcheck.profile import History
from tasks.charts import VERDICT_COLOURS, headline, stage_charts
from tasks.history import fmt_change
from tasks.rundata import RunData, load_run

BAND_COLOURS = {"target": "#c8e6c9", "allowed": "#fff3c4", "action": "#ffcdd2", None: "#eeeeee"}
BRANCH_COLOURS = {"APPROVE": "#2e7d32", "APPROVE_WITH_TUNING": "#b28704", "BLOCK": "#c62828", "INCONCLUSIVE": "#616161"}
HEADLINES = {
    "APPROVE": "Deploy approved",
    "APPROVE_WITH_TUNING": "Deploy approved with tuning",
    "BLOCK": "Deploy blocked",
    "INCONCLUSIVE": "Inconclusive: the campaign could not measure",
}

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#212121;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:0 16px 40px}
#verdict-banner{color:#fff;padding:22px 24px;margin:0 0 16px}
#verdict-banner h1{margin:0;font-size:28px} #verdict-banner p{margin:6px 0 0;font-size:14px;opacity:.9}
h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;width:100%;font-size:13px;background:#fff}
th,td{border:1px solid #e0e0e0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f1f1f1} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#2e7d32;font-weight:600} .fail{color:#c62828;font-weight:600} .cov{color:#616161;font-weight:600}
.reg{color:#c62828;font-weight:600} .muted{color:#757575}
.charts{display:flex;flex-wrap:wrap;gap:10px}
.charts figure{margin:0;background:#fff;border:1px solid #e0e0e0;padding:4px}
.charts figcaption{font-size:12px;color:#555} .charts img{display:block;max-width:520px}
code{background:#f1f1f1;padding:1px 4px}
"""


def fmt_value(k: KPI) -> str:
    return escape(fmt_number(k.value, k.unit))


def edges_text(j: Judgement, unit: str) -> str:
    """The band's edges in the KPI's unit, e.g. '< 70.0% target, ≤ 85.0% allowed'."""
    if j.target is None:
        return ""
    op = "≥" if j.higher_is_better else "<"
    op2 = "≥" if j.higher_is_better else "≤"
    return f"{op} {fmt_number(j.target, unit)} target, {op2} {fmt_number(j.allowed, unit)} allowed"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


#: The plan's dashboard (§4.3): the figures its reader looks at first, in its order.
DASHBOARD = (
    ("p95_ms", "p95 response time"),
    ("throughput_rps", "throughput"),
    ("error_rate", "error rate"),
    ("db_pool_use", "DB pool in use"),
    ("redis_memory_bytes", "Redis memory"),
    ("consumer_lag", "Kafka consumer lag"),
    ("heap_use", "heap in use"),
    ("gc_pause_max_ms", "GC pause"),
)
#: The stage the dashboard reads from: the plan's main load first.
DASHBOARD_STAGES = ("spike", "soak", "saga", "race", "points")


def dashboard(verdict: Verdict) -> list[tuple[str, KPI]]:
    """(label, KPI) for the plan's dashboard figures, each from the first load stage that measured it."""
    out = []
    for name, label in DASHBOARD:
        found = [k for k in verdict.kpis if k.name == name and k.phase is None and k.value is not None]
        found.sort(key=lambda k: DASHBOARD_STAGES.index(k.scenario) if k.scenario in DASHBOARD_STAGES else 9)
        if found:
            out.append((label, found[0]))
    return out


def _dashboard_html(v: Verdict) -> str:
    """The plan's dashboard figures first (§4.3), each with its change, coloured by band."""
    rows = "".join(
        f'<tr style="background:{BAND_COLOURS.get(k.band, "#fff")}"><td>{escape(label)}</td><td>{escape(k.scenario)}'
        f'</td><td class="num">{fmt_value(k)}</td><td>{escape(k.band or "no band")}</td>'
        f'<td class="num">{escape(fmt_change(k.rel_change) or "–")}</td></tr>'
        for label, k in dashboard(v)
    )
    if not rows:
        return ""
    return (
        "<h2>Dashboard (plan §4.3)</h2><table id='dashboard'><tr><th>figure</th><th>stage</th><th>value</th>"
        f"<th>band</th><th>vs previous run</th></tr>{rows}</table>"
    )


BAND_ORDER = {"action": 0, "allowed": 1, "target": 2}


def _kpi_rows(kpis: list[KPI], scale: float, profile_bands: dict[str, Any]) -> str:
    rows = []
    for k in sorted(kpis, key=lambda k: (BAND_ORDER.get(k.band or "", 3), k.scenario, k.name, k.phase or "")):
        j = band(k.name, k.value, bands=profile_bands, scale=scale, scenario=k.scenario, phase=k.phase)
        delta = fmt_change(k.rel_change)
        prev = "" if k.previous is None else escape(fmt_number(k.previous, k.unit))
        src = BAND_SOURCES.get(k.name.split(".")[0], "")
        edges = escape(edges_text(j, k.unit)) if k.band else ""
        if k.band and j.note:
            edges += f' <span class="muted">({escape(j.note)})</span>'
        if k.band and src:
            edges += f' <span class="muted">· {escape(src)}</span>'
        rows.append(
            f'<tr style="background:{BAND_COLOURS.get(k.band, "#fff")}">'
            f"<td>{escape(k.scenario)}</td><td>{escape(k.name)}</td><td>{escape(k.phase or '')}</td>"
            f'<td class="num">{fmt_value(k)}</td><td>{escape(k.band or "")}</td><td>{edges}</td>'
            f'<td class="num">{prev}</td>'
            f'<td class="num">{escape(delta)}</td>'
            f'<td class="{"reg" if k.regression else ""}">{escape(_shift_cell(k))}</td></tr>'
        )
    return "\n".join(rows)


KPI_HEAD = (
    "<tr><th>scenario</th><th>KPI</th><th>phase</th><th>value</th><th>band</th><th>edges</th>"
    "<th>previous</th><th>Δ</th><th>lasting shift</th></tr>"
)


def _shift_cell(k: KPI) -> str:
    if k.shift is None:
        return ""
    s = k.shift
    tag = "regression (new)" if k.regression else "new" if s.new else "known"
    return f"{tag}: {fmt_change(s.rel_change)} since {s.first_run}" + (f" (build {s.build})" if s.build else "")


def _check_rows(v: Verdict) -> str:
    rows = []
    for c in sorted(v.checks, key=lambda c: (c.passed, c.scenario, c.id)):
        cls, word = (
            ("pass", "pass") if c.passed else ("cov", "not measured") if c.source == "coverage" else ("fail", "FAIL")
        )
        rows.append(
            f'<tr><td class="{cls}">{word}</td><td>{escape(c.id)}</td><td>{escape(c.scenario)}</td>'
            f"<td>{escape(c.expected)}</td><td>{escape(c.observed)}</td></tr>"
        )
    return "\n".join(rows)


def render_html(
    v: Verdict,
    run: RunData | None,
    charts: dict[str, dict[str, bytes]] | None = None,
    profile_bands: dict[str, Any] | None = None,
) -> str:
    """The whole report as one HTML string (charts: stage → title → PNG bytes)."""
    colour = VERDICT_COLOURS.get(v.verdict.value, "#000")
    scale = run.scale if run else float(v.extra.get("scale", 1.0) or 1.0)
    bands_table = profile_bands or bands_for(None)
    failed = [c for c in v.checks if not c.passed and c.source != "coverage"]
    unmeasured = [c for c in v.checks if not c.passed and c.source == "coverage"]
    sub = (
        f"run <code style='color:#000'>{escape(v.run_id)}</code> · profile {escape(v.profile)} · "
        f"{escape(v.started_at)} → {escape(v.finished_at)} · scale {scale:g}"
        + (f" · time scale {run.time_scale:g}" if run else "")
        + (f" · build <code style='color:#000'>{escape(str(v.extra['build']))}</code>" if v.extra.get("build") else "")
        + f" · checks {len(v.checks) - len(failed) - len(unmeasured)}/{len(v.checks)} passed"
    )
    rem = (
        "".join(
            f"<li><b>{escape(r.code)}</b>: {escape(r.detail)}<br><span class='muted'>because "
            f"{escape(r.reason)}</span></li>"
            for r in v.remediations
        )
        or "<li>none</li>"
    )
    trace = "\n".join(
        f"<tr><td>{i}</td><td>{escape(t.subject)}</td><td style='color:{BRANCH_COLOURS.get(str(t.branch), '#000')};"
        f"font-weight:600'>{escape(str(t.branch))}</td><td>{escape(t.why)}</td></tr>"
        for i, t in enumerate(v.trace, 1)
    )
    chart_html = []
    for scenario, items in (charts or {}).items():
        figs = "".join(
            f"<figure><img alt='{escape(title)}' src='{_data_uri(p)}'><figcaption>{escape(title)}</figcaption></figure>"
            for title, p in items.items()
        )
        none = "<p class='muted'>too short or no data to plot over time</p>"
        chart_html.append(f"<h3>{escape(scenario)}</h3><div class='charts'>{figs or none}</div>")
    stages = ""
    if run:
        stages = "".join(
            f"<tr><td>{escape(s)}</td><td>{escape(st.status)}</td><td class='num'>"
            f"{'' if st.k6_cpu_share is None else f'{st.k6_cpu_share:.0%}'}</td><td class='num'>"
            f"{st.dropped_iterations or 0}</td><td>{escape(st.reason or '')}</td></tr>"
            for s, st in run.stages.items()
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>soundcheck {escape(v.verdict.value)} · {escape(v.run_id)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><div id="verdict-banner" data-verdict="{escape(v.verdict.value)}" style="background:{colour}">
<h1 id="verdict">{escape(v.verdict.value)} — {escape(HEADLINES.get(v.verdict.value, ""))}</h1><p>{sub}</p></div>
<main>
{_dashboard_html(v)}
<h2>What to do</h2><ul id="remediations">{rem}</ul>
{_verification_html(v, scale, bands_table)}
{_sizing_html(v)}
<h2>Why: decision trace</h2>
<table id="trace"><tr><th>#</th><th>subject</th><th>branch</th><th>why</th></tr>{trace}</table>
<h2>KPIs in their bands (plan §5.1), against the previous comparable run</h2>
<table id="kpis">{KPI_HEAD}{_kpi_rows([k for k in v.kpis if k.band], scale, bands_table)}</table>
<p class="muted">Bands: green target, yellow allowed, red action. Previous: the last earlier run with the same
profile, scenario and scale whose stage completed; Δ is the change against it. A lasting shift is a change point
of the KPI's nightly series (at least two runs at the new level); a new one for the worse is a regression, which
holds approval (or blocks, per the profile) even inside the band.</p>
<details><summary>Other measurements (no band, or not judged)</summary>
<table id="measurements">{KPI_HEAD}{_kpi_rows([k for k in v.kpis if not k.band], scale, bands_table)}</table>
</details>
<h2>Checks: observed against expected</h2>
<table id="checks"><tr><th>result</th><th>requirement</th><th>scenario</th><th>expected</th><th>observed</th></tr>
{_check_rows(v)}</table>
<h2>Stages</h2>
<table id="stages"><tr><th>scenario</th><th>status</th><th>k6 CPU</th><th>dropped iterations</th><th>reason</th></tr>
{stages}</table>
<h2>Charts</h2>{"".join(chart_html) or "<p>no per-second or server data</p>"}
</main></body></html>
"""


def _verification_html(v: Verdict, scale: float, bands_table: dict[str, Any]) -> str:
    """Remediations re-tested (`soundcheck verify`): one line each and the before/after chart."""
    if not v.verification:
        return ""
    from tasks.charts import before_after
    from tasks.verify import fmt_verification

    items = []
    for x in v.verification:
        figure = ""
        if x.kpi:
            j = band(x.kpi, x.before, bands=bands_table, scale=scale, scenario=x.scenario, phase=x.phase)
            chart = before_after(x, (j.target, j.allowed))
            if chart:
                figure = f"<figure><img alt='{escape(x.code)} before and after' src='{_data_uri(chart)}'></figure>"
        colour = "#2e7d32" if x.status == "proven" else "#c62828" if x.status == "not proven" else "#616161"
        items.append(
            f"<li><b style='color:{colour}'>{escape(x.status)}</b> {escape(fmt_verification(x))}"
            f"<br><span class='muted'>runs: {escape(', '.join(f'{r.arm} {r.run_id}' for r in x.runs))}"
            f"</span>{figure}</li>"
        )
    return f"<h2>Remediations re-tested</h2><ul id='verification'>{''.join(items)}</ul>"


def _sizing_html(v: Verdict) -> str:
    """The capacity stage (R-WHY-1…3): per count, the sustainable load and bottleneck; the fit; the answer."""
    if not v.sizing:
        return ""
    from tasks.capacity import fmt_sizing
    from tasks.charts import sizing as sizing_chart

    z = v.sizing

    def cell(value: float | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    rows = "".join(
        f"<tr><td>{escape(n)}</td><td>{escape(', '.join(f'{x:,.0f}' for x in c['sustainable_rps']) or '—')}</td>"
        f"<td>{cell(c.get('spread'), '.0%')}</td><td>{cell(c.get('knee_rps'), ',.0f')}</td>"
        f"<td>{escape(c.get('bottleneck') or '')}</td></tr>"
        for n, c in (z.get("per_count") or {}).items()
    )
    fit = z.get("fit")
    fit_line = (
        f"<p>USL fit: λ {fit['lam']:,.1f} req/s per instance, σ {fit['sigma']:.3f}, κ {fit['kappa']:.4f}, "
        f"RMSE {fit['rmse']:,.1f} req/s.</p>"
        if fit
        else ""
    )
    rec = z.get("recommendation") or {}
    ver = z.get("verification") or {}
    chart = sizing_chart(z)
    figure = f"<figure><img alt='capacity stairs' src='{_data_uri(chart)}'></figure>" if chart else ""
    return (
        f"<h2>Sizing</h2><p>{escape(fmt_sizing(z))}</p><p class='muted'>{escape(z.get('quota') or '')}</p>"
        "<table><tr><th>instances</th><th>sustainable req/s (per repeat)</th><th>spread</th>"
        f"<th>knee (offered)</th><th>first to saturate</th></tr>{rows}</table>{fit_line}"
        + (f"<p>{escape(rec.get('why', ''))}. {escape(rec.get('scale_out_why', ''))}.</p>" if rec else "")
        + (f"<p>Verification: {escape(ver.get('why', ''))}.</p>" if ver else "")
        + (f"<p class='muted'>{escape(z['why_not'])}</p>" if z.get("why_not") else "")
        + figure
    )


#: How many comparable runs the report's trend charts show.
TREND_RUNS = 30


def trend_charts(verdict: Verdict, engine: Engine, history: History | None = None) -> dict[str, bytes]:
    """Per scenario, the gated KPIs (whole stage, not per phase) over the last comparable runs with their
    lasting changes marked (R-REG-1); nothing without at least one earlier run."""
    from soundcheck.changepoints import shifts
    from tasks.charts import trends
    from tasks.history import kpi_series

    series_by_kpi = kpi_series(engine, verdict.run_id, TREND_RUNS - 1)
    per: dict[str, dict[str, tuple[list[str], list[float], str]]] = {}
    marks: dict[str, dict[str, list[int]]] = {}
    for k in verdict.kpis:
        points = series_by_kpi.get((k.scenario, k.name, k.phase), [])
        if not k.band or k.phase or k.value is None or not points:
            continue
        labels = [p.build or p.run_id for p in points] + [verdict.extra.get("build") or verdict.run_id]
        values = [p.value for p in points] + [k.value]
        per.setdefault(k.scenario, {})[k.name] = (labels, values, k.unit)
        cps = shifts(values, history)  # the profile's thresholds, so the chart marks what the verdict saw
        marks.setdefault(k.scenario, {})[k.name] = [c.index for c in cps]
    out = {}
    for scenario, series in per.items():
        chart = trends(series, marks[scenario], f"{scenario}: gated KPIs per run, lasting changes dashed")
        if chart is not None:
            out[scenario] = chart
    return out


def write_outputs(
    verdict: Verdict,
    engine: Engine,
    out_dir: str | Path,
    *,
    profile_bands: dict[str, Any] | None = None,
    run: RunData | None = None,
    history: History | None = None,
) -> dict[str, Path]:
    """Write report.html and headline.png into `out_dir`; sets `verdict.report` (verdict.json is
    `tasks.publish`'s)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = run or load_run(engine, verdict.run_id)
    charts = {s: stage_charts(st) for s, st in run.stages.items()}
    for scenario, png_bytes in trend_charts(verdict, engine, history).items():
        charts.setdefault(scenario, {})[f"Gated KPIs over the last {TREND_RUNS} comparable runs"] = png_bytes
    paths = {"report": out / "report.html", "headline": out / "headline.png"}
    verdict.report = paths["report"].name
    paths["headline"].write_bytes(headline(run.stages, verdict.verdict.value, verdict.run_id))
    paths["report"].write_text(render_html(verdict, run, charts, profile_bands), encoding="utf-8")
    return paths
