"""Stage planning rules the campaign applies before each k6 run."""

from flows.stages import scenario_overrides
from tasks.load import SEAT_DEFAULTS


def test_race_tc1_leaves_the_spike_its_seats_only_when_both_run():
    moved = scenario_overrides("race", ["race", "saga", "spike"])["TC1_SEAT"]
    assert moved not in SEAT_DEFAULTS["spike"]["SEAT_IDS"].split(",")
    assert int(moved) < int(SEAT_DEFAULTS["race"]["TC2_SEAT_FIRST"])  # below every other scenario's seats
    assert scenario_overrides("race", ["race", "saga"]) == {}  # alone, TC-1 keeps the plan's seat 1
    assert scenario_overrides("spike", ["race", "spike"]) == {}  # the spike keeps the plan's seats [1, 2]


def test_saga_watch_limit_follows_the_time_scale_above_the_action_band():
    from soundcheck.bands import DEFAULT_BANDS

    assert scenario_overrides("saga", ["saga"], 1.0) == {"WATCH_LIMIT_S": "120"}  # the plan's
    floor = float(scenario_overrides("saga", ["saga"], 0.03)["WATCH_LIMIT_S"])
    assert floor == 30 and floor > DEFAULT_BANDS["saga_time_s"].allowed  # a stuck saga still lands in action
