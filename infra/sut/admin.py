"""Test-data administration: seeding (concert, show with seats, users with balances) and §6.2 cleanup."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select, update

from infra.sut.db import Database
from infra.sut.tables import (
    TEST_DATA_TABLES,
    concert,
    concert_show,
    metadata,
    point_history,
    point_wallet,
    seat,
    utcnow,
)

CHUNK = 2000


async def seed(
    db: Database,
    *,
    concert_id: int = 1,
    title: str = "soundcheck concert",
    show_id: int = 101,
    seats: int = 1000,
    seat_price: int = 75_000,
    users: int = 20000,
    user_start: int = 1,
    balance: int = 1_000_000,
    reset_seats: bool = False,
) -> dict:
    """Create what is missing and set balances; idempotent.

    A new show's seats get the next free seat ids (1..N for the first show, so show 101's seats are
    1..N as the plan's SQL assumes). Users ``user_start .. user_start+users-1`` get ``balance`` points.
    """
    now = utcnow()
    out = {"concertId": concert_id, "showId": show_id}
    async with db.begin() as conn:
        if (await conn.execute(select(concert.c.id).where(concert.c.id == concert_id))).first() is None:
            await conn.execute(concert.insert().values(id=concert_id, title=title, created_at=now))
        if (await conn.execute(select(concert_show.c.id).where(concert_show.c.id == show_id))).first() is None:
            await conn.execute(
                concert_show.insert().values(
                    id=show_id, concert_id=concert_id, starts_at=now + dt.timedelta(days=30), created_at=now
                )
            )
        have = (
            await conn.execute(select(func.count(), func.max(seat.c.seat_no)).where(seat.c.show_id == show_id))
        ).one()
        existing, top_no = int(have[0]), int(have[1] or 0)
        if seats > existing:
            next_id = int((await conn.execute(select(func.max(seat.c.id)))).scalar() or 0) + 1
            rows = [
                {
                    "id": next_id + i,
                    "show_id": show_id,
                    "seat_no": top_no + 1 + i,
                    "price": seat_price,
                    "status": "AVAILABLE",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(seats - existing)
            ]
            for i in range(0, len(rows), CHUNK):
                await conn.execute(seat.insert(), rows[i : i + CHUNK])
        if reset_seats:
            await conn.execute(
                update(seat)
                .where(seat.c.show_id == show_id)
                .values(status="AVAILABLE", reservation_id=None, held_until=None, updated_at=now)
            )
        first_seat = (await conn.execute(select(func.min(seat.c.id)).where(seat.c.show_id == show_id))).scalar()
        out["seatIds"] = [int(first_seat or 0), int(first_seat or 0) + max(seats, existing) - 1]
        if users > 0:
            last = user_start + users - 1
            await conn.execute(
                update(point_wallet)
                .where(point_wallet.c.user_id.between(user_start, last))
                .values(balance=balance, updated_at=now)
            )
            have_users = {
                r[0]
                for r in (
                    await conn.execute(
                        select(point_wallet.c.user_id).where(point_wallet.c.user_id.between(user_start, last))
                    )
                ).all()
            }
            rows = [
                {"user_id": u, "balance": balance, "created_at": now, "updated_at": now}
                for u in range(user_start, last + 1)
                if u not in have_users
            ]
            for i in range(0, len(rows), CHUNK):
                await conn.execute(point_wallet.insert(), rows[i : i + CHUNK])
            out["users"] = [user_start, last]
            out["balance"] = balance
    return out


async def cleanup(db: Database, since: dt.datetime) -> dict:
    """§6.2: delete the rows created at or after ``since``; undo their point changes; free touched seats."""
    counts: dict[str, int] = {}
    now = utcnow()
    async with db.begin() as conn:
        deltas = (
            await conn.execute(
                select(point_history.c.user_id, func.sum(point_history.c.delta))
                .where(point_history.c.created_at >= since)
                .group_by(point_history.c.user_id)
            )
        ).all()
        for user, delta in deltas:
            await conn.execute(
                update(point_wallet)
                .where(point_wallet.c.user_id == user)
                .values(balance=point_wallet.c.balance - int(delta), updated_at=now)
            )
        counts["wallets_restored"] = len(deltas)
        res = await conn.execute(
            update(seat)
            .where(seat.c.updated_at >= since, seat.c.status != "AVAILABLE")
            .values(status="AVAILABLE", reservation_id=None, held_until=None, updated_at=now)
        )
        counts["seats_freed"] = res.rowcount
        for table in TEST_DATA_TABLES:
            res = await conn.execute(delete(table).where(table.c.created_at >= since))
            counts[str(table.name)] = res.rowcount  # quoted_name: orjson wants a plain str key
    return counts


async def wipe(db: Database) -> None:
    """Delete every row (children first); the schema stays."""
    async with db.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(delete(table))


async def clear_redis(redis, prefix: str) -> int:
    n = 0
    async for key in redis.scan_iter(match=prefix + "*", count=1000):
        n += await redis.delete(key)
    return n
