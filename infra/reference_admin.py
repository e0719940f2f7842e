"""The reference service's test-data API (`/admin`): soundcheck's optional fast path for its own service.

A real target has no such API: its test data comes through the public API or SQL fixtures (tasks/fixtures.py)
and its cleanup through the §6.2 SQL (tasks.safety.delete_test_data_sql). These calls are used only when the
target is the reference service with its admin API on (not in foreign mode), and always through the allowlist.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from soundcheck.allowlist import guarded_client

ADMIN = "/admin"
#: The reference service's admin endpoint that deletes rows created at or after a time (infra/sut).
ADMIN_CLEANUP_PATH = f"{ADMIN}/cleanup"
ADMIN_SEED_PATH = f"{ADMIN}/seed"


def _post(
    base_url: str, path: str, body: dict, admin_token: str | None, allowlist: Iterable[str] | None, timeout_s: float
) -> dict | str:
    headers = {"X-Admin-Token": admin_token} if admin_token else {}
    with guarded_client(allowlist, base_url=base_url, timeout=timeout_s) as c:
        r = c.post(path, json=body, headers=headers)
    if r.status_code >= 400:
        raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:200]}")
    try:
        return r.json()
    except ValueError:
        return r.text[:200]


def set_balances(
    base_url: str,
    first: int,
    count: int,
    balance: int,
    *,
    admin_token: str | None,
    allowlist: Iterable[str] | None = None,
    timeout_s: float = 60.0,
) -> str:
    """Users first … first+count−1 hold exactly `balance` points (created when missing)."""
    _post(
        base_url,
        ADMIN_SEED_PATH,
        {"userStart": first, "users": count, "balance": balance, "seats": 0},
        admin_token,
        allowlist,
        timeout_s,
    )
    return f"users {first}–{first + count - 1}: {balance:,} points (admin)"


def delete_test_data_admin(
    base_url: str,
    since: datetime,
    *,
    admin_token: str | None,
    allowlist: Iterable[str] | None = None,
    timeout_s: float = 30.0,
) -> str:
    """Ask the reference service to delete the rows created at or after `since` (its admin cleanup)."""
    since_utc = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
    body = _post(base_url, ADMIN_CLEANUP_PATH, {"since": since_utc.isoformat()}, admin_token, allowlist, timeout_s)
    return f"rows created since {since_utc.isoformat()} deleted by the service: {body}"
