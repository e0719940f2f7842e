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


class KPI(BaseModel):
    name: str  # e.g. p95_ms, throughput_rps, error_rate, db_pool_use, consumer_lag, saga_time_s
    scenario: str
    value: float | None
    unit: str
    band: str | None = None  # target | allowed | action | None (no band defined)
    previous: float | None = None
    delta_pct: float | None = None
    regression: bool = False
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

    def to_json_dict(self) -> dict[str, Any]:
        """verdict.json: the design's keys, plus the decision trace."""
        d = self.model_dump(mode="json")
        d["kpis"] = [
            {k: v for k, v in kpi.items() if k in ("name", "scenario", "value", "unit", "band", "previous")
             or (k in ("phase", "delta_pct", "regression") and v not in (None, False))}
            for kpi in d["kpis"]
        ]
        d["checks"] = [{k: v for k, v in c.items() if k != "source"} for c in d["checks"]]
        if not d["extra"]:
            d.pop("extra")
        return d
