"""k6 execution segments: one test split exactly across N load generators (issue 14).

k6 cuts a test into parts with `--execution-segment a:b` over a shared `--execution-segment-sequence`;
the parts add up to exactly the single-process test (VUs, iterations, arrival rates). k6 also keeps the
identities disjoint: VU ids and each scenario's iteration numbers are striped across the segments of one
sequence, so a script that maps `exec.vu.idInTest` or `exec.scenario.iterationInTest` to a user gives
each user to one segment. Measured on k6 1.1 (`tests/soundcheck/test_segments.py`): 3 segments of 101 ramping VUs
use VU ids 1,4,7…/2,5,8…/3,6,9…; 100 VUs × 1 iteration give iterations 0…99 exactly once.

Each segment runs paused, without its own setup, teardown or thresholds: the campaign runs setup once
(k6's REST API, segment 0), hands its data to the others, resumes all at once, runs teardown once, and
judges the merged figures (the thresholds of one part would judge a part).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Segment:
    """Part `index` (0-based) of `count` equal parts."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"segment {self.index} of {self.count} does not exist")

    @property
    def start(self) -> Fraction:
        return Fraction(self.index, self.count)

    @property
    def end(self) -> Fraction:
        return Fraction(self.index + 1, self.count)

    @property
    def label(self) -> str:
        """How people name it: "2/3" is the second of three."""
        return f"{self.index + 1}/{self.count}"

    def k6_args(self) -> list[str]:
        """k6 run's flags for this part (nothing for a single part: the whole test)."""
        if self.count == 1:
            return []
        sequence = ",".join(str(Fraction(i, self.count)) for i in range(self.count + 1))
        return ["--execution-segment", f"{self.start}:{self.end}", "--execution-segment-sequence", sequence]


def segments(count: int) -> list[Segment]:
    return [Segment(i, count) for i in range(count)]


#: k6 run's flags for every segment of a split test: paused until the campaign resumes them all, no setup,
#: teardown or thresholds of their own (the campaign runs those once, on the whole).
SEGMENT_FLAGS = ("--paused", "--no-setup", "--no-teardown", "--no-thresholds")

#: k6's execution status codes (`lib/execution.go`) as its REST API reports them.
K6_PAUSED_BEFORE_RUN = 4
K6_ENDED = 9
