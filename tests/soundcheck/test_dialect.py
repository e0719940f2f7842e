"""API dialects (soundcheck.dialect): the plan's file agrees with the plan catalogue, the original service's
spells what its controllers do, and a bad dialect is one clear error at profile load."""

from __future__ import annotations

import json

import pytest

from soundcheck.dialect import DialectError, load_dialect
from soundcheck.plan import EXPECTED_ANSWERS
from soundcheck.profile import ProfileError, parse_profile


def test_the_plan_dialect_is_the_plan_catalogue():
    plan = load_dialect("plan")
    for endpoint, answers in EXPECTED_ANSWERS.items():
        assert plan.expected(endpoint) == answers, endpoint


def test_the_original_dialect():
    d = load_dialect("original")
    assert d.expected("API-3") == {201, 409} and d.success("API-3") == {201}
    assert d.steps["poll"].token_in == "body" and d.steps["poll"].body == {
        "token": "{token}",
        "targetId": "{concertId}",
    }
    assert d.payment_status["SUCCEEDED"] == "COMPLETED"
    assert d.answer_expected("API-1", 201) and not d.answer_expected("API-1", 200)
    assert not d.answer_expected("API-3", 200)  # a 200 from a service that answers 201 is not its contract


def test_a_dialect_file_of_ones_own(tmp_path):
    mine = json.loads(load_dialect("plan").model_dump_json())
    mine["name"] = "mine"
    mine["steps"]["reserve"]["ok"] = [202]
    f = tmp_path / "mine.json"
    f.write_text(json.dumps(mine))
    assert load_dialect(str(f)).success("API-3") == {202}


def test_unknown_and_broken_dialects_are_one_sentence(tmp_path):
    with pytest.raises(DialectError, match="no API dialect 'klingon' .known: original, plan"):
        load_dialect("klingon")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "bad", "steps": {"token": {"method": "FETCH", "path": "/", "ok": [200]}}}')
    with pytest.raises(DialectError, match="cannot be used"):
        load_dialect(str(bad))
    with pytest.raises(ProfileError, match="key 'target.dialect' is invalid: no API dialect 'klingon'"):
        parse_profile({"name": "x", "target": {"dialect": "klingon"}})
