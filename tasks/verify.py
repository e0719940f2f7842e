"""Prove a remediation (R-WHY-4): apply it, re-run what raised it, and show the KPI and the verdict move.

A verdict's remediation is a hypothesis until the same scenario, re-run with the change, moves the KPI
that raised it by more than run-to-run noise *and* the verdict improves. `flows/verify.py` runs the
arms; this module holds the parts that decide:

- **what to apply** (`plan`): a remediation is applied by changing the profile the re-runs use — the
  reference service's settings on the local stack (`infra.local_stack.REMEDIATION_SETTINGS`), the stack's
  parameters or instance count on AWS (`AWS_CHANGES`, through the provisioner that exists). Anything else
  (a code fix, an external target nobody here deploys) is skipped with a sentence saying why.
- **the arms**: before (A, the run's own settings) and after (B), interleaved A B A B … so drift on a
  shared machine falls on both; the original run is not reused (it may have been a noisy one).
- **the effect** (`effect`): the Hodges–Lehmann shift (median of all B − A differences) with the exact
  Moses rank interval (distribution-free; 3 + 3 runs give a 90 % interval, [min, max] of the 9
  differences), the band of each arm's median, and each arm's typical verdict.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from math import comb
from typing import Any

from sqlalchemy import Engine, select

from soundcheck import store
from soundcheck.bands import band, bands_for
from soundcheck.models import KPI, Decision, Verdict, Verification, VerifyRun
from soundcheck.profile import Profile
from tasks.history import higher_is_better

#: Infrastructure remediations on the AWS stack: a stack parameter, or the auto-scaling group's size (+1).
AWS_CHANGES: dict[str, dict[str, Any]] = {
    "upgrade_db_instance": {"parameters": {"DbInstanceClass": "db.r5.xlarge"}},
    "scale_out_app_servers": {"desired_capacity": +1},
}

#: Verdicts from best to worst for "did it improve": INCONCLUSIVE is no improvement over anything.
VERDICT_RANK = {Decision.APPROVE: 0, Decision.APPROVE_WITH_TUNING: 1, Decision.BLOCK: 2, Decision.INCONCLUSIVE: 3}


@dataclass
class Plan:
    """One remediation to verify: the profile data of each arm, the KPI to watch, or why it is skipped."""

    code: str
    change: dict[str, Any]
    was: dict[str, Any] | None = None  # the changed settings' values in arm A
    before: dict[str, Any] | None = None  # profile data of arm A
    after: dict[str, Any] | None = None  # … and of arm B
    kpi: KPI | None = None
    scenarios: list[str] | None = None
    skipped: str | None = None


def stored_verdict(engine: Engine, run_id: str) -> Verdict:
    """The run's latest verdict (verdict.json as stored); a run never judged is a ValueError."""
    v = store.verdicts
    with engine.connect() as c:
        body = c.execute(select(v.c.body).where(v.c.run_id == run_id).order_by(v.c.id.desc()).limit(1)).scalar()
    if body is None:
        raise ValueError(f"run {run_id} has no stored verdict (see `soundcheck history`)")
    return Verdict.model_validate(body)


def stored_run(engine: Engine, run_id: str) -> dict[str, Any]:
    with engine.connect() as c:
        row = c.execute(select(store.runs).where(store.runs.c.run_id == run_id)).first()
    if row is None:
        raise ValueError(f"run {run_id} is not in the result store (see `soundcheck history`)")
    return dict(row._mapping)


