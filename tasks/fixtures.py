"""Test data before each stage, through the plan's own means: the users' point balances a scenario needs.

What each scenario needs (`needs`): the spike's users and the saga's concurrent users enough points to pay
150,000; the saga's compensation user exactly 10,000 (plan §3.3); with a shared token, the race's user enough
to buy the seat that frees its place (race, soak). Points need no balance.

How (`profile.fixtures.mode`):
- `api`: the public API on any target — read each user's balance (the dialect's `balance` step) and charge
  the difference with API-6. A user who must hold exactly N and already holds more cannot be lowered by an
  API: that is one clear error asking for fresh users. Bounded: one read and at most one charge per user,
  16 at a time, through the allowlist.
- `sql`: the named statements of `deployments/fixtures/<name>.sql` through a DSN with write rights, every
  value bound as a parameter (never formatted into the SQL): `set_balance`, and `add_balance` for users it
  updated no row of.
- `admin`: the reference service's /admin fast path (infra/reference_admin.py).
- `auto`: admin for the local reference service with its admin API, else api.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundcheck.dialect import load_dialect
from soundcheck.plan import PLAN, ROOT
from soundcheck.profile import Profile

FIXTURE_DIR = ROOT / "deployments" / "fixtures"
#: What a payment of the plan costs (seats [1, 2] at 75,000): the spike's and the saga's amount.
PAYMENT = 150_000
#: The saga's compensation user's balance (plan §3.3).
LOW_BALANCE = 10_000
RICH = 1_000_000


class FixtureError(RuntimeError):
    """Test data that could not be put in place (the stage would measure nothing meaningful)."""


@dataclass(frozen=True)
class Balance:
    """Users first … first+count−1 need `balance` points: exactly, or at least."""

    first: int
    count: int
    balance: int
    exact: bool = False


def needs(scenario: str, scale: float, admission: str = "private_targets", user_offset: int = 0) -> list[Balance]:
    """The balances `scenario` needs at `scale` (the k6 scripts' user counts), users moved by `user_offset`."""
    first, most = PLAN[scenario].users
    first += user_offset
    if scenario in ("race", "soak") and admission == "shared_token":  # its user buys a seat at the end
        return [Balance(first, 1, RICH)]
    if scenario == "spike":
        return [Balance(first, min(most, max(1, round(10_000 * scale))), RICH)]
    if scenario == "saga":
        n = max(1, round(100 * scale))
        if admission == "shared_token":  # one user pays for every concurrent saga
            return [Balance(first, 1, LOW_BALANCE, exact=True), Balance(first + 1, 1, n * PAYMENT + RICH)]
        return [Balance(first, 1, LOW_BALANCE, exact=True), Balance(first + 1, n, RICH)]
    return []


def resolved_mode(profile: Profile) -> str:
    mode = profile.fixtures.mode
    if mode != "auto":
        return mode
    local = profile.environment.kind == "local" and not profile.environment.local.settings.get("foreign")
    return "admin" if local else "api"


def apply_fixtures(
    profile: Profile, scenario: str, base_url: str, *, admin_token: str | None = None, write_dsn: str | None = None
) -> str:
    """Put `scenario`'s test data in place; a short account of what was done (or why nothing was needed)."""
    wanted = needs(scenario, profile.scale, profile.target.admission.mode, profile.target.user_offset)
    if not wanted:
        return f"{scenario}: no test data needed"
    mode = resolved_mode(profile)
    if mode == "none":
        return f"{scenario}: fixtures off (mode none); the users must already hold their balances"
    if mode == "admin":
        from infra.reference_admin import set_balances

        return "; ".join(
            set_balances(
                base_url, b.first, b.count, b.balance, admin_token=admin_token, allowlist=profile.target.allowlist
            )
            for b in wanted
        )
    if mode == "sql":
        dsn = os.environ.get(profile.fixtures.write_dsn_env) if profile.fixtures.write_dsn_env else write_dsn
        if not dsn:
            raise FixtureError(
                f"fixtures.mode sql needs a DSN with write rights: set the environment variable "
                f"{profile.fixtures.write_dsn_env or '(fixtures.write_dsn_env)'}"
            )
        return "; ".join(sql_balances(dsn, profile.fixtures.sql, b) for b in wanted)
    return "; ".join(api_balances(profile, base_url, b) for b in wanted)


# ----------------------------------------------------------------------------------------------- api


def api_balances(profile: Profile, base_url: str, want: Balance) -> str:
    from soundcheck.allowlist import guarded_client

    dialect = load_dialect(profile.target.dialect)
    users = range(want.first, want.first + want.count)

    def one(c: Any, user: int) -> int:
        auth = {"Authorization": f"Bearer test-user-{user}"}
        method, path, body = dialect.request("balance", userId=user)
        r = c.request(method, path, json=body, headers=auth)
        if r.status_code not in dialect.steps["balance"].ok:
            raise FixtureError(f"reading user {user}'s balance answered {r.status_code}: {r.text[:150]}")
        have = int(r.json().get("balance", 0))
        if want.exact and have > want.balance:
            raise FixtureError(
                f"user {user} already holds {have:,} points and must hold exactly {want.balance:,}; "
                "an API cannot lower it: give the scenario fresh users"
            )
        short = want.balance - have
        if short <= 0:
            return 0
        key = str(uuid.uuid4())
        method, path, body = dialect.request("charge", amount=short, userId=str(user), key=key)
        r = c.request(method, path, json=body, headers={**auth, "Idempotency-Key": key})
        if r.status_code not in dialect.steps["charge"].ok:
            raise FixtureError(f"charging user {user} {short:,} points answered {r.status_code}: {r.text[:150]}")
        return short

    with (
        guarded_client(profile.target.allowlist, base_url=base_url, timeout=30.0) as c,
        ThreadPoolExecutor(max_workers=16) as pool,
    ):
        charged = list(pool.map(lambda u: one(c, u), users))
    topped = sum(1 for x in charged if x)
    return (
        f"users {want.first}–{want.first + want.count - 1}: {'exactly' if want.exact else 'at least'} "
        f"{want.balance:,} points (api: {topped} charged, {sum(charged):,} points)"
    )


# ----------------------------------------------------------------------------------------------- sql


def statements(name_or_path: str) -> dict[str, str]:
    """The `-- name: x` blocks of a fixtures file (one statement each)."""
    p = Path(name_or_path)
    path = p if p.suffix == ".sql" else FIXTURE_DIR / f"{name_or_path}.sql"
    if not path.exists():
        known = ", ".join(sorted(f.stem for f in FIXTURE_DIR.glob("*.sql")))
        raise FixtureError(f"no SQL fixtures {name_or_path!r} (known: {known}; or the path of a .sql file)")
    out: dict[str, str] = {}
    for block in re.split(r"^--\s*name:\s*", path.read_text(), flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        sql = "\n".join(line for line in body.splitlines() if not line.strip().startswith("--")).strip().rstrip(";")
        out[name.strip()] = sql
    missing = {"set_balance", "add_balance"} - set(out)
    if missing:
        raise FixtureError(f"SQL fixtures {path} lack the statement(s) {', '.join(sorted(missing))}")
    return out


def sql_balances(dsn: str, fixtures: str, want: Balance) -> str:
    from sqlalchemy import create_engine, text

    sql = statements(fixtures)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    engine = create_engine(dsn)
    added = 0
    try:
        with engine.begin() as c:
            for user in range(want.first, want.first + want.count):
                params = {"user_id": user, "balance": want.balance, "now": now}
                if not c.execute(text(sql["set_balance"]), params).rowcount:
                    c.execute(text(sql["add_balance"]), params)
                    added += 1
    finally:
        engine.dispose()
    return (
        f"users {want.first}–{want.first + want.count - 1}: {want.balance:,} points "
        f"(sql {fixtures}: {want.count - added} set, {added} added)"
    )


try:  # thin Prefect wrapper: reads and top-ups make it safe to retry
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(name="fixtures", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
    def fixtures_task(
        profile: Profile, scenario: str, base_url: str, admin_token: str | None = None, write_dsn: str | None = None
    ) -> str:
        return apply_fixtures(profile, scenario, base_url, admin_token=admin_token, write_dsn=write_dsn)
except ImportError:  # pragma: no cover
    pass
