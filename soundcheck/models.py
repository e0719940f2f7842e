"""The records that flow between campaign steps: checks, KPIs, remediations, the verdict.

These are the seams of the data flow (load → ingest → evaluate → decide → notify); every step
takes and returns these, and verdict.json is their JSON form (see shared/design.md).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Decision(StrEnum):
    APPROVE = "APPROVE"
    APPROVE_WITH_TUNING = "APPROVE_WITH_TUNING"
    BLOCK = "BLOCK"
    INCONCLUSIVE = "INCONCLUSIVE"


#: CLI exit status per verdict (design.md, "CLI"); 2 is bad usage or configuration.
EXIT_CODES: dict[Decision, int] = {
    Decision.APPROVE: 0,
    Decision.APPROVE_WITH_TUNING: 10,
    Decision.BLOCK: 20,
    Decision.INCONCLUSIVE: 30,
}
EXIT_USAGE = 2


class ScenarioStatus(StrEnum):
    """How a scenario stage ended; only COMPLETED measured what it set out to measure."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    THRESHOLD_ABORTED = "THRESHOLD_ABORTED"  # a k6 threshold with abortOnFail tripped
    K6_CRASHED = "K6_CRASHED"
    K6_MISSING = "K6_MISSING"
    TARGET_DOWN = "TARGET_DOWN"
    INVALID = "INVALID"  # measured, but the numbers describe the load generator (dropped iterations …)
    ABORTED = "ABORTED"  # stopped on harm (R-SAFE) or by the user
    TIMED_OUT = "TIMED_OUT"  # stopped at its deadline


class RunStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    INCOMPLETE = "INCOMPLETE"  # crashed or interrupted; what it measured is kept
    ABORTED = "ABORTED"


class Check(BaseModel):
    id: str  # requirement id, e.g. R-RACE-1
    scenario: str
    passed: bool
    observed: str
    expected: str
    source: str = "gx"  # gx | kpi | stage


class Shift(BaseModel):
    """A lasting change in a KPI across comparable runs (a change point of its nightly series, R-REG-1)."""

    first_run: str  # the first run at the new level
    build: str | None = None  # that run's commit or build id
    before: float  # mean of the segment before
    after: float  # mean from the first run on
    rel_change: float  # after / before − 1 (0.18 is +18 %)
    p_value: float  # two-sided t-test of the two segments
    noise: float | None = None  # the series' own run-to-run noise, relative (robust estimate)
    runs: int  # runs at the new level so far, this one included
    worse: bool  # a change for the worse given the KPI's direction
    new: bool = True  # found by this run (no earlier run reported it)


class KPI(BaseModel):
    name: str  # e.g. p95_ms, throughput_rps, error_rate, db_pool_use, consumer_lag, saga_time_s
    scenario: str
    value: float | None
    unit: str
    band: str | None = None  # target | allowed | action | None (no band defined)
    previous: float | None = None  # the value in the previous comparable run
    rel_change: float | None = None  # value / previous − 1: 0.158 is +15.8 % (shown with tasks.history.fmt_change)
    regression: bool = False  # a new lasting shift for the worse (shift.new and shift.worse)
    shift: Shift | None = None  # the latest lasting change of this KPI's nightly series, if any
    phase: str | None = None  # spike phases: ramp_up | plateau | ramp_down


class Remediation(BaseModel):
    code: str
    reason: str
    detail: str


class TraceStep(BaseModel):
    """One step of the decision trace: which check or KPI led to which branch."""

    subject: str  # "check R-RACE-1" or "kpi p95_ms/spike"
    branch: str  # APPROVE | APPROVE_WITH_TUNING | BLOCK | INCONCLUSIVE
    why: str


class VerifyRun(BaseModel):
    """One re-run of a remediation's verification: arm A (as the run was) or B (with the change)."""

    run_id: str
    arm: str  # A | B
    verdict: str
    value: float | None  # the watched KPI in this run


class Verification(BaseModel):
    """A remediation re-tested (R-WHY-4): the watched KPI's shift from A to B with its interval, the bands and
    the verdicts; `proven` only when the interval excludes zero in the right direction and the verdict improved."""

    code: str
    change: dict[str, Any] = Field(default_factory=dict)  # what was applied
    was: dict[str, Any] = Field(default_factory=dict)  # … and what those settings were before
    status: str  # proven | not proven | skipped
    why: str = ""
    kpi: str | None = None
    scenario: str | None = None
    phase: str | None = None
    unit: str = ""
    original_value: float | None = None  # in the run being verified
    before: float | None = None  # median of arm A
    after: float | None = None  # median of arm B
    shift: float | None = None  # Hodges–Lehmann, B − A
    low: float | None = None
    high: float | None = None
    confidence: float | None = None
    band_before: str | None = None
    band_after: str | None = None
    verdict_before: str | None = None
    verdict_after: str | None = None
    runs: list[VerifyRun] = Field(default_factory=list)
    seconds: float = 0.0


class Verdict(BaseModel):
    run_id: str
    profile: str
    started_at: str
    finished_at: str
    verdict: Decision
    checks: list[Check] = Field(default_factory=list)
    kpis: list[KPI] = Field(default_factory=list)
    remediations: list[Remediation] = Field(default_factory=list)
    trace: list[TraceStep] = Field(default_factory=list)
    report: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    verification: list[Verification] = Field(default_factory=list)
    #: The capacity stage's answer (R-WHY-1…3, tasks.capacity.SizingResult), when the run measured it.
    sizing: dict[str, Any] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """verdict.json: the design's keys, plus the decision trace."""
        d = self.model_dump(mode="json")
        d["kpis"] = [
            {
                k: v
                for k, v in kpi.items()
                if k in ("name", "scenario", "value", "unit", "band", "previous")
                or (k in ("phase", "rel_change", "regression", "shift") and v not in (None, False))
            }
            for kpi in d["kpis"]
        ]
        d["checks"] = [{k: v for k, v in c.items() if k != "source"} for c in d["checks"]]
        if not d["extra"]:
            d.pop("extra")
        if not d["verification"]:
            d.pop("verification")
        if d["sizing"] is None:
            d.pop("sizing")
        return d
