"""Journeys (tasks.journeys): the queue keeps moving (R-SPIKE-12), every journey is accounted for and the
wait until ENTERED is measured over everyone, give-ups censored (R-SPIKE-13)."""

from __future__ import annotations

import pandas as pd
import pytest

from soundcheck.models import Decision
from tasks.journeys import QueueFlow, journey_summary, kaplan_meier, wait_quantile
from tasks.kpis import _wait_kpis
from tests.tasks.test_decide import failed, judge
from tests.verdict_data import T0

LIMITS = {"queue_capacity": 2, "queue_ttl_seconds": 1800.0, "admission_period_s": 1.0}  # allowed: 1 + 3 + 2 = 6 s


def k6(*rows: tuple[float, str, float, dict[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"ts": T0 + t, "metric": m, "value": v, "tags": tags} for t, m, v, tags in rows],
        columns=["ts", "metric", "value", "tags"],
    )


def issue(t: float, status: str) -> tuple[float, str, float, dict[str, str]]:
    return (t, "sc_token_status", 1.0, {"status": status})


def admitted(t: float, wait: float) -> tuple[float, str, float, dict[str, str]]:
    return (t, "sc_wait_until_entered_s", wait, {})


def freed(t: float) -> tuple[float, str, float, dict[str, str]]:
    return (t, "sc_saga_time_s", 1.0, {"status": "COMPLETED"})


def gave_up(t: float, why: str = "limit") -> tuple[float, str, float, dict[str, str]]:
    return (t, "sc_poll_gave_up", 1.0, {"why": why})


BASE = [issue(0.0, "ENTERED"), issue(0.1, "ENTERED"), issue(0.2, "WAITING"), issue(0.3, "WAITING")]


def flow(*rows, end: float | None = None) -> QueueFlow:
    return QueueFlow.from_samples(k6(*BASE, *rows), LIMITS, None if end is None else T0 + end)


def test_a_freed_place_given_in_time_is_moving():
    m = flow(freed(5.0), admitted(8.0, 7.8)).moving().iloc[0]
    assert (m.freed, m.freed_while_waiting, m.given, m.stalled) == (1, 1, 1, 0)


def test_a_freed_place_nobody_gets_is_a_stall():
    m = flow(freed(5.0), gave_up(40.0), gave_up(40.1)).moving().iloc[0]
    assert m.stalled == 1 and m.first_stall_s == pytest.approx(5.0) and m.waiting_at_stall == 2


def test_an_admission_later_than_allowed_is_a_stall():
    assert flow(freed(5.0), admitted(12.0, 11.8)).moving().iloc[0].stalled == 1


def test_a_user_who_gave_up_may_have_taken_the_place_unseen():
    """The first in line stopped polling before the place was freed: the target gave it to them (no stall)."""
    m = flow(gave_up(3.0), freed(5.0)).moving().iloc[0]
    assert m.stalled == 0


def test_nobody_waiting_is_no_stall():
    m = flow(admitted(2.0, 1.8), admitted(2.1, 1.8), freed(5.0)).moving().iloc[0]
    assert m.stalled == 0 and m.freed_while_waiting == 0


def test_a_place_freed_during_issue_goes_to_a_new_arrival():
    rows = [issue(0.0, "ENTERED"), freed(0.5), issue(1.0, "ENTERED"), issue(1.1, "ENTERED"), issue(1.2, "WAITING")]
    m = QueueFlow.from_samples(k6(*rows), LIMITS, None).moving().iloc[0]
    assert m.given == 1 and m.stalled == 0


def test_an_entered_token_expiring_frees_its_place():
    short = {**LIMITS, "queue_ttl_seconds": 10.0}
    f = QueueFlow.from_samples(k6(*BASE, gave_up(30.0), gave_up(30.1)), short, T0 + 40)
    assert len(f.freed) == 2 and f.moving().iloc[0].stalled == 2


def test_give_ups_are_explained_by_the_limit_unless_the_queue_owed_a_place():
    f = flow(freed(5.0), gave_up(40.0), gave_up(40.1, "gone"))
    assert f.unexplained_give_ups() == {"gone": 1, "while_owed": 1}
    assert flow(gave_up(40.0), gave_up(40.1)).unexplained_give_ups() == {}


