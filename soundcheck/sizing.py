"""Sizing (R-WHY-1…3): how much load one instance sustains, how that scales, how many the peak needs.

Pure arithmetic, no I/O; `tasks/capacity.py` measures and `flows/sizing.py` orchestrates.

* **Stairs.** Offered load rises step by step (`stairs`); a step passes when every gate of the plan held
  at steady state (`judge_step`): token p95 and poll p99 within their targets, errors under the plan's
  0.1 %, no iteration dropped by k6 (the load was really offered), achieved rate within 5 % of the
  offered one, and no upward latency trend inside the step. The highest passing step is the sustainable
  load; the first failing one is past the knee.
* **Model.** The Universal Scalability Law, X(N) = λN / (1 + σ(N−1) + κN(N−1)), fitted by least squares
  (scipy) on every repeat's sustainable load per instance count, with a bootstrap over repeats for the
  uncertainty of each prediction.
* **Recommendation.** The smallest count whose predicted capacity, less a headroom, carries the plan's
  peak (1,000 token and 3,333 poll req/s at once, × scale); and the scale-out point: the load (and CPU)
  at which a new instance must start so that it is ready before the fleet reaches its knee, given the
  instance start-up time and how fast load grows.
"""

from __future__ import annotations

import math
import random
import statistics
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

#: The plan's peak (§3.1, R-WHY-2): token issue and polls at once, req/s at scale 1.
PEAK_TOKEN_RPS = 1000.0
PEAK_POLL_RPS = 3333.0
PEAK_RPS = PEAK_TOKEN_RPS + PEAK_POLL_RPS
#: The spike's mix: the share of requests that issue a token (the rest poll).
TOKEN_SHARE = PEAK_TOKEN_RPS / PEAK_RPS


@dataclass(frozen=True)
class Gates:
    """The plan's gates as the capacity stage applies them to one step's steady window."""

    token_p95_ms: float = 500.0  # R-SPIKE-1
    poll_p99_ms: float = 1000.0  # R-SPIKE-2
    error_rate: float = 0.001  # R-SPIKE-6 (5xx and unanswered)
    min_achieved: float = 0.95  # achieved / offered
    #: Latency trend inside the step: the second half's p95 over the first half's, and the least rise in ms
    #: that counts (a 2 ms → 4 ms doubling is noise, not a queue building up).
    trend_ratio: float = 1.5
    trend_min_ms: float = 50.0
    #: A rise counts when, going on at the pace measured between the halves for this many more steady windows,
    #: it would reach the token p95 gate: a queue that outgrows the service does, a 60 → 123 ms wobble inside
    #: a 7 s window near the knee does not (6 of the 10 failing steps of four one-instance climbs on 2026-12-04
    #: failed on the rise alone, at p95 123–408 ms).
    trend_horizon: float = 1.0


@dataclass
class StepResult:
    offered_rps: float
    achieved_rps: float
    seconds: float
    token_p95_ms: float | None
    poll_p99_ms: float | None
    p95_first_ms: float | None  # the steady window's first half, all endpoints
    p95_second_ms: float | None
    error_rate: float
    dropped_iterations: int
    passed: bool = False
    why: list[str] = field(default_factory=list)
    #: Server resources during the step (cpu_percent per instance, db_pool_use, redis memory …).
    resources: dict[str, float] = field(default_factory=dict)


def stairs(start_rps: float, factor: float, max_steps: int, max_rps: float | None = None) -> list[float]:
    """Offered loads: start, start·factor, … (rounded to 0.1 req/s), at most `max_steps`, none over `max_rps`."""
    if start_rps <= 0 or factor <= 1 or max_steps < 1:
        raise ValueError("stairs need start_rps > 0, factor > 1 and at least one step")
    out, r = [], start_rps
    while len(out) < max_steps and (max_rps is None or r <= max_rps):
        out.append(round(r, 1))
        r *= factor
    return out


def rising_toward_the_gate(s: StepResult, gates: Gates = Gates()) -> bool:
    """Is latency still climbing inside the step, fast enough to break the token p95 gate soon? The halves'
    p95 must rise by the ratio and the least rise, and, extrapolated at that pace (the halves' midpoints are
    half the steady window apart) for `trend_horizon` more windows, reach the gate."""
    a, b = s.p95_first_ms, s.p95_second_ms
    if a is None or b is None or b <= a * gates.trend_ratio or b - a <= gates.trend_min_ms:
        return False
    per_window = 2 * (b - a)  # the rise over one whole steady window
    return b + gates.trend_horizon * per_window >= gates.token_p95_ms


