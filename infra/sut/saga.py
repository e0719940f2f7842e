"""The saga's consumers (points, payments, reservations), each idempotent.

Every handler records the message key in ``consumed_message`` inside the same transaction as its effect
(the inbox pattern), so a redelivered message changes nothing; its stored result is published again in
case the first delivery died between commit and publish. Commands from the payment service travel
through ``payment_outbox`` (so the plan's outbox query sees UsePointCommand, ConfirmSeatsCommand,
CancelSeatsCommand); the replies of the point and reservation services go straight to the bus after
their commit, acknowledged only once published.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from infra.sut import metrics, queue
from infra.sut.bus import Message
from infra.sut.context import Services
from infra.sut.payments import outbox_row
from infra.sut.tables import consumed_message, payment, payment_outbox, point_history, point_wallet, reservation, seat
from infra.sut.tables import utcnow as now_utc

log = logging.getLogger("infra.sut.saga")


async def _seen(conn, group: str, key: str) -> tuple[bool, str | None]:
    row = (
        await conn.execute(
            select(consumed_message.c.result).where(
                consumed_message.c.consumer_group == group, consumed_message.c.message_key == key
            )
        )
    ).first()
    return (row is not None, row.result if row else None)


async def _mark(conn, group: str, key: str, result: str | None) -> None:
    await conn.execute(
        consumed_message.insert().values(consumer_group=group, message_key=key, result=result, created_at=now_utc())
    )


async def _once(svc: Services, group: str, msg: Message, effect) -> tuple[str | None, bool]:
    """Run ``effect(conn) -> result`` once per message key; returns (result, first_time)."""
    try:
        async with svc.db.begin() as conn:
            seen, result = await _seen(conn, group, msg.key)
            if seen:
                return result, False
            result = await effect(conn)
            await _mark(conn, group, msg.key, result)
            return result, True
    except IntegrityError:  # a concurrent delivery of the same key won
        async with svc.db.connect() as conn:
            _seen_, result = await _seen(conn, group, msg.key)
        return result, False


# ---------------------------------------------------------------------------- point service
async def on_points(svc: Services, msg: Message) -> None:
    if msg.type != "UsePointCommand":
        return
    p = msg.payload

    async def effect(conn) -> str:
        now = now_utc()
        res = await conn.execute(
            update(point_wallet)
            .where(point_wallet.c.user_id == p["userId"], point_wallet.c.balance >= p["amount"])
            .values(balance=point_wallet.c.balance - p["amount"], updated_at=now)
        )
        if res.rowcount:
            await conn.execute(
                point_history.insert().values(
                    user_id=p["userId"], delta=-p["amount"], kind="USE", payment_id=p["paymentId"], created_at=now
                )
            )
            return "PointUsedEvent"
        exists = (
            await conn.execute(select(point_wallet.c.user_id).where(point_wallet.c.user_id == p["userId"]))
        ).first()
        return "PointUseFailedEvent:" + ("INSUFFICIENT_POINTS" if exists else "USER_NOT_FOUND")

    result, _first = await _once(svc, "point-service", msg, effect)
    event, _, reason = (result or "").partition(":")
    await svc.bus.publish(event, f"{event}:{p['paymentId']}", {**p, "reason": reason or None})


# ---------------------------------------------------------------------------- payment service
async def on_payments(svc: Services, msg: Message) -> None:
    p = msg.payload
    pid = p["paymentId"]
    terminal: list[str] = []

    async def effect(conn) -> str:
        now = now_utc()
        if msg.type == "PointUsedEvent":
            res = await conn.execute(
                update(payment)
                .where(payment.c.id == pid, payment.c.status == "PENDING")
                .values(status="PROCESSING", updated_at=now)
            )
            if res.rowcount:
                await conn.execute(payment_outbox.insert().values(**outbox_row(pid, "ConfirmSeatsCommand", p, now)))
                return "ConfirmSeatsCommand"
            return "ignored"
        if msg.type == "PointUseFailedEvent":
            if svc.fault("no_compensation"):
                res = await _finish(conn, pid, "FAILED", p.get("reason"), now)
                if res:
                    terminal.append("failed")
                return "FAILED-no-compensation"
            res = await conn.execute(
                update(payment)
                .where(payment.c.id == pid, payment.c.status == "PENDING")
                .values(failure_reason=p.get("reason"), updated_at=now)
            )
            if res.rowcount:
                await conn.execute(payment_outbox.insert().values(**outbox_row(pid, "CancelSeatsCommand", p, now)))
                return "CancelSeatsCommand"
            return "ignored"
        if msg.type == "SeatsConfirmedEvent":
            if await _finish(conn, pid, "COMPLETED", None, now):
                terminal.append("completed")
            return "COMPLETED"
        if msg.type == "SeatsCancelledEvent":
            if await _finish(conn, pid, "FAILED", p.get("reason"), now):
                terminal.append("failed")
            return "FAILED"
        return "ignored"

    result, first = await _once(svc, "payment-service", msg, effect)
    if first and result in ("ConfirmSeatsCommand", "CancelSeatsCommand") and svc.settings.outbox_nudge:
        svc.outbox_wake.set()
    if terminal:
        await _after_terminal(svc, pid, p, terminal[0])


async def _finish(conn, pid: int, status: str, reason: str | None, now) -> bool:
    values = {"status": status, "updated_at": now, "completed_at": now}
    if reason:
        values["failure_reason"] = reason
    res = await conn.execute(
        update(payment).where(payment.c.id == pid, payment.c.status.in_(("PENDING", "PROCESSING"))).values(**values)
    )
    return bool(res.rowcount)


async def _after_terminal(svc: Services, pid: int, p: dict, outcome: str) -> None:
    async with svc.db.connect() as conn:
        created = (
            await conn.execute(select(payment.c.created_at, payment.c.completed_at).where(payment.c.id == pid))
        ).first()
    if created and created.completed_at:
        metrics.SAGA_DURATION.labels(outcome).observe((created.completed_at - created.created_at).total_seconds())
    if p.get("queueTokenId"):
        await queue.finish(svc, int(p["queueTokenId"]))


# ---------------------------------------------------------------------------- reservation service
async def on_reservations(svc: Services, msg: Message) -> None:
    p = msg.payload
    rid = p["reservationId"]

    async def effect(conn) -> str:
        now = now_utc()
        if msg.type == "ConfirmSeatsCommand":
            await conn.execute(
                update(seat)
                .where(seat.c.reservation_id == rid, seat.c.status == "HELD")
                .values(status="SOLD", held_until=None, updated_at=now)
            )
            await conn.execute(
                update(reservation).where(reservation.c.id == rid).values(status="CONFIRMED", updated_at=now)
            )
            return "SeatsConfirmedEvent"
        if msg.type == "CancelSeatsCommand":
            await conn.execute(
                update(seat)
                .where(seat.c.reservation_id == rid, seat.c.status == "HELD")
                .values(status="AVAILABLE", reservation_id=None, held_until=None, updated_at=now)
            )
            await conn.execute(
                update(reservation).where(reservation.c.id == rid).values(status="CANCELLED", updated_at=now)
            )
            return "SeatsCancelledEvent"
        return ""

    result, _first = await _once(svc, "reservation-service", msg, effect)
    if result:
        await svc.bus.publish(result, f"{result}:{p['paymentId']}", p)


HANDLERS = {"points": on_points, "payments": on_payments, "reservations": on_reservations}