def test_every_journey_is_accounted_for():
    journeys = [
        (0.0, "sc_journey", 0.0, {"outcome": "entered", "how": "paid_COMPLETED", "at_issue": "ENTERED"}),
        (0.1, "sc_journey", 0.0, {"outcome": "entered", "how": "seat_taken", "at_issue": "ENTERED"}),
        (40.0, "sc_journey", 39.8, {"outcome": "gave_up", "how": "limit", "at_issue": "WAITING"}),
    ]
    data = k6(*BASE, *journeys, gave_up(40.0))
    s = journey_summary(data, QueueFlow.from_samples(data, LIMITS, None)).iloc[0]
    assert (s.issued, s.journeys, s.unaccounted, s.entered_at_issue, s.gave_up) == (4, 3, 1, 2, 1)
    assert s.censored_share == pytest.approx(1 / 3)


def test_kaplan_meier_counts_give_ups_as_censored_not_as_waits():
    # 4 users: entered at 1 and 2 s; two gave up at 10 s (censored): S falls to 0.5 and stays
    xs, ys = kaplan_meier([1.0, 2.0, 10.0, 10.0], [True, True, False, False])
    assert list(xs) == [1.0, 2.0] and list(ys) == pytest.approx([0.75, 0.5])
    assert wait_quantile([1.0, 2.0, 10.0, 10.0], [True, True, False, False], 0.95) == (10.0, False)
    assert wait_quantile([1.0, 2.0, 3.0, 10.0], [True, True, True, False], 0.5) == (2.0, True)
    # survivors only would say p95 = 2 s; over everyone the p95 is not reached within the 10 s watched


def test_a_stall_blocks_on_r_spike_12_and_flags_the_give_ups(engine, validator):
    """admission_stall as the spike sees it: the payer's place is never given; 150 users wait until the limit."""
    v = judge(engine, validator, ("spike",), spike={"samples": [freed(3.0)]})
    assert v.verdict == Decision.BLOCK, [t.why for t in v.trace]
    assert {"R-SPIKE-12", "R-SPIKE-13"} <= failed(v)
    moving = next(c for c in v.checks if c.id == "R-SPIKE-12")
    assert moving.observed.startswith("1 of 1 places freed while users waited not given within 6 s")
    why = next(c for c in v.checks if c.id == "R-SPIKE-13" and not c.passed)
    assert why.observed.startswith("1 of 150 give-ups unexplained (1 while owed)")  # the one whose turn it was


def test_the_healthy_queue_passes(engine, validator):
    v = judge(engine, validator, ("spike",), spike={"tokens": (51, 150, 0), "freed": 1})
    assert v.verdict == Decision.APPROVE, [t.why for t in v.trace]


def test_the_wait_kpi_is_over_everyone():
    """150 gave up at 20 s, 1 admitted at 4 s, 50 ENTERED at issue: p95 not reached (a lower bound of 20 s),
    not the 4 s the survivors alone would give."""
    samples = {
        "sc_journey": [(T0, 0.0, {"outcome": "entered", "at_issue": "ENTERED"})] * 50
        + [(T0, 4.0, {"outcome": "entered", "at_issue": "WAITING"})]
        + [(T0, 20.0, {"outcome": "gave_up", "at_issue": "WAITING"})] * 150,
        "sc_wait_until_entered_s": [(T0, 0.0, {})] * 50 + [(T0, 4.0, {})],
    }
    k = {x.name: x.value for x in _wait_kpis(samples, "spike")}
    assert k == {
        "wait_until_entered_s": 20.0,
        "wait_censored_share": pytest.approx(150 / 201),
        "wait_until_entered_max_s": 4.0,
    }


def test_journeys_missing_are_not_measured(engine, validator):
    v = judge(engine, validator, ("spike",), spike={"journeys": False})
    assert v.verdict == Decision.INCONCLUSIVE
    assert any(t.subject == "check R-SPIKE-13" and t.branch == Decision.INCONCLUSIVE for t in v.trace)


def test_a_target_that_never_admits_the_stage_users_is_a_finding(engine, validator):
    """The saga's set-up waited for admission in vain: the stage is unmeasured (INCONCLUSIVE item) and the
    target failed R-SPIKE-12 (BLOCK), named with what the set-up saw."""
    why = (
        'k6 exited with code 107: level=error msg="Error: the target admitted 0 of 1 users within 60 s '
        '(ADMISSION=wait); it should admit them all"'
    )
    v = judge(engine, validator, ("saga",), saga={"status": "K6_CRASHED", "reason": why})
    assert v.verdict == Decision.BLOCK, [t.why for t in v.trace]
    finding = next(c for c in v.checks if c.id == "R-SPIKE-12")
    assert finding.observed == "the target admitted 0 of 1 users within 60 s" and not finding.passed
    assert "fix_code_and_retest" in [r.code for r in v.remediations]
