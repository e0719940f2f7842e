"""k6 execution segments: the flags that split a test into equal parts, and k6 keeping users disjoint across them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from soundcheck.paths import venv_bin
from soundcheck.segments import Segment, segments

K6 = venv_bin("k6")
needs_k6 = pytest.mark.skipif(K6 is None, reason="k6 binary not installed")

K6 = venv_bin("k6")
needs_k6 = pytest.mark.skipif(K6 is None, reason="k6 binary not installed")


def test_segment_flags_split_the_test_into_equal_parts() -> None:
    assert Segment(0, 1).k6_args() == []
    assert Segment(1, 3).k6_args() == [
        "--execution-segment",
        "1/3:2/3",
        "--execution-segment-sequence",
        "0,1/3,2/3,1",
    ]
    assert [s.label for s in segments(2)] == ["1/2", "2/2"]
    with pytest.raises(ValueError, match="segment 2 of 2 does not exist"):
        Segment(2, 2)


IDS = """
import exec from 'k6/execution';
export const options = { scenarios: {
  r: { executor: 'ramping-vus', startVUs: 0, stages: [{ duration: '1s', target: 101 }], gracefulRampDown: '0s' },
  p: { executor: 'per-vu-iterations', vus: 100, iterations: 1, exec: 'once' },
}};
export default function () { console.log(`R vu=${exec.vu.idInTest}`); }
export function once() { console.log(`P it=${exec.scenario.iterationInTest}`); }
"""


@needs_k6
def test_k6_keeps_users_disjoint_across_segments(tmp_path: Path) -> None:
    """What the scripts rely on to give every user to one generator: k6 stripes VU ids and a scenario's
    iteration numbers across the segments of one sequence (no request is sent)."""
    script = tmp_path / "ids.js"
    script.write_text(IDS)
    vus: list[set[int]] = []
    its: list[list[int]] = []
    for seg in segments(3):
        out = subprocess.run(
            [K6, "run", "--quiet", "--no-summary", "--no-usage-report", *seg.k6_args(), str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        text = out.stdout + out.stderr
        vus.append({int(v) for v in re.findall(r"R vu=(\d+)", text)})
        its.append([int(i) for i in re.findall(r"P it=(\d+)", text)])
    assert all(a.isdisjoint(b) for i, a in enumerate(vus) for b in vus[i + 1 :])
    assert sorted(i for part in its for i in part) == list(range(100))  # each of 100 users exactly once
    assert [len(p) for p in its] == [34, 33, 33]
