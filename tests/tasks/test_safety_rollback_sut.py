"""The rollback against the real reference service: this run's data goes, everything older stays."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import select

from soundcheck import store
from soundcheck.allowlist import AllowlistError
from soundcheck.profile import parse_profile
from tasks.safety import delete_test_data_admin, rollback, rollback_steps_for
from tests.safety_helpers import Sut

TOKEN = "safety-admin-token"


@pytest.fixture
def sut(tmp_path):
    s = Sut(tmp_path)
    yield s
    s.stop()


def _balance(url, user):
    r = httpx.get(f"{url}/api/v1/users/me/points", headers={"Authorization": f"Bearer test-user-{user}"}, timeout=5)
    r.raise_for_status()
    return r.json()["balance"]


def _charge(url, user, amount):
    r = httpx.post(
        f"{url}/api/v1/users/me/points/charges",
        json={"amount": amount},
        headers={"Authorization": f"Bearer test-user-{user}"},
        timeout=5,
    )
    r.raise_for_status()


def test_admin_cleanup_deletes_only_this_runs_rows(sut, tmp_path):
    _charge(sut.url, 7, 500)  # before the run: must survive
    time.sleep(0.05)
    start = datetime.now(UTC)
    time.sleep(0.05)
    before_run = _balance(sut.url, 7)
    _charge(sut.url, 7, 1000)
    _charge(sut.url, 8, 2000)
    assert _balance(sut.url, 7) == before_run + 1000

    engine = store.open_store(f"sqlite:///{tmp_path / 'r.db'}")
    store.start_run(engine, "rb", "t", scale=1, time_scale=1, scenarios=[], target=sut.url)
    prof = parse_profile({"name": "t", "target": {"base_url": sut.url, "admin_token_env": "SAFETY_TEST_ADMIN"}})

    class Handle:  # what a local stack offers
        base_url = sut.url
        admin_token = TOKEN

    res = rollback(engine, "rb", **rollback_steps_for(prof, Handle(), start.isoformat()))
    assert [(r.step, r.outcome) for r in res] == [
        ("deregister_targets", "skipped"),
        ("delete_test_data", "ok"),
        ("restart_service", "skipped"),
    ]
    assert "'point_history': 2" in res[1].detail and "'wallets_restored': 2" in res[1].detail
    assert _balance(sut.url, 7) == before_run  # the earlier charge is kept, this run's undone
    assert httpx.get(f"{sut.url}/api/v1/concerts/", timeout=5).status_code == 200  # seed data untouched
    with engine.connect() as c:
        ev = c.execute(select(store.events.c.detail).where(store.events.c.outcome == "ok")).scalar()
    assert ev.startswith("delete_test_data: rows created since")
    assert TOKEN not in ev
    engine.dispose()


def test_admin_cleanup_wrong_token_is_a_failed_step(sut):
    with pytest.raises(RuntimeError, match="answered 40"):
        delete_test_data_admin(sut.url, datetime.now(UTC), admin_token="wrong")


def test_admin_cleanup_respects_the_allowlist(sut):
    with pytest.raises(AllowlistError):
        delete_test_data_admin(sut.url, datetime.now(UTC), admin_token=TOKEN, allowlist=["10.0.0.0/8"])
