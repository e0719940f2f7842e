"""Publish a verdict: the one writer of verdict.json and of the run's verdict row.

The campaign and `soundcheck report` (a re-judge) both come here, so the file is always redacted and
the store always gets exactly one verdict row per judgement. The store is written even when the file
cannot be (a full disk): the run row then says so, and the verdict is INCONCLUSIVE — a verdict its
readers cannot get is not a finished campaign. A half-written verdict.json is removed.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import update

from soundcheck import store
from soundcheck.models import Verdict
from soundcheck.plan import fmt_value
from soundcheck.redact import redact, redacted_json_dumps
from tasks.runs import RunContext, reason, undelivered

DISK_DETAIL = "free the output folder's disk (or choose another) and re-run"


def write_verdict_file(verdict: Verdict, run_dir: str | Path) -> Path:
    """verdict.json, secrets redacted; an OSError leaves no half-written file behind."""
    path = Path(run_dir) / "verdict.json"
    try:
        path.write_text(redacted_json_dumps(verdict.to_json_dict(), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise
    return path


def store_verdict(verdict: Verdict, store_url: str, *, finish_status: str | None = None) -> None:
    """The verdict row (redacted, one per judgement) and the run's verdict; with `finish_status` the
    run row also gets its end (status, reason) — the campaign's case; a re-judge leaves it as it was."""
    body = json.loads(redacted_json_dumps(verdict.to_json_dict(), ensure_ascii=False))
    engine = store.open_store(store_url)
    try:
        with engine.begin() as c:
            c.execute(store.verdicts.insert().values(run_id=verdict.run_id, created_at=store.now(),
                                                     verdict=verdict.verdict.value, body=body))
            c.execute(update(store.runs).where(store.runs.c.run_id == verdict.run_id)
                      .values(verdict=verdict.verdict.value))
        if finish_status is not None:
            store.finish_run(engine, verdict.run_id, finish_status, verdict=verdict.verdict.value,
                             reason=verdict.extra.get("reason"))
    finally:
        engine.dispose()


def publish_verdict(verdict: Verdict, run_dir: str | Path, store_url: str, *,
                    finish_status: str | None = None) -> Path:
    """verdict.json, then the store. A file error turns the verdict INCONCLUSIVE, is stored, then raised."""
    file_error: OSError | None = None
    try:
        path = write_verdict_file(verdict, run_dir)
    except OSError as exc:
        file_error = exc
        path = Path(run_dir) / "verdict.json"
        undelivered(verdict, f"verdict.json could not be written: {reason(exc)}", DISK_DETAIL)
    store_verdict(verdict, store_url,
                  finish_status=None if finish_status is None else verdict.extra.get("status", finish_status))
    if file_error is not None:
        raise file_error
    return path


def summary_markdown(verdict: Verdict, verdict_path: Path) -> str:
    """The verdict artifact: decision, failed checks, remediations, then the JSON itself."""
    failed = [c for c in verdict.checks if not c.passed]
    lines = [f"# soundcheck {verdict.verdict.value}", "",
             f"profile `{verdict.profile}` · run `{verdict.run_id}` · {verdict.started_at} → {verdict.finished_at}", ""]
    if verdict.extra.get("reason"):
        lines += [f"**Incomplete**: {verdict.extra['reason']}", ""]
    lines += [f"Checks: {len(verdict.checks) - len(failed)}/{len(verdict.checks)} passed", ""]
    lines += [f"- ❌ **{c.id}** ({c.scenario}): observed {c.observed}; expected {c.expected}" for c in failed]
    if verdict.remediations:
        lines += ["", "## Remediations", ""]
        lines += [f"- **{r.code}**: {r.reason} — {r.detail}" for r in verdict.remediations]
    lines += ["", f"Report: `{verdict.report or 'none'}` · verdict.json: `{verdict_path}`", ""]
    return "\n".join([redact("\n".join(lines)), "```json",
                      redacted_json_dumps(verdict.to_json_dict(), indent=1, ensure_ascii=False), "```"])


def report_path(verdict: Verdict, run_dir: str | Path) -> Path | None:
    if not verdict.report:
        return None
    p = Path(verdict.report)
    p = p if p.is_absolute() else Path(run_dir) / p
    return p.resolve() if p.exists() else None


def kpi_rows(verdict: Verdict) -> list[dict[str, object]]:
    """The KPI table artifact: values formatted once (soundcheck.plan.fmt_value)."""
    return [{"scenario": k.scenario, "kpi": k.name, "phase": k.phase or "", "value": fmt_value(k.value, k.unit),
             "band": k.band or "", "previous": fmt_value(k.previous, k.unit) if k.previous is not None else "",
             "delta_pct": k.delta_pct} for k in verdict.kpis]


@task(name="publish", cache_policy=NO_CACHE)
def publish(verdict: Verdict, run: RunContext) -> Path:
    """verdict.json + store, then the Prefect artifacts: markdown summary (with the JSON), KPI table, report link."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    path = publish_verdict(verdict, run.run_dir, run.store_url, finish_status="COMPLETED")
    create_markdown_artifact(key="campaign-verdict", markdown=summary_markdown(verdict, path),
                             description=f"soundcheck verdict {verdict.verdict.value} for run {run.run_id}")
    if verdict.kpis:
        create_table_artifact(key="campaign-kpis", description="KPIs with band and previous run",
                              table=kpi_rows(verdict))
    report = report_path(verdict, run.run_dir)
    if report is not None:
        create_link_artifact(key="campaign-report", link=report.as_uri(), link_text=f"report {run.run_id}",
                             description="Self-contained HTML report")
    return path