def plan(
    profile_data: dict[str, Any],
    profile: Profile,
    verdict: Verdict,
    run: dict[str, Any],
    *,
    codes: list[str] | None = None,
    change: dict[str, Any] | None = None,
) -> list[Plan]:
    """One plan per remediation of the verdict (or per `codes`), in the verdict's order."""
    from infra.local_stack import REMEDIATION_SETTINGS
    from tasks.decide import raised_by

    wanted = codes or [r.code for r in verdict.remediations]
    out = []
    for code in wanted:
        kpis = raised_by(code, verdict.kpis)
        p = Plan(code=code, change=dict(change or {}))
        if not kpis:
            p.skipped = (
                f"{code} was not raised by a KPI of run {verdict.run_id} (a failed check or the "
                "environment): nothing a setting can move"
            )
            out.append(p)
            continue
        p.kpi, p.scenarios = kpis[0], sorted({k.scenario for k in kpis})
        base = copy.deepcopy(profile_data)
        base["name"] = f"{profile.name}~verify"  # not the nightly series: these runs are not comparable nights
        base["scenarios"] = p.scenarios
        base["scale"], base["time_scale"] = run["scale"], run["time_scale"]
        base.setdefault("slack", {})["enabled"] = False
        env = profile.environment
        if env.kind == "local" and not profile.target.base_url:
            local = base.setdefault("environment", {}).setdefault("local", {})
            ran_with = (run.get("settings") or {}).get("settings")
            if ran_with is not None:
                local["settings"] = dict(ran_with)  # exactly what the run had
            if not p.change:
                p.change = dict(REMEDIATION_SETTINGS.get(code, {}))
            if not p.change:
                p.skipped = (
                    f"{code} is not a setting of the local stack (it can apply "
                    f"{', '.join(sorted(REMEDIATION_SETTINGS))})"
                )
            else:
                p.before = base
                p.after = copy.deepcopy(base)
                p.after["environment"]["local"]["settings"] = {**local.get("settings", {}), **p.change}
                p.was = {key: local.get("settings", {}).get(key, "default") for key in p.change}
        elif env.kind == "aws":
            how = p.change or AWS_CHANGES.get(code)
            if not how:
                p.skipped = f"{code} is not a stack change on AWS (it can apply {', '.join(sorted(AWS_CHANGES))})"
            else:
                p.change = dict(how)
                p.before, p.after = base, copy.deepcopy(base)
                aws = p.after.setdefault("environment", {}).setdefault("aws", {})
                if "parameters" in how:
                    aws["parameters"] = {**aws.get("parameters", {}), **how["parameters"]}
                if "desired_capacity" in how:
                    aws["desired_capacity"] = env.aws.desired_capacity + int(how["desired_capacity"])
        else:
            p.skipped = (
                f"{code} cannot be applied automatically to an external target: the campaign does not "
                "deploy it (apply it, then re-run the campaign)"
            )
        out.append(p)
    return out


def arm_order(repeats: int) -> list[str]:
    """A B A B …: each arm `repeats` times, interleaved so drift falls on both."""
    return ["A", "B"] * repeats


# ------------------------------------------------------------------------------------------- effect


def hodges_lehmann(a: list[float], b: list[float]) -> float:
    """The median of all pairwise differences b − a: the shift from A to B, robust to an outlying run."""
    return statistics.median(y - x for x in a for y in b)


def _u_cdf(m: int, n: int) -> list[float]:
    """P(U ≤ u) for u = 0 … m·n under no shift (exact Mann–Whitney distribution, by counting)."""
    counts = [[[0] * (m * n + 1) for _ in range(n + 1)] for _ in range(m + 1)]
    for i in range(m + 1):
        for j in range(n + 1):
            if i == 0 or j == 0:
                counts[i][j][0] = 1
                continue
            for u in range(i * j + 1):
                counts[i][j][u] = (counts[i - 1][j][u - j] if u >= j else 0) + counts[i][j - 1][u]
    total = comb(m + n, m)
    cdf, acc = [], 0
    for c in counts[m][n]:
        acc += c
        cdf.append(acc / total)
    return cdf


def moses_interval(a: list[float], b: list[float], confidence: float = 0.90) -> tuple[float, float, float]:
    """(low, high, achieved confidence) for the shift b − a: order statistics of the pairwise differences
    (the interval that inverts the Mann–Whitney test). The widest n allows when `confidence` is out of reach."""
    m, n = len(a), len(b)
    diffs = sorted(y - x for x in a for y in b)
    cdf = _u_cdf(m, n)
    alpha = 1.0 - confidence
    k = 0  # largest k with P(U ≤ k − 1) ≤ α / 2
    while k < len(cdf) and cdf[k] <= alpha / 2 and k + 1 <= len(diffs) // 2:
        k += 1
    k = max(k, 1)
    achieved = 1.0 - 2 * (cdf[k - 1] if k >= 1 else 0.0)
    return diffs[k - 1], diffs[len(diffs) - k], achieved