def judge_step(s: StepResult, gates: Gates = Gates()) -> StepResult:
    """Mark the step passed or not, with the gates that failed (in the plan's words)."""
    why = []
    if s.token_p95_ms is not None and s.token_p95_ms >= gates.token_p95_ms:
        why.append(f"token p95 {s.token_p95_ms:.0f} ms ≥ {gates.token_p95_ms:.0f} ms")
    if s.poll_p99_ms is not None and s.poll_p99_ms >= gates.poll_p99_ms:
        why.append(f"poll p99 {s.poll_p99_ms:.0f} ms ≥ {gates.poll_p99_ms:.0f} ms")
    if s.error_rate >= gates.error_rate:
        why.append(f"errors {s.error_rate:.2%} ≥ {gates.error_rate:.1%}")
    if s.dropped_iterations > 0:
        why.append(f"{s.dropped_iterations} iterations dropped (the generator could not offer the load)")
    if s.offered_rps > 0 and s.achieved_rps < gates.min_achieved * s.offered_rps:
        why.append(f"achieved {s.achieved_rps:.0f} of {s.offered_rps:.0f} req/s offered")
    if rising_toward_the_gate(s, gates):
        why.append(f"latency still rising within the step (p95 {s.p95_first_ms:.0f} → {s.p95_second_ms:.0f} ms)")
    s.passed, s.why = not why, why
    return s


# ---------------------------------------------------------------------------------------------- the model
def usl(n: Any, lam: float, sigma: float, kappa: float) -> Any:
    """Throughput at n instances: λn / (1 + σ(n−1) + κn(n−1))."""
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


@dataclass
class UslFit:
    lam: float  # throughput of one instance (req/s)
    sigma: float  # contention (serialised share)
    kappa: float  # coherency (crosstalk)
    points: list[tuple[int, float]]  # (instances, sustainable req/s) the fit saw
    rmse: float
    #: Bootstrap draws of (λ, σ, κ), one per resample of the repeats; empty with one repeat per count.
    draws: list[tuple[float, float, float]] = field(default_factory=list)

    def predict(self, n: float) -> float:
        return float(usl(n, self.lam, self.sigma, self.kappa))

    def interval(self, n: float, level: float = 0.9) -> tuple[float, float] | None:
        """The bootstrap interval of X(n), or None without repeats."""
        if len(self.draws) < 10:
            return None
        xs = sorted(float(usl(n, *d)) for d in self.draws)
        lo = xs[int((1 - level) / 2 * (len(xs) - 1))]
        hi = xs[int((1 + level) / 2 * (len(xs) - 1))]
        return lo, hi

    @property
    def peak_instances(self) -> float:
        """N* = √((1−σ)/κ), where adding instances stops adding throughput (∞ without coherency cost)."""
        if self.kappa <= 0:
            return math.inf
        return math.sqrt(max(0.0, 1 - self.sigma) / self.kappa)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("draws")
        d["peak_instances"] = None if math.isinf(self.peak_instances) else round(self.peak_instances, 2)
        d["bootstrap_draws"] = len(self.draws)
        return d


def _least_squares(ns: list[int], xs: list[float]) -> tuple[float, float, float]:
    """λ, σ, κ by bounded least squares; with fewer than three distinct counts κ is held at 0 (Amdahl's
    law): two counts cannot tell contention from coherency."""
    import numpy as np
    from scipy.optimize import OptimizeWarning, curve_fit

    n = np.asarray(ns, dtype=float)
    x = np.asarray(xs, dtype=float)
    lam0 = float(max(x[n == n.min()].mean(), 1e-6) / n.min())
    with warnings.catch_warnings():  # as many points as parameters: no covariance, by design
        warnings.simplefilter("ignore", OptimizeWarning)
        if len(set(ns)) < 3:
            (lam, sigma), _ = curve_fit(
                lambda n, lam, sigma: usl(n, lam, sigma, 0.0),
                n,
                x,
                p0=[lam0, 0.05],
                bounds=([1e-9, 0.0], [np.inf, 1.0]),
                maxfev=20_000,
            )
            return float(lam), float(sigma), 0.0
        (lam, sigma, kappa), _ = curve_fit(
            usl, n, x, p0=[lam0, 0.05, 0.001], bounds=([1e-9, 0.0, 0.0], [np.inf, 1.0, 1.0]), maxfev=20_000
        )
    return float(lam), float(sigma), float(kappa)


def fit_usl(results: dict[int, list[float]], *, draws: int = 200, seed: int = 7) -> UslFit:
    """Fit the USL on {instances: [sustainable req/s per repeat]}; at least two instance counts (three
    to separate contention from coherency). The bootstrap resamples each count's repeats."""
    counts = sorted(n for n, v in results.items() if v)
    if len(counts) < 2:
        raise ValueError("a scalability fit needs sustainable loads at two instance counts or more")
    ns = [n for n in counts for _ in results[n]]
    xs = [x for n in counts for x in results[n]]
    lam, sigma, kappa = _least_squares(ns, xs)
    rmse = math.sqrt(statistics.fmean((usl(n, lam, sigma, kappa) - x) ** 2 for n, x in zip(ns, xs, strict=True)))
    fit = UslFit(lam, sigma, kappa, list(zip(ns, xs, strict=True)), rmse)
    if any(len(results[n]) > 1 for n in counts):
        rng = random.Random(seed)
        for _ in range(draws):
            bn, bx = [], []
            for n in counts:
                sample = [rng.choice(results[n]) for _ in results[n]]
                bn += [n] * len(sample)
                bx += sample
            try:
                fit.draws.append(_least_squares(bn, bx))
            except (RuntimeError, ValueError):
                continue
    return fit


