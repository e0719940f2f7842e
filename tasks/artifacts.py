"""What a person opens in the Prefect UI the morning after: the verdict at a glance, a readable verdict and
KPI table, and a report link that opens.

- **The verdict at a glance** (`final_state`): the campaign's flow run ends in a state *named* after the
  verdict. The runs list and the run page show a state's name as its badge, coloured by its type, without a
  click: APPROVE and APPROVE_WITH_TUNING end Completed (green), BLOCK and INCONCLUSIVE end Failed (red), so
  the nightly's failure automations fire on a blocked release too. Tags cannot change once a run started.
- **Artifacts on the flow run** (`create_artifacts`, called from the flow after notify, not from a task, so
  Prefect attaches them to the flow run): the verdict as the report's top reads (decision, failed checks,
  remediations, the plan's dashboard figures with their change, Slack's outcome), a KPI table with the gated
  KPIs first, rounded, banded and with their change in percent, a trend table, and the report's link.
- **A report link that opens** (`report_link`): with `report_storage` in the profile, the report and its
  chart are uploaded to the S3-compatible bucket and linked by a presigned URL that expires; otherwise the
  artifact says on which host and at which path the file is (a `file://` link opens nowhere else).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from prefect.states import Completed, Failed, State

from soundcheck.models import KPI, Decision, Verdict
from soundcheck.plan import fmt_value
from soundcheck.profile import Profile, ReportStorage
from tasks.history import fmt_change
from tasks.report import DASHBOARD_STAGES, dashboard

BAND_MARK = {"target": "🟢 target", "allowed": "🟡 allowed", "action": "🔴 action"}


def final_state(verdict: Verdict, body: dict[str, Any]) -> State:
    """The flow run's final state, named after the verdict (see the module doc for why a state name)."""
    failed = sum(not c.passed for c in verdict.checks)
    message = f"{verdict.verdict.value}: {len(verdict.checks) - failed}/{len(verdict.checks)} checks passed" + (
        f"; remediations: {', '.join(r.code for r in verdict.remediations)}" if verdict.remediations else ""
    )
    if verdict.verdict in (Decision.APPROVE, Decision.APPROVE_WITH_TUNING):
        return Completed(name=verdict.verdict.value, message=message, data=body)
    return Failed(name=verdict.verdict.value, message=message, data=body)


def _band(k: KPI) -> str:
    return BAND_MARK.get(k.band or "", "⚪ no band")


def verdict_markdown(verdict: Verdict, *, report: str, verdict_json: str, notified: str | None) -> str:
    """The verdict artifact: what the report's top says, in Markdown (no raw JSON)."""
    failed = [c for c in verdict.checks if not c.passed]
    lines = [
        f"# {verdict.verdict.value}",
        "",
        f"profile `{verdict.profile}` · run `{verdict.run_id}` · {verdict.started_at} → {verdict.finished_at}"
        + (f" · build `{verdict.extra['build']}`" if verdict.extra.get("build") else ""),
        "",
    ]
    if verdict.extra.get("reason"):
        lines += [f"**Incomplete**: {verdict.extra['reason']}", ""]
    dash = dashboard(verdict)
    if dash:
        lines += [
            "## Dashboard (plan §4.3)",
            "",
            "| figure | stage | value | band | vs previous run |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {label} | {k.scenario} | {fmt_value(k.value, k.unit)} | {_band(k)} | "
            f"{fmt_change(k.rel_change) or '–'} |"
            for label, k in dash
        ]
        lines.append("")
    lines += [f"**Checks**: {len(verdict.checks) - len(failed)}/{len(verdict.checks)} passed", ""]
    lines += [f"- ❌ **{c.id}** ({c.scenario}): observed {c.observed}; expected {c.expected}" for c in failed[:20]]
    if len(failed) > 20:
        lines.append(f"- … and {len(failed) - 20} more in the report")
    if verdict.remediations:
        lines += ["", "## Remediations", ""]
        lines += [f"- **{r.code}**: {r.detail} — {r.reason}" for r in verdict.remediations]
    shifts = [k for k in verdict.kpis if k.shift is not None and k.shift.new]
    if shifts:
        from tasks.history import fmt_shift

        lines += ["", "## New lasting changes across nightly runs", ""]
        lines += [f"- {'📈 regression: ' if k.regression else ''}{fmt_shift(k)}" for k in shifts]
    lines += [
        "",
        f"**Slack**: {notified or 'not asked (notify off)'}",
        "",
        f"**Report**: {report}",
        "",
        f"**verdict.json**: {verdict_json}",
        "",
    ]
    from soundcheck.redact import redact

    return redact("\n".join(lines))


