"""The PromQL a bare ``/metrics`` scrape can answer on its own: the metric maps' expressions, parsed and evaluated.

A metric map's values are PromQL so the same map serves a Prometheus server. Without one, the scrape collector
evaluates this subset itself: ``[sum|max|min|avg|count(] [rate|increase(] name{label="v",…}[window] [)] [)]
[* k | / k]`` and ``histogram_quantile(q, sum by (le) (rate(name_bucket{…}[w])))``, with Prometheus' own
bucket interpolation. Anything else is refused when the map is loaded, with the expression named.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_EXPR = re.compile(
    r"^\s*(?:(?P<agg>sum|max|min|avg|count)\s*\(\s*)?"
    r"(?:(?P<fn>rate|increase)\s*\(\s*)?"
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(?P<matchers>[^}]*)\})?\s*(?:\[(?P<window>[^\]]+)\]\s*)?"
    r"(?(fn)\)\s*)(?(agg)\)\s*)"
    r"(?:(?P<op>[*/])\s*(?P<k>[0-9.]+(?:[eE][+-]?[0-9]+)?)\s*)?$"
)
_HQ = re.compile(
    r"^\s*histogram_quantile\s*\(\s*(?P<q>[0-9.]+)\s*,\s*sum\s+by\s*\(\s*le\s*\)\s*\(\s*(?P<fn>rate|increase)\s*\(\s*"
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*_bucket)\s*(?:\{(?P<matchers>[^}]*)\})?\s*(?:\[(?P<window>[^\]]+)\]\s*)?"
    r"\)\s*\)\s*\)\s*$"
)
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


@dataclass(frozen=True)
class Expr:
    """A parsed map expression (the subset of PromQL a scrape can answer on its own)."""

    name: str
    matchers: tuple[tuple[str, str, str], ...] = ()
    agg: str | None = None
    fn: str | None = None
    factor: float = 1.0
    quantile: float | None = None  # histogram_quantile(q, sum by (le) (rate(name_bucket[w])))

    def matches(self, labels: dict[str, str]) -> bool:
        for label, op, want in self.matchers:
            have = labels.get(label, "")
            if op == "=" and have != want or op == "!=" and have == want:
                return False
            if op == "=~" and not re.fullmatch(want, have) or op == "!~" and re.fullmatch(want, have):
                return False
        return True


def _parse_matchers(raw: str, text: str) -> tuple[tuple[str, str, str], ...]:
    matchers: list[tuple[str, str, str]] = []
    pos = 0
    while pos < len(raw.strip()):
        mm = _MATCHER.match(raw, pos)
        if not mm:
            raise ValueError(f"bad label matcher in {text!r}")
        matchers.append((mm[1], mm[2], mm[3].encode().decode("unicode_escape")))
        pos = mm.end()
    return tuple(matchers)


def parse_expr(text: str) -> Expr:
    h = _HQ.match(text)
    if h:
        return Expr(h["name"], _parse_matchers(h["matchers"] or "", text), fn=h["fn"], quantile=float(h["q"]))
    m = _EXPR.match(text)
    if not m:
        raise ValueError(
            f"metric expression {text!r} is beyond what a /metrics scrape can evaluate "
            '(use agg(rate(name{label="v"})) * k, or a Prometheus source)'
        )
    matchers = _parse_matchers(m["matchers"] or "", text)
    factor = 1.0
    if m["op"]:
        k = float(m["k"])
        factor = k if m["op"] == "*" else 1.0 / k
    return Expr(m["name"], matchers, m["agg"], m["fn"], factor)


def aggregate(agg: str, values: list[float]) -> float:
    if agg == "sum":
        return math.fsum(values)
    if agg == "max":
        return max(values)
    if agg == "min":
        return min(values)
    if agg == "avg":
        return math.fsum(values) / len(values)
    return float(len(values))  # count


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' interpolation: `buckets` are (upper bound, cumulative count), sorted, ending at +Inf."""
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for i, (upper, count) in enumerate(buckets):
        if count >= rank and count > below:
            if math.isinf(upper):
                return buckets[i - 1][0] if i > 0 else math.nan
            if upper <= 0:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return buckets[-2][0] if len(buckets) > 1 else math.nan
