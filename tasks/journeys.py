"""Spike journeys (R-SPIKE-12, R-SPIKE-13): does the queue keep moving, and is every user accounted for?

Read from what spike.js records per user, on any target (no database needed):
- `sc_token_status{status}` at each token answer (issue instants, ENTERED or WAITING at issue);
- `sc_wait_until_entered_s` at each admission seen by a poll (value: the wait; 0 for ENTERED at issue);
- `sc_poll_gave_up{why}` at each give-up (limit: the poll limit; gone: the token answered EXPIRED or DONE
  while waiting; error: the poll answered no status);
- `sc_saga_time_s` at each terminal payment: that user's place is freed (the plan: a payment ending ends
  the user's turn), and an ENTERED token's TTL running out frees its place too;
- `sc_journey{outcome, how, at_issue}` once per user at the end of the journey (value: seconds in the queue).

**Queue moving (R-SPIKE-12).** Every freed place must go to a waiting user within the target's admission
period + the poll interval (a user sees an admission at its next poll) + a margin. The k-th place freed
(time F_k) is *stalled* when, at F_k + allowed, users were still waiting and fewer than k places had been
given: admissions seen by polls, plus ENTERED-at-issue answers beyond the capacity (a place freed during
the issue ramp goes to a new arrival), plus every user who had given up by then (a user who stopped polling
may still be first in the target's queue and take a place unseen: counted as given, so a give-up never
makes a stall). Counting, not matching, so any admission order is fine.

**Journeys (R-SPIKE-13).** Each token-taking user ends entered, gave up, or failed (and how). A give-up is
*unexplained* when it was not the poll limit (the token vanished, the poll failed) or when it happened
while the queue owed admissions (a place freed more than `allowed` earlier had not been given). The wait
until ENTERED is measured over everyone: Kaplan–Meier over users WAITING or ENTERED at issue, give-ups
censored at the time they stopped waiting; when fewer than 5 % of users are still unadmitted when the last
one stops waiting, p95 is read off the curve, else it is not reached and the KPI is the longest observed
wait, a lower bound, with `wait_censored_share` (the share who gave up) beside it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from soundcheck.plan import ADMISSION_MARGIN_S, POLL_INTERVAL_S, TARGET_LIMITS

MOVING_COLUMNS = [
    "capacity",
    "allowed_s",
    "freed",
    "freed_while_waiting",
    "given",
    "stalled",
    "first_stall_s",
    "waiting_at_stall",
    "stall_note",
]
SUMMARY_COLUMNS = [
    "issued",
    "journeys",
    "unaccounted",
    "entered_at_issue",
    "admitted",
    "gave_up",
    "failed",
    "gave_up_limit",
    "unexplained_give_ups",
    "unexplained_detail",
    "censored_share",
]
JOURNEY_COLUMNS = ["outcome", "how", "at_issue", "count"]


def _tag(tags: Any, key: str) -> str:
    return str(tags.get(key) or "") if isinstance(tags, dict) else ""


@dataclass
class QueueFlow:
    """The spike's queue events as sorted epoch seconds."""

    issued_entered: list[float]
    issued_waiting: list[float]
    admitted: list[float]
    gave_up: list[tuple[float, str]]  # (when, why)
    freed: list[float]
    capacity: int
    allowed_s: float

    @classmethod
    def from_samples(cls, k6: pd.DataFrame, limits: dict[str, Any], end: float | None) -> QueueFlow:
        lim = {**TARGET_LIMITS, **limits}
        ttl = float(lim["queue_ttl_seconds"])
        allowed = float(lim["admission_period_s"]) + POLL_INTERVAL_S + ADMISSION_MARGIN_S

        def rows(metric: str) -> pd.DataFrame:
            return k6[k6["metric"] == metric] if not k6.empty else k6

        tok = rows("sc_token_status")
        status = [_tag(t, "status").upper() for t in tok["tags"]] if not tok.empty else []
        ts = pd.to_numeric(tok["ts"]).tolist() if not tok.empty else []
        entered = sorted(t for t, s in zip(ts, status, strict=True) if s == "ENTERED")
        waiting = sorted(t for t, s in zip(ts, status, strict=True) if s == "WAITING")
        w = rows("sc_wait_until_entered_s")
        admitted = (
            sorted(float(t) for t, v in zip(w["ts"], w["value"], strict=True) if float(v) > 0) if not w.empty else []
        )
        g = rows("sc_poll_gave_up")
        gave_up = (
            sorted((float(t), _tag(tags, "why") or "limit") for t, tags in zip(g["ts"], g["tags"], strict=True))
            if not g.empty
            else []
        )
        s = rows("sc_saga_time_s")
        freed = [float(t) for t in s["ts"]] if not s.empty else []
        # an ENTERED token's TTL running out frees its place (admitted: issue = admission − wait)
        starts = entered + (
            [float(t) - float(v) for t, v in zip(w["ts"], w["value"], strict=True) if float(v) > 0]
            if not w.empty
            else []
        )
        freed += [t + ttl for t in starts if end is not None and t + ttl <= end]
        return cls(entered, waiting, admitted, gave_up, sorted(freed), int(lim["queue_capacity"]), allowed)

    def __post_init__(self) -> None:
        self.gave_up_at = [g for g, _ in self.gave_up]  # sorted, as gave_up is

    def _count(self, xs: list[float], t: float) -> int:
        return bisect_right(xs, t)

    def given(self, t: float) -> int:
        """Places given by `t`: admissions seen, plus ENTERED-at-issue answers beyond the capacity."""
        return self._count(self.admitted, t) + max(0, self._count(self.issued_entered, t) - self.capacity)

    def gone(self, t: float) -> int:
        return bisect_right(self.gave_up_at, t)

    def waiting(self, t: float) -> int:
        """Users still polling at `t` (WAITING at issue, not admitted, not given up)."""
        return self._count(self.issued_waiting, t) - self._count(self.admitted, t) - self.gone(t)

    def owed(self, t: float) -> int:
        """Places freed more than `allowed` before `t` that nobody took by `t` (give-ups before `t` may have)."""
        due = self._count(self.freed, t - self.allowed_s)
        before = bisect_left(self.gave_up_at, t)
        return max(0, due - self.given(t) - before)

    def moving(self) -> pd.DataFrame:
        t0 = min(self.issued_entered[:1] + self.issued_waiting[:1], default=None)
        stalled, first, waiting_then, while_waiting = 0, np.nan, np.nan, 0
        for k, f in enumerate(self.freed, start=1):
            if self.waiting(f) > 0:
                while_waiting += 1
            deadline = f + self.allowed_s
            if self.waiting(deadline) > 0 and self.given(deadline) + self.gone(deadline) < k:
                stalled += 1
                if np.isnan(first):
                    first = f - (t0 if t0 is not None else f)
                    waiting_then = float(self.waiting(deadline))
        return pd.DataFrame(
            [
                {
                    "capacity": self.capacity,
                    "allowed_s": self.allowed_s,
                    "freed": len(self.freed),
                    "freed_while_waiting": while_waiting,
                    "given": self.given(float("inf")),
                    "stalled": stalled,
                    "first_stall_s": first,
                    "waiting_at_stall": waiting_then,
                    "stall_note": ""
                    if not stalled
                    else f" (the first {first:.0f} s after the first token, {waiting_then:.0f} users still waiting)",
                }
            ],
            columns=MOVING_COLUMNS,
        )

    def unexplained_give_ups(self) -> dict[str, int]:
        """Give-ups neither the poll limit nor a full queue explains, by cause."""
        out: dict[str, int] = {}
        for t, why in self.gave_up:
            cause = why if why != "limit" else ("while_owed" if self.owed(t) > 0 else "")
            if cause:
                out[cause] = out.get(cause, 0) + 1
        return out


