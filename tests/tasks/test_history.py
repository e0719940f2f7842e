"""The nightly history (R-REG-1): change against the previous run, change points, and their effect on the verdict."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from soundcheck import store
from soundcheck.models import Decision
from soundcheck.profile import History, parse_profile
from tasks.decide import judge
from tasks.history import fmt_change, gated_series, higher_is_better, list_runs, previous_runs, rel_change
from tasks.notify import build_message
from tests.verdict_data import build_run, new_store

DATA = Path(__file__).parents[1] / "data" / "nightly_history.json"
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------- change vs previous


@pytest.mark.parametrize(
    ("value", "previous", "text"),
    [(1.158, 1.0, "↑ +16 %"), (0.968, 1.0, "↓ −3.2 %"), (1.0, 1.0, "→ +0.0 %"), (812, 701, "↑ +16 %")],
)
def test_change_is_a_fraction_shown_in_percent(value, previous, text):
    assert fmt_change(rel_change(value, previous)) == text


def test_no_change_without_a_previous_value_or_from_zero():
    assert rel_change(5, None) is None and rel_change(5, 0) is None and fmt_change(None) == ""


def test_direction_comes_from_the_catalogue():
    assert higher_is_better("throughput_rps") and higher_is_better("saga_completion")
    assert not higher_is_better("p95_ms.API-5") and not higher_is_better("unknown_kpi")


# ------------------------------------------------------------------ the previous comparable run
def test_previous_comparable_run(tmp_path):
    e = new_store(tmp_path)
    t = datetime(2026, 11, 20, tzinfo=UTC)
    build_run(e, "old", ("soak",), started=t)
    build_run(e, "other-scale", ("soak",), scale=0.5, started=t + timedelta(hours=1))
    build_run(e, "other-profile", ("soak",), profile="staging", started=t + timedelta(hours=2))
    build_run(e, "crashed", ("soak",), started=t + timedelta(hours=3), soak={"status": "K6_CRASHED"})
    build_run(e, "new", ("soak", "race"), started=t + timedelta(hours=4))
    assert previous_runs(e, "new") == {"soak": "old"}
    assert [r["run_id"] for r in list_runs(e)][:2] == ["new", "crashed"]
    e.dispose()


# ----------------------------------------------------------------------------- verdict and store


def _night(e, i: int, p95: float, *, profile: str = "test") -> str:
    rid = f"n{i:02d}"
    build_run(
        e,
        rid,
        ("soak",),
        started=T0 + timedelta(days=i),
        build=f"b{i:02d}",
        profile=profile,
        soak={"kpis": {"p95_ms": p95}},
    )
    return rid


SERIES = [100, 103, 98, 101, 99, 102, 100, 97, 101, 100]


def test_a_lasting_regression_holds_approval_once_and_names_its_build(tmp_path):
    e = new_store(tmp_path)
    prof = parse_profile({"name": "test"})
    for i, v in enumerate([*SERIES, 131]):
        _night(e, i, v)
        verdict, _ = judge(e, f"n{i:02d}", prof)
        assert verdict.verdict == Decision.APPROVE, i  # nine steady nights, then one bad night: no regression
    _night(e, 11, 129)
    verdict, _ = judge(e, "n11", prof)
    p95 = next(k for k in verdict.kpis if k.name == "p95_ms" and k.scenario == "soak")
    assert p95.regression and p95.shift.first_run == "n10" and p95.shift.build == "b10"
    assert p95.shift.rel_change == pytest.approx(0.30, abs=0.02) and p95.shift.runs == 2
    assert p95.band == "target"  # inside its band: only the history sees it
    assert verdict.verdict == Decision.APPROVE_WITH_TUNING
    assert [r.code for r in verdict.remediations] == ["investigate_regression"]
    assert "since run n10 (build b10)" in verdict.remediations[0].reason
    assert any(t.branch == "APPROVE_WITH_TUNING" and "history.regression: hold" in t.why for t in verdict.trace)
    text = json.dumps(build_message(verdict))
    assert "p95_ms soak +30 % since run n10 (build b10)" in text
    with e.connect() as c:
        rows = c.execute(select(store.shifts.c.first_run, store.shifts.c.run_id)).fetchall()
    assert [tuple(r) for r in rows] == [("n10", "n11")]
    # the next night knows it: reported, not held again
    _night(e, 12, 130)
    verdict, _ = judge(e, "n12", prof)
    p95 = next(k for k in verdict.kpis if k.name == "p95_ms" and k.scenario == "soak")
    assert p95.shift is not None and not p95.shift.new and not p95.regression
    assert verdict.verdict == Decision.APPROVE
    # re-judging the night that found it gives the same answer (its own rows replaced, not doubled)
    verdict, _ = judge(e, "n11", prof)
    assert verdict.verdict == Decision.APPROVE_WITH_TUNING
    e.dispose()


NOISY = [100, 108, 95, 103, 97, 106, 92, 101, 99, 104, 96, 102, 107, 94]  # about 5 % night to night


def test_a_modest_regression_is_held_on_its_third_run_and_otavas_confirmation_is_not_a_second_alert(tmp_path):
    e = new_store(tmp_path)
    prof = parse_profile({"name": "test"})
    for i, v in enumerate([*NOISY, 112, 115]):
        _night(e, i, v)
    assert judge(e, "n15", prof)[0].verdict == Decision.APPROVE  # two runs at +13 %: not yet a level
    _night(e, 16, 113)
    verdict, _ = judge(e, "n16", prof)
    p95 = next(k for k in verdict.kpis if k.name == "p95_ms" and k.scenario == "soak")
    assert p95.regression and p95.shift.first_run == "n14" and p95.shift.runs == 3
    assert p95.shift.rel_change == pytest.approx(0.13, abs=0.01)
    assert verdict.verdict == Decision.APPROVE_WITH_TUNING
    _night(e, 17, 114)  # Otava now places the same change: known, not a new alert
    verdict, _ = judge(e, "n17", prof)
    p95 = next(k for k in verdict.kpis if k.name == "p95_ms" and k.scenario == "soak")
    assert p95.shift.first_run == "n14" and not p95.shift.new and verdict.verdict == Decision.APPROVE
    quiet = parse_profile({"name": "test", "history": {"recent_pvalue": None}})
    assert judge(e, "n16", quiet)[0].verdict == Decision.APPROVE  # Otava alone waits a night longer
    e.dispose()


def test_a_profile_can_make_a_regression_block(tmp_path):
    e = new_store(tmp_path)
    for i, v in enumerate([*SERIES, 131, 129]):
        _night(e, i, v)
    verdict, _ = judge(e, "n11", parse_profile({"name": "test", "history": {"regression": "block"}}))
    assert verdict.verdict == Decision.BLOCK and any("history.regression: block" in t.why for t in verdict.trace)
    e.dispose()


def test_a_change_for_the_better_is_reported_not_held(tmp_path):
    e = new_store(tmp_path)
    for i, v in enumerate([*SERIES, 70, 71]):
        _night(e, i, v)
    verdict, _ = judge(e, "n11", parse_profile({"name": "test"}))
    p95 = next(k for k in verdict.kpis if k.name == "p95_ms" and k.scenario == "soak")
    assert p95.shift.new and not p95.shift.worse and verdict.verdict == Decision.APPROVE
    assert any("for the better" in t.why for t in verdict.trace)
    e.dispose()


def test_the_trend_chart_marks_changes_with_the_profiles_thresholds(tmp_path):
    """The chart asks the same question the verdict did: a profile that ignores changes under 50 % sees
    no mark where the default 5 % sees one."""
    from tasks.report import trend_charts

    e = new_store(tmp_path)
    for i, v in enumerate([*SERIES, 131, 129]):
        _night(e, i, v)
    verdict, _ = judge(e, "n11", parse_profile({"name": "test"}))
    marked = trend_charts(verdict, e, History())
    unmarked = trend_charts(verdict, e, History(min_change=0.5))
    assert set(marked) == set(unmarked) == {"soak"}
    assert marked["soak"][:8] == b"\x89PNG\r\n\x1a\n" and marked["soak"] != unmarked["soak"]
    e.dispose()


def test_slack_and_report_show_the_change_against_a_stored_previous_run(tmp_path):
    from tasks.report import render_html

    e = new_store(tmp_path)
    prof = parse_profile({"name": "test"})
    _night(e, 0, 701.0)
    judge(e, "n00", prof)
    _night(e, 1, 812.0)
    verdict, run = judge(e, "n01", prof)
    text = json.dumps(build_message(verdict), ensure_ascii=False)
    assert "↑ +16 % vs 701 ms" in text  # was "↑ +0.2 %": a fraction printed as a percentage
    assert "↑ +16 %" in render_html(verdict, run)
    body = verdict.to_json_dict()
    p95 = next(k for k in body["kpis"] if k["name"] == "p95_ms" and k["scenario"] == "soak")
    assert p95["rel_change"] == pytest.approx(812 / 701 - 1)
    e.dispose()


def test_an_older_store_gains_the_new_columns(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.create_engine(url)
    with old.begin() as c:
        c.execute(
            sa.text(
                "CREATE TABLE runs (run_id VARCHAR(64) PRIMARY KEY, profile VARCHAR(128) NOT NULL, "
                "started_at DATETIME NOT NULL, finished_at DATETIME, status VARCHAR(16) NOT NULL, "
                "verdict VARCHAR(32), scale FLOAT NOT NULL, time_scale FLOAT NOT NULL, scenarios JSON, "
                "target VARCHAR(512), reason TEXT)"
            )
        )
    old.dispose()
    e = store.open_store(url)
    store.start_run(e, "r", "p", scale=1, time_scale=1, scenarios=[], target=None, build="abc", settings={"x": 1})
    with e.connect() as c:
        assert c.execute(select(store.runs.c.build, store.runs.c.settings)).one() == ("abc", {"x": 1})
    e.dispose()


# ------------------------------------------------------------------ a stored history of real runs


@pytest.mark.skipif(not DATA.exists(), reason="tests/data/nightly_history.json: run bench/nightly_series.py")
def test_real_nightly_runs_show_the_slowed_concert_list_and_nothing_on_the_unchanged_series(tmp_path):
    """bench/nightly_series.py stored real small soak runs: `nightly-step` with the concert list slowed from
    its night 6, `nightly-stable` unchanged. Replayed night by night through the judge's own history."""
    from bench.nightly_series import load_history, replay

    data = json.loads(DATA.read_text())
    e = new_store(tmp_path)
    load_history(e, data)
    found = replay(e)
    assert [f for f in found if f[0] == "nightly-stable"] == []
    step = [f for f in found if f[0] == "nightly-step"]
    night6 = next(r["run_id"] for r in data["runs"] if r["build"] == "nightly-step-06")
    assert {s.first_run for _, _, _, s in step} == {night6}  # found where the slowdown started …
    assert {f[1] for f in step} <= {"nightly-step-07", "nightly-step-08"}  # … within 3 runs,
    assert len({f[1] for f in step}) == 1 and all(s.worse for *_, s in step)  # … reported once, for the worse
    assert gated_series(e, "nightly-step", kpi="p95_ms.API-5")
    e.dispose()


def test_history_trends_print_the_series_sparkline_and_its_lasting_change(tmp_path, capsys):
    import yaml

    from soundcheck.cli import print_history, sparkline

    e = new_store(tmp_path)
    for i, v in enumerate([*SERIES, 131, 129, 130]):
        _night(e, i, v)
    e.dispose()
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump({"name": "test", "store_url": f"sqlite:///{tmp_path}/results.db"}))
    assert print_history(prof, kpi="p95_ms", scenario="soak") == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert "▁" in out and "█" in out and "from b10" in out
    assert sparkline([1, 2, 3, 4]) == "▁▃▆█" and sparkline([5, 5]) == "▄▄"
    assert print_history(prof, trends=True) == 0  # every gated series, one row each
    rows = [line for line in capsys.readouterr().out.splitlines() if line.lstrip("│ ").startswith("soak")]
    assert len(rows) > 1, rows
    assert print_history(prof) == 0 and "b12" in capsys.readouterr().out  # the run list shows builds
