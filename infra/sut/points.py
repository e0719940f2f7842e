"""API-6: point charges, atomic in the database (``balance = balance + :amount``).

The ``lost_update`` fault reads the balance and writes back ``read + amount`` in a separate statement,
the read-modify-write that loses updates under concurrency.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select, update

from infra.sut.context import Services
from infra.sut.tables import point_history, point_wallet, utcnow
from infra.sut.web import ApiError

MAX_CHARGE = 100_000_000


async def charge(svc: Services, user: int, amount: int) -> dict:
    now = utcnow()
    if svc.fault("lost_update"):
        async with svc.db.connect() as conn:
            row = (await conn.execute(select(point_wallet.c.balance).where(point_wallet.c.user_id == user))).first()
            if row is None:
                raise ApiError(404, "USER_NOT_FOUND", f"user {user} has no point wallet")
            await conn.rollback()
            await asyncio.sleep(0.01)  # a 10 ms read-to-write window: other charges read the same balance
            new = row.balance + amount
            async with svc.db.transaction(conn):
                await conn.execute(
                    update(point_wallet).where(point_wallet.c.user_id == user).values(balance=new, updated_at=now)
                )
                await conn.execute(
                    point_history.insert().values(user_id=user, delta=amount, kind="CHARGE", created_at=now)
                )
        return {"userId": user, "amount": amount, "balance": new}
    async with svc.db.begin() as conn:
        res = await conn.execute(
            update(point_wallet)
            .where(point_wallet.c.user_id == user)
            .values(balance=point_wallet.c.balance + amount, updated_at=now)
        )
        if not res.rowcount:
            raise ApiError(404, "USER_NOT_FOUND", f"user {user} has no point wallet")
        await conn.execute(point_history.insert().values(user_id=user, delta=amount, kind="CHARGE", created_at=now))
        balance = (await conn.execute(select(point_wallet.c.balance).where(point_wallet.c.user_id == user))).scalar()
    return {"userId": user, "amount": amount, "balance": balance}


async def balance_of(svc: Services, user: int) -> dict:
    async with svc.db.connect() as conn:
        row = (await conn.execute(select(point_wallet.c.balance).where(point_wallet.c.user_id == user))).first()
    if row is None:
        raise ApiError(404, "USER_NOT_FOUND", f"user {user} has no point wallet")
    return {"userId": user, "balance": row.balance}
