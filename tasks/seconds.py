"""One endpoint's requests in one second: the unit the ingest writes, the safety watcher reads live, and the
KPIs merge (counts, status classes and codes, quantiles, and the mergeable sketch behind them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from soundcheck.sketch import Histogram

QUANTILES = (0.5, 0.95, 0.99)
UNTAGGED = "UNTAGGED"


@dataclass
class SecondAggregate:
    """One endpoint's requests in one second: what `second_aggregates` stores and `on_second` gets."""

    second: int  # epoch second
    endpoint: str
    count: int
    s2xx: int
    s3xx: int
    s4xx: int
    s5xx: int
    failed: int
    codes: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    sketch: bytes

    def error_rate(self) -> float:
        """Share answered 5xx or not answered (the brief's `error_rate`)."""
        return (self.s5xx + self.failed) / self.count if self.count else 0.0


@dataclass
class SecondAccumulator:
    """Collects one (second, endpoint) as requests arrive; `summary` gives what is stored."""

    hist: Histogram = field(default_factory=Histogram)
    codes: dict[int, int] = field(default_factory=dict)

    def summary(self, second: int, endpoint: str) -> SecondAggregate:
        classes = [0, 0, 0, 0, 0, 0]  # index = status // 100; 0 = no answer
        for code, n in self.codes.items():
            classes[min(max(code // 100, 0), 5)] += n
        p50, p95, p99 = self.hist.quantiles(QUANTILES)
        return SecondAggregate(
            second=second,
            endpoint=endpoint,
            count=int(self.hist.count),
            s2xx=classes[2],
            s3xx=classes[3],
            s4xx=classes[4],
            s5xx=classes[5],
            failed=classes[0] + classes[1],
            codes={str(k): v for k, v in sorted(self.codes.items())},
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            max_ms=self.hist.max if self.hist.count else None,
            sketch=self.hist.to_bytes(),
        )


OnSecond = Callable[[str, int, dict[str, SecondAggregate]], None]
