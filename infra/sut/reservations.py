"""API-3: hold 1–4 seats of a show for ``hold_minutes`` under per-seat locks; the hold sweeper.

Inside the locks the seats are read, then taken with a conditional UPDATE (``status='AVAILABLE'``) whose
row count must match, so even a lock lost to an expired lease cannot sell a seat twice. The ``no_lock``
fault skips the locks and writes unconditionally after the read: the classic check-then-act race.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from sqlalchemy import select, update

from infra.sut import metrics, queue
from infra.sut.context import Services
from infra.sut.idempotency import Idempotency, body_hash
from infra.sut.locks import LockTimeout, SeatLocks
from infra.sut.tables import concert_show, reservation, seat, utcnow
from infra.sut.web import ApiError, BareServerError, iso


def parse_seats(body: dict, max_seats: int) -> list[int]:
    seats = body.get("seatIds")
    if not isinstance(seats, list) or not 1 <= len(seats) <= max_seats:
        raise ApiError(400, "BAD_REQUEST", f"seatIds must be a list of 1 to {max_seats} seat ids")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in seats):
        raise ApiError(400, "BAD_REQUEST", "seatIds must be positive integers")
    if len(set(seats)) != len(seats):
        raise ApiError(400, "BAD_REQUEST", "seatIds must be distinct")
    return sorted(seats)


async def require_entered(svc: Services, token: str | None, user: int) -> dict:
    """The Queue-Token must be live (401) and ENTERED for this user (403)."""
    if not token:
        raise ApiError(401, "QUEUE_TOKEN_REQUIRED", "Queue-Token header is required")
    live = await queue.lookup(svc, token)
    if live is None:
        raise ApiError(401, "QUEUE_TOKEN_INVALID", "unknown or expired queue token")
    if live["user"] != user:
        raise ApiError(403, "QUEUE_TOKEN_FORBIDDEN", "the queue token belongs to another user")
    if live["status"] != "ENTERED":
        raise ApiError(403, "QUEUE_NOT_ENTERED", f"queue token is {live['status']}, not ENTERED")
    return live


async def reserve(
    svc: Services, *, user: int, show_id: int, body: dict, key: str, token: str | None, path: str
) -> tuple[int, dict]:
    s = svc.settings
    seats = parse_seats(body, s.max_seats)
    live = await require_entered(svc, token, user)
    idem = Idempotency(svc, "reserve", user, key, body_hash(path, body))
    replay = await idem.begin(s.lock_wait_seconds + 10.0)
    if replay is not None:
        return replay
    try:
        status, answer = await _reserve(svc, user, show_id, seats, key, live["id"])
    except BaseException:
        await idem.abandon()
        raise
    await idem.complete(status, answer)
    return status, answer


async def _reserve(
    svc: Services, user: int, show_id: int, seats: list[int], key: str, token_id: int
) -> tuple[int, dict]:
    s = svc.settings
    try:
        if svc.fault("no_lock"):
            return await _take(svc, user, show_id, seats, key, token_id, guarded=False)
        async with SeatLocks(svc, show_id, seats):
            return await _take(svc, user, show_id, seats, key, token_id, guarded=True)
    except LockTimeout as e:
        metrics.RESERVATIONS.labels("LOCK_TIMEOUT").inc()
        if svc.fault("lock_timeout_500"):
            raise ApiError(500, "INTERNAL_ERROR", "lock wait timed out") from e
        if svc.fault("lock_timeout_500_bare"):  # no code, nothing in the body says "lock"
            raise BareServerError() from e
        raise ApiError(409, "LOCK_TIMEOUT", f"seat lock not acquired within {s.lock_wait_seconds:g} s") from e


async def _take(
    svc: Services, user: int, show_id: int, seats: list[int], key: str, token_id: int, guarded: bool
) -> tuple[int, dict]:
    async with svc.db.connect() as conn:
        rows = (
            await conn.execute(
                select(seat.c.id, seat.c.price, seat.c.status).where(seat.c.show_id == show_id, seat.c.id.in_(seats))
            )
        ).all()
        if len(rows) != len(seats):
            show = (await conn.execute(select(concert_show.c.id).where(concert_show.c.id == show_id))).first()
            if show is None:
                raise ApiError(404, "SHOW_NOT_FOUND", f"show {show_id} does not exist")
            raise ApiError(404, "SEAT_NOT_FOUND", f"seat(s) not in show {show_id}")
        if any(r.status != "AVAILABLE" for r in rows):
            metrics.RESERVATIONS.labels("SEAT_TAKEN").inc()
            raise ApiError(400 if svc.fault("taken_seat_400") else 409, "SEAT_TAKEN", "seat already taken")
        if not guarded:  # no_lock: a 50 ms check-to-write window (a network round trip or two), so the race
            await asyncio.sleep(0.05)  # shows on a loaded 2-core machine as it would between app and DB hosts
        rid = str(uuid.uuid4())
        now = utcnow()
        expires = now + dt.timedelta(minutes=svc.settings.hold_minutes)
        amount = sum(r.price for r in rows)
        await conn.rollback()  # end the read's implicit transaction; the write gets its own
        async with svc.db.transaction(conn):
            cond = [seat.c.id.in_(seats)] + ([seat.c.status == "AVAILABLE"] if guarded else [])
            res = await conn.execute(
                update(seat).where(*cond).values(status="HELD", reservation_id=rid, held_until=expires, updated_at=now)
            )
            if res.rowcount != len(seats):
                metrics.RESERVATIONS.labels("SEAT_TAKEN").inc()
                raise ApiError(400 if svc.fault("taken_seat_400") else 409, "SEAT_TAKEN", "seat already taken")
            await conn.execute(
                reservation.insert(),
                [
                    {
                        "id": rid,
                        "show_id": show_id,
                        "seat_id": r.id,
                        "user_id": user,
                        "queue_token_id": token_id,
                        "status": "HELD",
                        "amount": amount,
                        "idempotency_key": key,
                        "expires_at": expires,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for r in rows
                ],
            )
    metrics.RESERVATIONS.labels("OK").inc()
    return 200, {
        "reservationId": rid,
        "showId": show_id,
        "seatIds": seats,
        "status": "HELD",
        "amount": amount,
        "expiresAt": iso(expires),
    }


async def get_reservation(svc: Services, user: int, rid: str) -> dict:
    async with svc.db.connect() as conn:
        rows = (await conn.execute(select(reservation).where(reservation.c.id == rid))).all()
    if not rows or rows[0].user_id != user:
        raise ApiError(404, "RESERVATION_NOT_FOUND", "no such reservation")
    r = rows[0]
    return {
        "reservationId": rid,
        "showId": r.show_id,
        "seatIds": sorted(x.seat_id for x in rows),
        "status": r.status,
        "amount": r.amount,
        "expiresAt": iso(r.expires_at),
    }


async def sweep_holds(svc: Services, limit: int = 500) -> int:
    """Free the seats of reservations still HELD after their hold expired (status EXPIRED)."""
    now = utcnow()
    async with svc.db.connect() as conn:
        ids = [
            r[0]
            for r in (
                await conn.execute(
                    select(reservation.c.id)
                    .where(reservation.c.status == "HELD", reservation.c.expires_at <= now)
                    .distinct()
                    .limit(limit)
                )
            ).all()
        ]
    freed = 0
    for rid in ids:
        async with svc.db.begin() as conn:
            res = await conn.execute(
                update(reservation)
                .where(reservation.c.id == rid, reservation.c.status == "HELD")
                .values(status="EXPIRED", updated_at=now)
            )
            if res.rowcount:
                await conn.execute(
                    update(seat)
                    .where(seat.c.reservation_id == rid, seat.c.status == "HELD")
                    .values(status="AVAILABLE", reservation_id=None, held_until=None, updated_at=now)
                )
                freed += 1
    return freed
