"""Test data through the plan's own means (tasks/fixtures.py): API-6 charges on a real service that has no
admin API, and bound SQL statements on SQLite, MariaDB and PostgreSQL when they are reachable."""

from __future__ import annotations

import contextlib

import httpx
import pytest
from sqlalchemy import create_engine, text

from soundcheck.profile import parse_profile
from tasks.fixtures import Balance, FixtureError, api_balances, needs, resolved_mode, sql_balances, statements
from tests.sut_harness import auth, drop_mariadb, mariadb_url, postgres_url, run_sut


def test_what_each_scenario_needs():
    assert needs("race", 1.0) == [] and needs("points", 0.5) == []
    assert needs("race", 1.0, "shared_token") == [Balance(1, 1, 1_000_000)]
    assert needs("spike", 0.02) == [Balance(1601, 200, 1_000_000)]
    comp, rest = needs("saga", 0.02)
    assert comp == Balance(301, 1, 10_000, exact=True) and rest == Balance(302, 2, 1_000_000)
    shared = needs("saga", 1.0, "shared_token")[1]
    assert shared.count == 1 and shared.balance >= 100 * 150_000  # one user pays for every concurrent saga


def test_auto_is_admin_only_for_the_local_reference_service():
    assert resolved_mode(parse_profile({"name": "x"})) == "admin"
    foreign = {"name": "x", "environment": {"local": {"settings": {"foreign": True}}}}
    assert resolved_mode(parse_profile(foreign)) == "api"
    ext = {"name": "x", "target": {"base_url": "http://127.0.0.1:9"}, "environment": {"kind": "external"}}
    assert resolved_mode(parse_profile(ext)) == "api"


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    with run_sut(tmp_path_factory.mktemp("fixtures"), foreign=1, seed_balance=0, seed_users=400) as s:
        yield s


def test_api_fixtures_on_a_service_without_admin(foreign):
    profile = parse_profile(
        {
            "name": "x",
            "target": {"dialect": "original", "base_url": foreign.base},
            "environment": {"kind": "external"},
            "fixtures": {"mode": "api"},
        }
    )
    said = api_balances(profile, foreign.base, Balance(301, 1, 10_000, exact=True))
    assert "1 charged" in said
    rich = api_balances(profile, foreign.base, Balance(302, 20, 1_000_000))
    assert "20 charged, 20,000,000 points" in rich
    again = api_balances(profile, foreign.base, Balance(302, 20, 1_000_000))  # topped up already: no charge
    assert "0 charged" in again

    def balance(u):
        return httpx.get(f"{foreign.base}/api/v1/users/me/points/", headers=auth(u)).json()["balance"]

    assert balance(301) == 10_000 and balance(311) == 1_000_000
    with pytest.raises(FixtureError, match="user 302 already holds 1,000,000 points and must hold exactly 10,000"):
        api_balances(profile, foreign.base, Balance(302, 1, 10_000, exact=True))


def _mariadb() -> str | None:
    url = mariadb_url()
    return url.replace("+aiomysql", "+pymysql") if url else None


def _postgres() -> str | None:
    return postgres_url("fixtures")


@pytest.mark.parametrize("backend", ["sqlite", "mariadb", "postgresql"])
def test_sql_fixtures_bind_every_value(backend, tmp_path):
    url = {"sqlite": lambda: f"sqlite:///{tmp_path / 'f.db'}", "mariadb": _mariadb, "postgresql": _postgres}[backend]()
    if url is None:
        pytest.skip(f"no {backend} reachable on loopback")
    engine = create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(
                text(
                    "CREATE TABLE points (user_id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, "
                    "created_at TIMESTAMP NULL, updated_at TIMESTAMP NULL)"
                )
            )
            c.execute(text("INSERT INTO points (user_id, balance) VALUES (301, 999999)"))
        said = sql_balances(url, "original", Balance(301, 3, 10_000, exact=True))
        assert said.endswith("(sql original: 1 set, 2 added)")
        with engine.connect() as c:
            assert c.execute(text("SELECT user_id, balance FROM points ORDER BY user_id")).all() == [
                (301, 10_000),
                (302, 10_000),
                (303, 10_000),
            ]
    finally:
        engine.dispose()
        if backend == "mariadb":
            drop_mariadb(url)
        if backend == "postgresql":
            with contextlib.suppress(Exception):
                import psycopg

                with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as c:
                    c.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]}")


def test_sql_fixture_files_are_checked(tmp_path):
    with pytest.raises(FixtureError, match="no SQL fixtures 'nope'"):
        statements("nope")
    half = tmp_path / "half.sql"
    half.write_text("-- name: set_balance\nUPDATE points SET balance = :balance WHERE user_id = :user_id;\n")
    with pytest.raises(FixtureError, match="lack the statement.s. add_balance"):
        statements(str(half))
    assert set(statements("plan")) == {"set_balance", "add_balance"}
