"""The reference service's settings: flags over environment over defaults, and what is refused."""

from __future__ import annotations

import pytest

from infra.sut.settings import Settings, parse_settings


def test_settings_precedence_and_validation():
    env = {"SUT_DB_POOL_SIZE": "7", "SUT_FAULTS": "leak", "SUT_CONCERT_CACHE": "true"}
    s = parse_settings(["--db-pool-size", "10", "--outbox-interval-seconds", "2"], environ=env)
    assert (s.db_pool_size, s.outbox_interval_seconds, s.concert_cache, s.fault("leak")) == (10, 2.0, True, True)
    assert parse_settings([], environ={}).db_pool_size == 5
    assert Settings.from_env(s.to_env()) == s
    with pytest.raises(ValueError, match="unknown fault"):
        Settings.from_env({"SUT_FAULTS": "no_such_fault"})
    with pytest.raises(SystemExit):
        parse_settings(["--position-strategy", "guess"], environ={})
