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


def test_stage_env_carries_the_profiles_target_to_k6():
    from flows.stages import stage_env
    from soundcheck.profile import parse_profile

    p = parse_profile(
        {
            "name": "x",
            "scenarios": ["race", "spike"],
            "target": {
                "concert_id": 7,
                "show_id": 707,
                "user_offset": 100_000,
                "seat_offset": 5000,
                "dialect": "original",
                "lock_wait_seconds": 1.5,
                "admission": {"mode": "shared_token", "wait_s": 30},
            },
        }
    )
    race, spike = stage_env("race", p), stage_env("spike", p)
    assert (race["CONCERT_ID"], race["SHOW_ID"], race["USER_OFFSET"]) == ("7", "707", "100001")
    assert race["TC1_SEAT"] == "5003" and race["TC2_SEAT_FIRST"] == "5101"  # TC-1 beside the spike, moved
    assert race["RACE_TARGET_FIRST"] == "9001"  # a queue target, not a seat
    assert spike["SEAT_IDS"] == "5001,5002" and spike["USER_OFFSET"] == "101601"
    assert race["DIALECT"] == "original" and race["DIALECT_FILE"].endswith("deployments/dialects/original.json")
    assert (race["ADMISSION"], race["ADMISSION_WAIT_S"], race["LOCK_WAIT_S"]) == ("shared_token", "30.0", "1.5")


def test_the_profiles_abort_levels_reach_k6_and_staging_can_drop_the_latency_one():
    """The stage env carries the profile's levels; real k6 reads them into the scripts' abortOnFail thresholds,
    and with abort.on_latency false no latency threshold is left (errors still abort)."""
    import json
    import subprocess
    from pathlib import Path

    from flows.stages import stage_env
    from soundcheck.paths import venv_bin
    from soundcheck.profile import parse_profile

    def thresholds(script: str, env: dict[str, str]) -> dict:
        k6 = [str(venv_bin("k6")), "inspect"] + [
            a for k in ("ABORT_P95_MS", "ABORT_ERROR_RATE") for a in ("-e", f"{k}={env[k]}")
        ]
        path = Path(__file__).parents[2] / "scenarios" / f"{script}.js"
        out = subprocess.run([*k6, str(path)], capture_output=True, text=True, check=True, timeout=60)
        return json.loads(out.stdout)["thresholds"]

    plan = stage_env("spike", parse_profile({"name": "x", "abort": {"p95_ms": 2500, "error_rate": 0.02}}))
    assert (plan["ABORT_P95_MS"], plan["ABORT_ERROR_RATE"]) == ("2500", "0.02")
    spike = thresholds("spike", plan)
    assert [t["threshold"] for t in spike["http_req_duration"]] == ["p(95)<2500"]
    assert spike["http_req_failed"][1] == {"threshold": "rate<0.02", "abortOnFail": True, "delayAbortEval": "30s"}

    staging = stage_env("soak", parse_profile({"name": "x", "abort": {"on_latency": False}}))
    assert staging["ABORT_P95_MS"] == "0"
    soak = thresholds("soak", staging)
    assert soak["http_req_duration"] == ["p(95)<1000"]  # the gate stays; no abort on it
    assert soak["http_req_failed"][1]["abortOnFail"] is True
