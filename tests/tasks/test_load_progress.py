"""The live progress line of a stage: what it calls its users, and a bar on the stage's planned length."""

from __future__ import annotations


def test_progress_line_names_busy_vus_of_an_arrival_rate_stage_and_shows_its_length():
    from tasks.load import _Progress

    soak = _Progress("soak", use_rich=False, planned_s=54)
    assert soak.vu_label == "VUs busy" and _Progress("spike", use_rich=False).vu_label == "users"
    assert soak.elapsed(27) == "27 of ≤ 54 s ▕█████▒▒▒▒▒▏ 50%"
    assert _Progress("race", use_rich=False).elapsed(12.4) == "12 s"