# ----------------------------------------------------------------------------------------- recommendation
@dataclass
class Recommendation:
    peak_rps: float  # what the plan's peak needs (× scale)
    headroom: float  # the share of capacity kept free at the peak
    instances: int | None  # None: no count reaches it (the model peaks below it)
    predicted_rps: float | None  # the fit's capacity at that count
    predicted_interval: tuple[float, float] | None
    why: str
    #: Scale-out point: aggregate load (and CPU % of one instance's share) at which a new instance must
    #: start so it is serving before the fleet's knee, when load grows at `ramp_rps_per_s`.
    scale_out_at_rps: float | None = None
    scale_out_cpu_percent: float | None = None
    startup_s: float = 0.0
    ramp_rps_per_s: float = 0.0
    scale_out_why: str = ""


def recommend(
    fit: UslFit,
    peak_rps: float,
    headroom: float = 0.3,
    *,
    max_instances: int = 64,
) -> Recommendation:
    """The smallest count with X(N)·(1 − headroom) ≥ peak; says so plainly when none does."""
    if not 0 <= headroom < 1:
        raise ValueError("headroom is a share of capacity in [0, 1)")
    need = peak_rps / (1 - headroom)
    for n in range(1, max_instances + 1):
        x = fit.predict(n)
        if x >= need:
            return Recommendation(
                peak_rps,
                headroom,
                n,
                x,
                fit.interval(n),
                f"{n} instance{'s' if n > 1 else ''} carry {x:,.0f} req/s by the fit; the peak needs "
                f"{peak_rps:,.0f} req/s with {headroom:.0%} headroom ({need:,.0f} req/s)",
            )
    best_n = min(max_instances, max(1, round(fit.peak_instances))) if not math.isinf(fit.peak_instances) else None
    top = fit.predict(best_n) if best_n else fit.predict(max_instances)
    return Recommendation(
        peak_rps,
        headroom,
        None,
        None,
        None,
        f"no count up to {max_instances} reaches {need:,.0f} req/s: the fit levels off at {top:,.0f} req/s"
        + (f" near {best_n} instances (contention σ {fit.sigma:.3f}, coherency κ {fit.kappa:.4f})" if best_n else "")
        + "; scaling out does not carry the peak, the shared bottleneck must go",
    )


def scale_out_point(
    rec: Recommendation,
    fit: UslFit,
    running: int,
    *,
    startup_s: float,
    ramp_rps_per_s: float,
    cpu_per_rps: float | None = None,
    cpu_base: float = 0.0,
) -> Recommendation:
    """Where a new instance must start: the fleet of `running` reaches its knee at X(running); the new one
    needs `startup_s`, during which load grows by ramp·startup. CPU % (of one instance's share) follows from
    the per-instance CPU-to-load line measured in the steps (cpu = base + slope·load)."""
    knee = fit.predict(running)
    start_at = knee - ramp_rps_per_s * startup_s
    rec.startup_s, rec.ramp_rps_per_s = startup_s, ramp_rps_per_s
    if start_at <= 0:
        rec.scale_out_why = (
            f"load grows {ramp_rps_per_s:,.0f} req/s each second and an instance needs {startup_s:.0f} s: "
            f"{running} instance{'s' if running > 1 else ''} reach their knee ({knee:,.0f} req/s) before a new "
            "one could serve; scale out ahead of the event (a scheduled action to the recommended count)"
        )
        return rec
    rec.scale_out_at_rps = start_at
    if cpu_per_rps is not None:
        rec.scale_out_cpu_percent = cpu_base + cpu_per_rps * start_at / running
    rec.scale_out_why = (
        f"start a new instance at {start_at:,.0f} req/s ({start_at / knee:.0%} of the knee of {running})"
        + (f", about {rec.scale_out_cpu_percent:.0f} % CPU per instance" if rec.scale_out_cpu_percent else "")
        + f": it serves {startup_s:.0f} s later, when load has grown {ramp_rps_per_s * startup_s:,.0f} req/s"
    )
    return rec


def cpu_line(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(base %, % per req/s) of one instance's CPU against its load, least squares; None under 2 points."""
    pts = [(x, y) for x, y in points if x > 0 and not math.isnan(y)]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return my - slope * mx, slope


def prediction_holds(predicted: float, measured: float, tolerance: float = 0.15) -> bool:
    """R-WHY-2's check of the verification run: measured within ±tolerance of the prediction."""
    return abs(measured - predicted) <= tolerance * predicted
