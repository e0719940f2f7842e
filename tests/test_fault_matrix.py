"""The fault matrix (issue 7, item 5): each fault of the reference service and each tuning case, run as a
small-scale campaign on the local stack, must give the right verdict, failing requirement ids and
remediation codes; the healthy service must APPROVE three runs in a row (no false alarm).

The table is `bench/fault_matrix.py` (which also prints it for docs/fault-matrix.md). Every case is a whole
campaign of the one scenario that shows it, at the smallest scale that still shows it, all under one
Prefect test server (its start costs 15–30 s); the module is marked slow.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.fault_matrix import CASES, HEALTHY, markdown, run_case
from soundcheck.paths import venv_bin

pytestmark = [pytest.mark.slow, pytest.mark.skipif(venv_bin("k6") is None, reason="k6 binary not installed")]


OUTCOMES: list = []


@pytest.fixture(scope="module")
def prefect_server(prefect_harness):
    """The session's Prefect test server (tests/conftest.py). With SOUNDCHECK_MATRIX_MARKDOWN=PATH the
    outcomes are also written there as bench/fault_matrix.py's table."""
    yield
    if os.environ.get("SOUNDCHECK_MATRIX_MARKDOWN") and OUTCOMES:
        Path(os.environ["SOUNDCHECK_MATRIX_MARKDOWN"]).write_text(markdown(OUTCOMES) + "\n")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_is_caught(prefect_server, case, tmp_path):
    o = run_case(case, tmp_path)
    OUTCOMES.append(o)
    assert o.error is None, o.error
    assert o.verdict in case.verdicts, (o.verdict, o.failed, o.remediations)
    assert set(case.must_fail) <= set(o.failed), o.failed
    assert set(case.remediations) <= set(o.remediations), o.remediations
    assert o.exit_code == {"APPROVE": 0, "APPROVE_WITH_TUNING": 10, "BLOCK": 20, "INCONCLUSIVE": 30}[o.verdict]
    assert o.run_status == case.run_status, o.run_status  # lock_timeout_500: stopped on harm, still judged


def test_healthy_service_approves_three_times_in_a_row(prefect_server, tmp_path):
    for i in range(3):
        o = run_case(HEALTHY, tmp_path, run=i + 1)
        OUTCOMES.append(o)
        assert (o.verdict, o.exit_code) == ("APPROVE", 0), (i + 1, o.verdict, o.failed, o.remediations, o.error)
