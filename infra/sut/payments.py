"""API-4 (start the payment saga) and the payment status endpoint.

The payment row (PENDING) and its outbox row (UsePointCommand) are written in one transaction with the
reservation's move HELD → PAYMENT_PENDING (so the hold sweeper leaves it alone while the saga runs).
Nothing is published here: the outbox publisher does that on its interval.
"""

from __future__ import annotations

import orjson
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from infra.sut.context import Services
from infra.sut.idempotency import Idempotency, body_hash
from infra.sut.tables import payment, payment_outbox, reservation, utcnow
from infra.sut.web import ApiError, iso, positive_int


def outbox_row(payment_id: int, event_type: str, payload: dict, now) -> dict:
    return {
        "aggregate_id": payment_id,
        "aggregate_type": "PAYMENT",
        "event_type": event_type,
        "payload": orjson.dumps(payload).decode(),
        "status": "PENDING",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


async def pay(svc: Services, *, user: int, body: dict, key: str, path: str) -> tuple[int, dict]:
    rid = body.get("reservationId")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or not str(rid):
        raise ApiError(400, "BAD_REQUEST", "reservationId is required")
    rid = str(rid)
    amount = positive_int(body, "amount")
    idem = Idempotency(svc, "pay", user, key, body_hash(path, body))
    replay = await idem.begin(10.0)
    if replay is not None:
        return replay
    try:
        answer = await _pay(svc, user, rid, amount, key)
    except BaseException:
        await idem.abandon()
        raise
    await idem.complete(200, answer)
    return 200, answer


async def _pay(svc: Services, user: int, rid: str, amount: int, key: str) -> dict:
    now = utcnow()
    try:
        async with svc.db.begin() as conn:
            res = await conn.execute(
                update(reservation)
                .where(
                    reservation.c.id == rid,
                    reservation.c.user_id == user,
                    reservation.c.status == "HELD",
                    reservation.c.expires_at > now,
                )
                .values(status="PAYMENT_PENDING", updated_at=now)
            )
            if not res.rowcount:
                row = (
                    await conn.execute(
                        select(reservation.c.status, reservation.c.user_id).where(reservation.c.id == rid).limit(1)
                    )
                ).first()
                if row is None or row.user_id != user:
                    raise ApiError(404, "RESERVATION_NOT_FOUND", "no such reservation")
                raise ApiError(409, "RESERVATION_NOT_PAYABLE", f"reservation is {row.status}")
            token_id = (
                await conn.execute(select(reservation.c.queue_token_id).where(reservation.c.id == rid).limit(1))
            ).scalar()
            pid = (
                await conn.execute(
                    payment.insert().values(
                        reservation_id=rid,
                        user_id=user,
                        amount=amount,
                        status="PENDING",
                        idempotency_key=key,
                        created_at=now,
                        updated_at=now,
                    )
                )
            ).inserted_primary_key[0]
            await conn.execute(
                payment_outbox.insert().values(
                    **outbox_row(
                        pid,
                        "UsePointCommand",
                        {
                            "paymentId": pid,
                            "reservationId": rid,
                            "userId": user,
                            "amount": amount,
                            "queueTokenId": token_id,
                        },
                        now,
                    )
                )
            )
    except IntegrityError as e:  # a second payment for the same reservation
        raise ApiError(409, "RESERVATION_NOT_PAYABLE", "reservation already has a payment") from e
    return {"paymentId": pid, "reservationId": rid, "status": "PENDING", "amount": amount, "createdAt": iso(now)}


async def get_payment(svc: Services, user: int, pid: int) -> dict:
    async with svc.db.connect() as conn:
        row = (await conn.execute(select(payment).where(payment.c.id == pid))).first()
    if row is None or row.user_id != user:
        raise ApiError(404, "PAYMENT_NOT_FOUND", "no such payment")
    return {
        "paymentId": row.id,
        "reservationId": row.reservation_id,
        "status": row.status,
        "amount": row.amount,
        "failureReason": row.failure_reason,
        "createdAt": iso(row.created_at),
        "updatedAt": iso(row.updated_at),
        "completedAt": iso(row.completed_at),
    }
