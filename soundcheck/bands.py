"""KPI bands: the plan's R-GATE table (§5.1) as defaults, overridable per profile (`Profile.bands`).

A band has two edges. For a lower-is-better KPI: value < target → "target", target ≤ value ≤ allowed →
"allowed", above → "action". For a higher-is-better KPI (throughput, compensation success) the
comparisons flip: value ≥ target → "target", value ≥ allowed → "allowed", below → "action".

Rate KPIs (throughput) are judged against edges multiplied by the campaign's `--scale`: a 2 %-scale
run drives 2 % of the plan's users, so it cannot reach 1,000 req/s; the scaled edge is reported in
the judgement's `note` (and so in the decision trace).

Beyond the plan's §5.1 rows, three bands come from elsewhere in the plan and are marked as such:
DB CPU (the tree's "DB CPU > 90 %" action; the 70 % target edge is the plan's auto-scaling threshold,
§4.1.1), heap use and Redis memory (the soak's watch bands, §3.4: normal < 70 % / alarm > 85 %,
< 500 MB / > 1 GB).
"""

from __future__ import annotations

from dataclasses import dataclass

from soundcheck.plan import KPIS, RAMP_PHASES, Band, fmt_edge, kpi_family
from soundcheck.profile import Profile

#: The plan's table (R-GATE, §5.1), in the units the KPIs are stored in (soundcheck.plan.KPIS).
DEFAULT_BANDS: dict[str, Band] = {n: k.band for n, k in KPIS.items() if k.band is not None}

#: Where each band came from when not §5.1, for the report.
BAND_SOURCES: dict[str, str] = {n: k.source for n, k in KPIS.items() if k.band is not None and k.source != "plan §5.1"}

#: KPIs whose edges are rates and so scale with `--scale`.
RATE_KPIS = frozenset(n for n, k in KPIS.items() if k.rate)

#: Scenarios where a band applies; a KPI not listed applies everywhere it is measured.
BAND_SCENARIOS: dict[str, frozenset[str]] = {n: k.stages for n, k in KPIS.items() if k.stages is not None}

#: Spike phases where a rate KPI is not judged: users are still arriving or already leaving.
UNBANDED_RATE_PHASES = RAMP_PHASES

base_name = kpi_family
_fmt = fmt_edge


@dataclass(frozen=True)
class Judgement:
    kpi: str
    value: float | None
    band: str | None  # target | allowed | action | None (no band, or no value)
    target: float | None = None
    allowed: float | None = None
    higher_is_better: bool = False
    note: str = ""

    def edges(self) -> str:
        """Human form of the band's edges, e.g. '< 1000 target, ≤ 2000 allowed'."""
        if self.target is None:
            return ""
        if self.higher_is_better:
            return f"≥ {_fmt(self.target)} target, ≥ {_fmt(self.allowed)} allowed"
        return f"< {_fmt(self.target)} target, ≤ {_fmt(self.allowed)} allowed"


def bands_for(profile: Profile | None) -> dict[str, Band]:
    """The default table with the profile's overrides applied."""
    out = dict(DEFAULT_BANDS)
    if profile is not None:
        out.update(profile.bands)
    return out


def band(
    kpi: str,
    value: float | None,
    *,
    bands: dict[str, Band] | None = None,
    scale: float = 1.0,
    scenario: str | None = None,
    phase: str | None = None,
) -> Judgement:
    """Place one KPI value in its band. `scale` is the campaign's `--scale` (rate KPIs only)."""
    table = bands if bands is not None else DEFAULT_BANDS
    name = kpi if kpi in table else base_name(kpi)
    b = table.get(name)
    if b is None:
        return Judgement(kpi, value, None, note="no band defined")
    allowed_in = BAND_SCENARIOS.get(base_name(name))
    if scenario is not None and allowed_in is not None and scenario not in allowed_in:
        return Judgement(kpi, value, None, note=f"not banded in {scenario}")
    if name in RATE_KPIS and phase in UNBANDED_RATE_PHASES:
        return Judgement(kpi, value, None, note=f"not banded in {phase}")
    target, allowed, note = b.target, b.allowed, ""
    if name in RATE_KPIS and scale != 1.0:
        target, allowed = target * scale, allowed * scale
        note = (
            f"edges scaled by --scale {scale:g}: target {_fmt(b.target)} → {_fmt(target)}, "
            f"allowed {_fmt(b.allowed)} → {_fmt(allowed)}"
        )
    if value is None:
        return Judgement(kpi, None, None, target, allowed, b.higher_is_better, note or "not measured")
    if b.higher_is_better:
        where = "target" if value >= target else "allowed" if value >= allowed else "action"
    else:
        where = "target" if value < target else "allowed" if value <= allowed else "action"
    return Judgement(kpi, value, where, target, allowed, b.higher_is_better, note)
