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
from soundcheck.redact import redacted_json_dumps
from tasks.runs import RunContext, reason, undelivered

DISK_DETAIL = "free the output folder's disk (or choose another) and re-run"


def write_verdict_file(verdict: Verdict, run_dir: str | Path) -> Path:
    """verdict.json, secrets redacted; an OSError leaves no half-written file behind."""
    path = Path(run_dir) / "verdict.json"
    try:
        path.write_text(
            redacted_json_dumps(verdict.to_json_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
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
            c.execute(
                store.verdicts.insert().values(
                    run_id=verdict.run_id, created_at=store.now(), verdict=verdict.verdict.value, body=body
                )
            )
            c.execute(
                update(store.runs).where(store.runs.c.run_id == verdict.run_id).values(verdict=verdict.verdict.value)
            )
        if finish_status is not None:
            store.finish_run(
                engine, verdict.run_id, finish_status, verdict=verdict.verdict.value, reason=verdict.extra.get("reason")
            )
    finally:
        engine.dispose()


def publish_verdict(verdict: Verdict, run_dir: str | Path, store_url: str, *, finish_status: str | None = None) -> Path:
    """verdict.json, then the store. A file error turns the verdict INCONCLUSIVE, is stored, then raised."""
    file_error: OSError | None = None
    try:
        path = write_verdict_file(verdict, run_dir)
    except OSError as exc:
        file_error = exc
        path = Path(run_dir) / "verdict.json"
        undelivered(verdict, f"verdict.json could not be written: {reason(exc)}", DISK_DETAIL)
    store_verdict(
        verdict, store_url, finish_status=None if finish_status is None else verdict.extra.get("status", finish_status)
    )
    if file_error is not None:
        raise file_error
    return path


def report_path(verdict: Verdict, run_dir: str | Path) -> Path | None:
    if not verdict.report:
        return None
    p = Path(verdict.report)
    p = p if p.is_absolute() else Path(run_dir) / p
    return p.resolve() if p.exists() else None


@task(name="publish", cache_policy=NO_CACHE)
def publish(verdict: Verdict, run: RunContext) -> Path:
    """verdict.json + the store (the flow adds the Prefect artifacts: tasks.artifacts)."""
    path = publish_verdict(verdict, run.run_dir, run.store_url, finish_status="COMPLETED")
    return path