def kpi_table(verdict: Verdict) -> list[dict[str, str]]:
    """The KPI table artifact: gated KPIs first (action, allowed, target), rounded with units, the change
    in percent with an arrow, the band as a word and a colour mark. The full table stays in the report."""
    order = {"action": 0, "allowed": 1, "target": 2}
    stage = {s: i for i, s in enumerate(DASHBOARD_STAGES)}
    rows = sorted(
        verdict.kpis, key=lambda k: (order.get(k.band or "", 3), stage.get(k.scenario, 9), k.name, k.phase or "")
    )
    return [
        {
            "band": _band(k),
            "scenario": k.scenario,
            "KPI": k.name,
            "phase": k.phase or "",
            "value": fmt_value(k.value, k.unit),
            "previous": fmt_value(k.previous, k.unit) if k.previous is not None else "–",
            "change": fmt_change(k.rel_change) or "–",
        }
        for k in rows
    ]


def upload_report(run_dir: Path, run_id: str, storage: ReportStorage) -> str:
    """Upload report.html and headline.png; return a presigned URL of the report (expires per profile)."""
    import boto3

    s3 = boto3.client("s3", region_name=storage.region, endpoint_url=storage.endpoint_url)
    prefix = f"{storage.prefix.rstrip('/')}/{run_id}/".lstrip("/")
    for name, ctype in (("report.html", "text/html; charset=utf-8"), ("headline.png", "image/png")):
        path = run_dir / name
        if path.exists():
            s3.upload_file(str(path), storage.bucket, prefix + name, ExtraArgs={"ContentType": ctype})
    return str(
        s3.generate_presigned_url(
            "get_object", Params={"Bucket": storage.bucket, "Key": prefix + "report.html"}, ExpiresIn=storage.expires_s
        )
    )


def report_link(verdict: Verdict, run_dir: str | Path, profile: Profile) -> tuple[str | None, str]:
    """(URL that opens, sentence for the artifact). Without storage, or when the upload fails, the sentence
    says where the file is; the campaign never fails for it."""
    from tasks.publish import report_path

    path = report_path(verdict, run_dir)
    if path is None:
        return None, "no report was written"
    where = f"`{path}` on host `{socket.gethostname()}`"
    if profile.report_storage is None:
        return None, f"{where} (set `report_storage` in the profile for a link that opens anywhere)"
    try:
        url = upload_report(Path(run_dir), verdict.run_id, profile.report_storage)
    except Exception as exc:  # noqa: BLE001 - a failed upload is said, not fatal
        from tasks.runs import reason

        return None, f"{where}; the upload to s3://{profile.report_storage.bucket} failed: {reason(exc)}"
    expires = _lifetime(profile.report_storage.expires_s)
    return url, f"[open the report]({url}) (link expires in {expires}); also {where}"


def _lifetime(seconds: float) -> str:
    """`7 days`, `1 hour`, `30 min`."""
    for size, unit in ((86400, "day"), (3600, "hour")):
        if seconds >= size:
            n = round(seconds / size, 1)
            return f"{n:g} {unit}{'' if n == 1 else 's'}"
    return f"{seconds / 60:.0f} min"


def create_artifacts(
    verdict: Verdict, verdict_path: Path | None, run_dir: str, profile: Profile, notified: str | None
) -> str:
    """The flow run's artifacts; called from the flow body so Prefect attaches them to the flow run.
    Returns the report sentence (a link when the report was uploaded)."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    url, report = report_link(verdict, run_dir, profile)
    create_markdown_artifact(
        key="campaign-verdict",
        description=f"{verdict.verdict.value} · run {verdict.run_id}",
        markdown=verdict_markdown(
            verdict,
            report=report,
            notified=notified,
            verdict_json=f"`{verdict_path}`" if verdict_path else "not written",
        ),
    )
    if verdict.kpis:
        create_table_artifact(
            key="campaign-kpis",
            table=kpi_table(verdict),
            description="KPIs, gated first: band, value, change against the previous run",
        )
        create_table_artifact(
            key="campaign-trends",
            table=trend_rows(verdict),
            description="Gated KPIs: change against the previous run and lasting shifts across nightly runs (R-REG-1)",
        )
    if url:
        create_link_artifact(
            key="campaign-report",
            link=url,
            link_text=f"report {verdict.run_id}",
            description="The HTML report (presigned link, expires)",
        )
    return report


def trend_rows(verdict: Verdict) -> list[dict[str, object]]:
    """The trend artifact: each gated KPI with its change against the previous run and its lasting shift."""
    rows = []
    for k in sorted(
        (k for k in verdict.kpis if k.band),
        key=lambda k: (not k.regression, k.shift is None, k.scenario, k.name, k.phase or ""),
    ):
        s = k.shift
        rows.append(
            {
                "scenario": k.scenario,
                "kpi": k.name,
                "phase": k.phase or "",
                "value": fmt_value(k.value, k.unit),
                "vs previous run": fmt_change(k.rel_change),
                "lasting change": ""
                if s is None
                else f"{fmt_change(s.rel_change)} since {s.first_run}" + (f" (build {s.build})" if s.build else ""),
                "status": "" if s is None else "REGRESSION" if k.regression else "new" if s.new else "known",
            }
        )
    return rows
