"""Change-point detection on synthetic nightly series: recall of a step and false alarms (R-REG-1, R-REG-2).

Each series is `--nights` runs of one KPI with relative Gaussian noise `--noise` (default: the run-to-run
noise measured on this machine, see docs/history.md). The detector runs every night over the last
`--window` runs, as the nightly campaign does (soundcheck.changepoints.shifts with the profile defaults:
Otava's change points and the recent-shift test); a change is *reported* the first night it appears.

- recall: a step of `--step` (relative) starting at night `--at` is reported at the right night (±1)
  within 3 runs of its start (by the night of its third run at the new level);
- false alarms: nights on an unchanged series of 2 × `--window` nights on which a change is reported, over
  all nights judged and over those with a full window of history (where a nightly campaign lives), and
  the chance a night raises one over `--kpis` independent series (R-REG-2 counts nights);
- spikes: the same on series with one bad night (+`--spike`) every 10 nights, which must not be reported;
- bound: what no detector can beat (`oracle_recall`): a test told the step's night, with the noise known,
  at the same false-alarm budget, for one gated series and for `--kpis` of them.

    uv run python bench/changepoints.py                       # this machine's noise
    uv run python bench/changepoints.py --noise 0.03 0.05 0.10 --step 0.10
    uv run python bench/changepoints.py --library spa        # signal-processing-algorithms' e_divisive, if installed
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from soundcheck.changepoints import MIN_RUN, shifts  # noqa: E402
from soundcheck.profile import History  # noqa: E402

#: Run-to-run noise of the gated KPIs measured on this machine (bench/nightly_series.py, docs/history.md):
#: the soak p95 of 6 unchanged small runs (nightly-stable, 2026-12-01): 6.3 %; its per-endpoint p95s (a few ms) 16–22 %.
MACHINE_NOISE = 0.063

Detector = Callable[[list[float]], list[int]]


def soundcheck_detector(settings: History) -> Detector:
    return lambda xs: [c.index for c in shifts(xs, settings)]


def spa_detector(max_pvalue: float) -> Detector:
    from signal_processing_algorithms.energy_statistics.energy_statistics import e_divisive

    def detect(xs: list[float]) -> list[int]:
        n = len(xs)
        return [
            i for i in e_divisive(np.asarray(xs), pvalue=max_pvalue, permutations=100) if MIN_RUN <= i <= n - MIN_RUN
        ]

    return detect


def nightly(detect: Detector, xs: np.ndarray, first_night: int, window: int) -> list[tuple[int, int]]:
    """(night, change index) for each change the first night it is reported (±1 of one reported before),
    each night reading the last `window` runs, as the campaign reads `history.runs`."""
    seen: list[int] = []
    out = []
    for night in range(first_night, len(xs) + 1):
        lo = max(0, night - window)
        for i in (lo + j for j in detect(list(xs[lo:night]))):
            if all(abs(i - j) > 1 for j in seen):
                out.append((night, i))
            seen.append(i)
    return out


def evaluate(
    detect: Detector,
    *,
    noise: float,
    step: float,
    at: int,
    nights: int,
    trials: int,
    spike: float,
    seed: int,
    kpis: int = 1,
    window: int = 30,
) -> dict[str, float]:
    """Recall on a series stepped at night `at`; false alarms on stable and spiky series of 2 × `window`
    nights, over every night judged and over the nights with a full `window` of history (steady state)."""
    rng = np.random.default_rng(seed)
    first = 2 * MIN_RUN
    hits = hits6 = false_nights = steady_false = spike_false = 0
    long = 2 * window
    judged, steady = long - first + 1, long - window
    t0 = time.perf_counter()
    for _ in range(trials):
        stepped = 100 * (1 + rng.normal(0, noise, nights))
        stepped[at:] *= 1 + step
        reported = nightly(detect, stepped[: at + 6], first, window)
        hits += any(abs(i - at) <= 1 and night <= at + 3 for night, i in reported)
        hits6 += any(abs(i - at) <= 1 for night, i in reported)
        stable = 100 * (1 + rng.normal(0, noise, long))
        nights_reported = {night for night, _ in nightly(detect, stable, first, window)}
        false_nights += len(nights_reported)
        steady_false += sum(night > window for night in nights_reported)
        spiky = 100 * (1 + rng.normal(0, noise, long))
        spiky[5::10] *= 1 + spike
        spike_false += len({night for night, _ in nightly(detect, spiky, first, window)})
    per_series = false_nights / (trials * judged)
    per_steady = steady_false / (trials * steady)
    return {
        "recall": hits / trials,
        "recall6": hits6 / trials,
        "false": per_series,
        "steady_false": per_steady,
        "spike_false": spike_false / (trials * judged),
        "run_false": 1 - (1 - max(per_series, per_steady)) ** kpis,
        "ms_per_night": (time.perf_counter() - t0) * 1000 / (trials * (at + 6 - first + 1 + 2 * judged)),
    }


def oracle_recall(
    noise: float, step: float, before: int, after: int = 3, night_budget: float = 0.02, kpis: int = 8
) -> float:
    """The best any detector can do: a one-sided test of the mean of the `after` nights since a step whose
    night it is told, against the `before` nights, with the noise known, at the false-alarm budget R-REG-2
    allows one series (2 % of nights over `kpis` series). No spike immunity, no search for the night: a
    real detector does worse."""
    from statistics import NormalDist

    z = NormalDist()
    alpha = 1 - (1 - night_budget) ** (1 / kpis)  # per series and night
    shift = (step / noise) / (1 / after + 1 / before) ** 0.5
    return 1 - z.cdf(z.inv_cdf(1 - alpha) - shift)


def main() -> None:
    d = History()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--noise", type=float, nargs="+", default=[MACHINE_NOISE])
    ap.add_argument("--step", type=float, nargs="+", default=[0.10])
    ap.add_argument("--at", type=int, default=15, help="night the step starts (0-based)")
    ap.add_argument("--nights", type=int, default=30)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--spike", type=float, default=0.30)
    ap.add_argument("--max-pvalue", type=float, default=d.max_pvalue)
    ap.add_argument("--min-change", type=float, default=d.min_change)
    ap.add_argument(
        "--recent-pvalue",
        type=float,
        default=d.recent_pvalue,
        help="the recent-shift test's level (soundcheck.changepoints.recent_shift); 0: Otava's change points only",
    )
    ap.add_argument("--library", choices=["otava", "spa"], default="otava")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--window", type=int, default=d.runs, help="runs each night reads (history.runs)")
    ap.add_argument(
        "--kpis",
        type=int,
        default=8,
        help="independent gated series per run, for the per-run rate "
        "(the soak has 8 that vary; the per-endpoint ones move together, so this is pessimistic)",
    )
    a = ap.parse_args()
    recent = a.recent_pvalue or None
    detect = (
        soundcheck_detector(History(max_pvalue=a.max_pvalue, min_change=a.min_change, recent_pvalue=recent))
        if a.library == "otava"
        else spa_detector(a.max_pvalue)
    )
    print(
        f"library {a.library}, p ≤ {a.max_pvalue:g}"
        + (f", recent shift p ≤ {recent:g}" if recent and a.library == "otava" else ", no recent-shift test")
        + f", min change {a.min_change:.0%}, {a.nights} nights, "
        f"step at night {a.at}, {a.trials} series per cell, one +{a.spike:.0%} night every 10 in 'spikes'"
    )
    print(
        f"| noise | step | recall within 3 runs | within 6 | false alarms per series-night (stable) "
        f"| … with a full {a.window}-run history | … (one +{a.spike:.0%} night in 10) "
        f"| per night, {a.kpis} series (the worse of the two) | ms per night "
        f"| bound: any detector, 3 runs, 1 / {a.kpis} series |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for noise in a.noise:
        for step in a.step:

            def bound(kpis: int, noise: float = noise, step: float = step) -> float:
                return oracle_recall(noise, step, a.at, kpis=kpis)

            r = evaluate(
                detect,
                noise=noise,
                step=step,
                at=a.at,
                nights=a.nights,
                trials=a.trials,
                spike=a.spike,
                seed=a.seed,
                kpis=a.kpis,
                window=a.window,
            )
            print(
                f"| {noise:.1%} | {step:+.0%} | {r['recall']:.0%} | {r['recall6']:.0%} | {r['false']:.2%} "
                f"| {r['steady_false']:.2%} "
                f"| {r['spike_false']:.2%} | {r['run_false']:.1%} | {r['ms_per_night']:.1f} "
                f"| {bound(1):.0%} / {bound(a.kpis):.0%} |"
            )


if __name__ == "__main__":
    main()