def typical_verdict(verdicts: list[str]) -> str:
    """The arm's median verdict by rank (best to worst), so one odd run does not decide."""
    ranked = sorted(verdicts, key=lambda v: VERDICT_RANK[Decision(v)])
    return ranked[(len(ranked) - 1) // 2]


def effect(
    p: Plan, runs: list[VerifyRun], profile: Profile, scale: float, seconds: float, stopped: str | None = None
) -> Verification:
    """Judge one remediation's arms: proven when the interval excludes zero in the right direction and the
    typical verdict improved; otherwise not proven, saying which failed (or that the arms were too few)."""
    assert p.kpi is not None
    k = p.kpi
    a = [r.value for r in runs if r.arm == "A" and r.value is not None]
    b = [r.value for r in runs if r.arm == "B" and r.value is not None]
    v = Verification(
        code=p.code,
        change=p.change,
        was=p.was or {},
        kpi=k.name,
        scenario=k.scenario,
        phase=k.phase,
        unit=k.unit,
        runs=runs,
        seconds=round(seconds, 1),
        status="not proven",
        original_value=k.value,
    )
    va = [r.verdict for r in runs if r.arm == "A"]
    vb = [r.verdict for r in runs if r.arm == "B"]
    if va and vb:
        v.verdict_before, v.verdict_after = typical_verdict(va), typical_verdict(vb)
    table = bands_for(profile)
    if a:
        v.before = statistics.median(a)
        v.band_before = band(k.name, v.before, bands=table, scale=scale, scenario=k.scenario, phase=k.phase).band
    if b:
        v.after = statistics.median(b)
        v.band_after = band(k.name, v.after, bands=table, scale=scale, scenario=k.scenario, phase=k.phase).band
    if len(a) < 2 or len(b) < 2:
        v.why = (stopped or "too few runs measured the KPI") + f" ({len(a)} before, {len(b)} after; at least 2 each)"
        return v
    v.shift = hodges_lehmann(a, b)
    v.low, v.high, v.confidence = moses_interval(a, b)
    better_up = higher_is_better(k.name, table)
    moved = v.low > 0 if better_up else v.high < 0
    improved = VERDICT_RANK[Decision(v.verdict_after)] < VERDICT_RANK[Decision(v.verdict_before)]
    if moved and improved:
        v.status, v.why = "proven", "the interval excludes zero in the right direction and the verdict improved"
    else:
        v.why = "; ".join(
            x
            for x in (
                "" if moved else f"the {v.confidence:.0%} interval of the shift includes zero or points the wrong way",
                "" if improved else f"the verdict did not improve ({v.verdict_before} → {v.verdict_after})",
            )
            if x
        )
    if stopped:
        v.why += f"; {stopped}"
    return v


def kpi_value(verdict: dict[str, Any], k: KPI) -> float | None:
    """The watched KPI's value in one arm's verdict.json."""
    for x in verdict.get("kpis", []):
        if x["name"] == k.name and x["scenario"] == k.scenario and x.get("phase") == k.phase:
            return x.get("value")
    return None


def link_run(store_url: str, run_id: str, parent: str, label: str) -> None:
    """Mark an arm's run as a verification of `parent` (`soundcheck history` shows the link)."""
    from sqlalchemy import update

    engine = store.open_store(store_url)
    try:
        with engine.begin() as c:
            c.execute(update(store.runs).where(store.runs.c.run_id == run_id).values(parent_run=parent, label=label))
    finally:
        engine.dispose()


def fmt_verification(v: Verification) -> str:
    """`raise_db_pool (db_pool_size 5 → 10): db_pool_use/spike 88.0% → 41.0% [−52, −41 pp] (90% interval),
    APPROVE_WITH_TUNING → APPROVE, 3 + 3 runs, 9 min: proven` — one line for Slack, the CLI and the report."""
    from soundcheck.plan import fmt_value

    change = ", ".join(
        f"{key} {v.was[key]} → {val}" if key in v.was else f"{key} → {val}" for key, val in v.change.items()
    )
    head = f"{v.code}" + (f" ({change})" if change else "")
    if v.status == "skipped":
        return f"{head}: skipped — {v.why}"
    n_a = sum(r.arm == "A" for r in v.runs)
    n_b = sum(r.arm == "B" for r in v.runs)
    where = f"{v.kpi}/{v.scenario}" + (f"/{v.phase}" if v.phase else "")
    parts = [f"{head}: {where} {fmt_value(v.before, v.unit)} → {fmt_value(v.after, v.unit)}"]
    if v.low is not None and v.high is not None:
        pp = v.unit in ("ratio", "share", "fraction")
        unit = "pp" if pp else v.unit
        scale = 100 if pp else 1
        parts[0] += (
            f" [{_signed(v.low * scale)}, {_signed(v.high * scale)}{' ' + unit if unit else ''}]"
            f" ({v.confidence:.0%} interval)"
        )
    if v.verdict_before and v.verdict_after:
        parts.append(f"{v.verdict_before} → {v.verdict_after}")
    parts.append(f"{n_a} + {n_b} runs, {v.seconds / 60:.0f} min")
    return ", ".join(parts) + f": {v.status}" + ("" if v.status == "proven" else f" — {v.why}")


def _signed(x: float) -> str:
    text = f"{x:+.0f}" if abs(x) >= 10 else f"{x:+.2g}"
    return text.replace("-", "−")
