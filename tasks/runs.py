"""A campaign run's bookkeeping: its id and folder, its row in the result store, and the sentences
and verdicts that say why a run could not finish.

The flow holds only the order of steps; every decision about a failed or interrupted run lives here,
so the CLI, the flow and the tests agree on one wording.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError

from soundcheck import store
from soundcheck.models import Decision, Remediation, Verdict
from soundcheck.profile import Profile


class RunContext(BaseModel):
    """What every step needs to find the run: plain values, so Prefect can show them as parameters."""

    run_id: str
    profile_name: str
    store_url: str
    run_dir: str
    started_at: str


class StoreUnavailable(RuntimeError):
    """The result store cannot be opened or written (down, locked, refused); the message is one sentence."""


class CampaignIncomplete(RuntimeError):
    """The campaign could not finish; carries the INCONCLUSIVE verdict that was written and sent."""

    def __init__(self, reason: str, verdict: Verdict, verdict_path: str | None = None) -> None:
        super().__init__(reason)
        self.verdict = verdict
        self.verdict_path = verdict_path


def new_run(profile: Profile, output: str | Path | None) -> RunContext:
    """The run's id and output folder (created); nothing is stored yet."""
    run_id = store.new_run_id()
    run_dir = Path(output) if output else Path(profile.output_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(
        run_id=run_id,
        profile_name=profile.name,
        store_url=profile.store_url,
        run_dir=str(run_dir.resolve()),
        started_at=store.now().isoformat(),
    )


def build_id(profile: Profile) -> str | None:
    """The commit or build being judged: the profile's (the CLI's --build), else $SOUNDCHECK_BUILD; for the
    local stack, this checkout's commit (the reference service ships in it), `-dirty` with local changes."""
    if profile.build:
        return profile.build
    if os.environ.get("SOUNDCHECK_BUILD"):
        return os.environ["SOUNDCHECK_BUILD"]
    if profile.environment.kind != "local" or profile.target.base_url:
        return None
    from soundcheck.paths import ROOT

    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def environment_settings(profile: Profile) -> dict[str, Any]:
    """What a change in the nightly series may be traced to besides the build: the environment's settings."""
    env = profile.environment
    out: dict[str, Any] = {
        "kind": env.kind,
        "dialect": profile.target.dialect,
        "admission": profile.target.admission.mode,
    }
    if env.kind == "local" and not profile.target.base_url:
        out |= {
            "workers": env.local.workers,
            "settings": dict(env.local.settings),
            "database": (env.local.database_url or "sqlite").split(":", 1)[0],
            "redis": "external" if env.local.redis_url else "bundled",
        }
    elif env.kind == "aws":
        out |= {
            "stack": env.aws.stack_name,
            "desired_capacity": env.aws.desired_capacity,
            "parameters": dict(env.aws.parameters),
        }
    return out


def register_run(profile: Profile, run: RunContext) -> None:
    """The run's row in the result store; a store that cannot take it is `StoreUnavailable` (one sentence)."""
    from soundcheck.redact import redact_json

    try:
        engine = store.open_store(profile.store_url)
        try:
            store.start_run(
                engine,
                run.run_id,
                profile.name,
                scale=profile.scale,
                time_scale=profile.time_scale,
                scenarios=profile.scenarios,
                target=profile.target.base_url,
                build=build_id(profile),
                settings=redact_json(environment_settings(profile)),
            )
        finally:
            engine.dispose()
    except DBAPIError as exc:
        raise StoreUnavailable(store.store_sentence(profile.store_url, exc)) from exc


def note_environment(run: RunContext, endpoints: Any) -> None:
    """Which bus the Saga ran on (the local stack may fall back from Kafka to Redis Streams), kept with the
    run's settings so the history can tell the two apart; and the build the environment deployed."""
    extra = getattr(endpoints, "extra", None) or {}
    if "bus" not in extra and "build" not in extra:
        return
    engine = store.open_store(run.store_url)
    try:
        if "bus" in extra:
            store.merge_run_settings(engine, run.run_id, {"bus": extra["bus"]})
        if "build" in extra:  # the build the environment deployed ("latest" resolved to its tag)
            store.set_run_build(engine, run.run_id, extra["build"])
    finally:
        engine.dispose()


def record(run: RunContext, kind: str, outcome: str, detail: str) -> None:
    """One row in the run's event log (notify skipped, teardown failed …)."""
    engine = store.open_store(run.store_url)
    try:
        store.record_event(engine, run.run_id, kind, outcome, detail)
    finally:
        engine.dispose()


def incomplete_verdict(run: RunContext, reason: str, detail: str | None = None) -> Verdict:
    """What a run that could not finish tells its readers: INCONCLUSIVE, why, and to fix the environment."""
    return Verdict(
        run_id=run.run_id,
        profile=run.profile_name,
        started_at=run.started_at,
        finished_at=store.now().isoformat(),
        verdict=Decision.INCONCLUSIVE,
        remediations=[
            Remediation(
                code="fix_test_environment",
                reason=f"the campaign did not finish: {reason}",
                detail=detail or "fix the cause and re-run; the rows measured so far are kept",
            )
        ],
        extra={"status": "INCOMPLETE", "reason": reason},
    )


def undelivered(verdict: Verdict, why: str, detail: str) -> None:
    """A verdict that could not be delivered (file or store): INCONCLUSIVE with `fix_test_environment`,
    what was judged kept in the reason."""
    if verdict.verdict != Decision.INCONCLUSIVE:
        why += f"; the run was judged {verdict.verdict.value}"
        verdict.verdict = Decision.INCONCLUSIVE
    previous = verdict.extra.get("reason")
    verdict.extra["reason"] = f"{previous}; {why}" if previous and why not in previous else (previous or why)
    verdict.extra.setdefault("status", "INCOMPLETE")
    if not any(r.code == "fix_test_environment" for r in verdict.remediations):
        verdict.remediations.append(Remediation(code="fix_test_environment", reason=why, detail=detail))


def first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def reason(exc: BaseException, run: RunContext | None = None) -> str:
    """One sentence for why the campaign stopped; the causes a user must act on are named as such."""
    from tasks.safety import StageAborted

    if isinstance(exc, StoreUnavailable | StageAborted):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TerminationSignal":
        return "interrupted (Ctrl-C, a termination signal or a cancel)"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or (run.run_dir if run else None)
        return f"no space left on the disk for the output{f' at {where}' if where else ''} ({exc.strerror})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
