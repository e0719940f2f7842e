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

from soundcheck.profile import Band, Profile

MB = 1024**2

#: The plan's table (R-GATE, §5.1), in the units the KPIs are stored in.
DEFAULT_BANDS: dict[str, Band] = {
    "p95_ms": Band(target=1000, allowed=2000),
    "throughput_rps": Band(target=1000, allowed=800, higher_is_better=True),
    "error_rate": Band(target=0.001, allowed=0.005),
    "db_pool_use": Band(target=0.70, allowed=0.85),
    "consumer_lag": Band(target=100, allowed=500),
    "saga_time_s": Band(target=10, allowed=20),
    "compensation_success": Band(target=1.0, allowed=0.99, higher_is_better=True),
    # not in §5.1, see the module docstring
    "db_cpu_percent": Band(target=70, allowed=90),
    "heap_use": Band(target=0.70, allowed=0.85),
    "redis_memory_bytes": Band(target=500 * MB, allowed=1024 * MB),
    "outbox_oldest_age_s": Band(target=10, allowed=20),
    "unanswered_rate": Band(target=0.001, allowed=0.005),
}

#: Where each band came from, for the report.
BAND_SOURCES: dict[str, str] = {
    "db_cpu_percent": "plan §5.2 (DB CPU > 90 %) and §4.1.1 (scale out at 70 %)",
    "heap_use": "plan §3.4 watch bands",
    "redis_memory_bytes": "plan §3.4 watch bands",
    "outbox_oldest_age_s": "plan §3.3 (outbox every 5 s × 2) and §6.1 (outbox PENDING backlog)",
    "unanswered_rate": "plan §6.1 (network timeouts), error-rate edges",
}

#: KPIs whose edges are rates and so scale with `--scale`.
RATE_KPIS = frozenset({"throughput_rps"})

#: Scenarios where a band applies; a KPI not listed applies everywhere it is measured.
#: Capacity KPIs only mean something under sustained load: race, saga and points fire bursts of ~100
#: requests at one instant on purpose, so their throughput, latency and momentary pool peaks say
#: nothing about capacity (their correctness is what their checks judge).
LOAD = frozenset({"spike", "soak"})
BAND_SCENARIOS: dict[str, frozenset[str]] = {
    "throughput_rps": LOAD,
    "p95_ms": LOAD,
    "db_pool_use": LOAD,
    "heap_use": LOAD,
    "db_cpu_percent": LOAD,
}


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


def _fmt(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:,.4g}" if abs(x) < 1e6 else f"{x:,.0f}"


def bands_for(profile: Profile | None) -> dict[str, Band]:
    """The default table with the profile's overrides applied."""
    out = dict(DEFAULT_BANDS)
    if profile is not None:
        out.update(profile.bands)
    return out


def base_name(kpi: str) -> str:
    """`p95_ms.API-1` → `p95_ms`: per-endpoint KPIs take their family's band unless given their own."""
    return kpi.split(".", 1)[0]


#: Spike phases where a rate KPI is not judged: users are still arriving or already leaving.
UNBANDED_RATE_PHASES = frozenset({"ramp_up", "ramp_down"})


def band(kpi: str, value: float | None, *, bands: dict[str, Band] | None = None, scale: float = 1.0,
         scenario: str | None = None, phase: str | None = None) -> Judgement:
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
        note = (f"edges scaled by --scale {scale:g}: target {_fmt(b.target)} → {_fmt(target)}, "
                f"allowed {_fmt(b.allowed)} → {_fmt(allowed)}")
    if value is None:
        return Judgement(kpi, None, None, target, allowed, b.higher_is_better, note or "not measured")
    if b.higher_is_better:
        where = "target" if value >= target else "allowed" if value >= allowed else "action"
    else:
        where = "target" if value < target else "allowed" if value <= allowed else "action"
    return Judgement(kpi, value, where, target, allowed, b.higher_is_better, note)