def journey_counts(k6: pd.DataFrame) -> pd.DataFrame:
    """One row per (outcome, how, at_issue) of the `sc_journey` samples, with its count."""
    j = k6[k6["metric"] == "sc_journey"] if not k6.empty else k6
    if j.empty:
        return pd.DataFrame(columns=JOURNEY_COLUMNS)
    keys = pd.DataFrame({c: [_tag(t, c) for t in j["tags"]] for c in ("outcome", "how", "at_issue")})
    return (
        keys.value_counts()
        .rename("count")
        .reset_index()[JOURNEY_COLUMNS]
        .sort_values(["outcome", "how", "at_issue"])
        .reset_index(drop=True)
    )


def journey_summary(k6: pd.DataFrame, flow: QueueFlow) -> pd.DataFrame:
    """One row accounting for every token-taking user (R-SPIKE-13); empty when no token was answered."""
    issued = len(flow.issued_entered) + len(flow.issued_waiting)
    if not issued:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    counts = journey_counts(k6)

    def n(**match: str) -> int:
        m = counts
        for k, v in match.items():
            m = m[m[k] == v]
        return int(m["count"].sum())

    with_token = n(at_issue="ENTERED") + n(at_issue="WAITING")
    unexplained = flow.unexplained_give_ups()
    gave_up = n(outcome="gave_up")
    judged = n(outcome="entered") + gave_up
    return pd.DataFrame(
        [
            {
                "issued": issued,
                "journeys": int(counts["count"].sum()),
                "unaccounted": issued - with_token,
                "entered_at_issue": n(at_issue="ENTERED"),
                "admitted": n(outcome="entered", at_issue="WAITING"),
                "gave_up": gave_up,
                "failed": n(outcome="failed"),
                "gave_up_limit": n(outcome="gave_up", how="limit"),
                "unexplained_give_ups": sum(unexplained.values()),
                "unexplained_detail": ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(unexplained.items()))
                or "none",
                "censored_share": gave_up / judged if judged else np.nan,
            }
        ],
        columns=SUMMARY_COLUMNS,
    )


def kaplan_meier(times: list[float], observed: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(event times, survival just after each): the share still not ENTERED, censored give-ups handled."""
    order = np.argsort(np.asarray(times, dtype=float), kind="stable")
    t = np.asarray(times, dtype=float)[order]
    e = np.asarray(observed, dtype=bool)[order]
    at_risk, surv, xs, ys = len(t), 1.0, [], []
    i = 0
    while i < len(t):
        j = i
        while j < len(t) and t[j] == t[i]:
            j += 1
        d = int(e[i:j].sum())
        if d:
            surv *= 1.0 - d / at_risk
            xs.append(t[i])
            ys.append(surv)
        at_risk -= j - i
        i = j
    return np.asarray(xs), np.asarray(ys)


def wait_quantile(times: list[float], observed: list[bool], q: float) -> tuple[float | None, bool]:
    """(the q-quantile of the wait until ENTERED, reached?): off the Kaplan–Meier curve when it falls to
    1 − q; otherwise the longest time anyone was watched (a lower bound) and False."""
    if not times:
        return None, False
    xs, ys = kaplan_meier(times, observed)
    hit = np.nonzero(ys <= 1.0 - q + 1e-12)[0]
    if hit.size:
        return float(xs[hit[0]]), True
    return float(max(times)), False
