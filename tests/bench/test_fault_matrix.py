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


#: Foreign mode in the suite: the defects of a real third-party service (the whole matrix in foreign mode is
#: `bench/fault_matrix.py --mode foreign`, its table in docs/fault-matrix.md; twice the suite's matrix time).
FOREIGN_CASES = ("taken_seat_400", "lock_timeout_500_bare", "admission_stall", "no_idempotency")
RUNS = [(c, "default") for c in CASES] + [(c, "foreign") for c in CASES if c.name in FOREIGN_CASES]


@pytest.mark.parametrize(("case", "mode"), RUNS, ids=[f"{c.name}-{m}" for c, m in RUNS])
def test_fault_is_caught(prefect_server, case, mode, tmp_path):
    """Every case on the reference service as shipped; the real-service defects also in foreign mode, through
    nothing but deployments/foreign.yaml (its dialect, SQL fixtures, shared-token admission, schema and
    metric maps)."""
    o = run_case(case, tmp_path, mode=mode)
    OUTCOMES.append(o)
    assert o.error is None, o.error
    assert o.verdict in case.verdicts, (o.verdict, o.failed, o.remediations)
    assert set(case.must_fail) <= set(o.failed), o.failed
    assert set(case.remediations) <= set(o.remediations), o.remediations
    assert o.exit_code == {"APPROVE": 0, "APPROVE_WITH_TUNING": 10, "BLOCK": 20, "INCONCLUSIVE": 30}[o.verdict]
    assert o.run_status in case.run_status, o.run_status  # lock_timeout_500: stopped on harm, still judged


@pytest.mark.parametrize("run", [1, 2, 3])
def test_healthy_service_approves_three_times(prefect_server, run, tmp_path):
    """No false alarm: three whole campaigns of the healthy service, each APPROVE (three tests, so a parallel
    suite runs them side by side: each under the others' load as well)."""
    o = run_case(HEALTHY, tmp_path, run=run)
    OUTCOMES.append(o)
    assert (o.verdict, o.exit_code) == ("APPROVE", 0), (run, o.verdict, o.failed, o.remediations, o.error)


def test_foreign_mode_healthy_service_approves(prefect_server, tmp_path):
    """The healthy service in foreign mode approves (three in a row: bench/fault_matrix.py --mode foreign)."""
    o = run_case(HEALTHY, tmp_path, mode="foreign")
    OUTCOMES.append(o)
    assert (o.verdict, o.exit_code) == ("APPROVE", 0), (o.verdict, o.failed, o.remediations, o.error)
