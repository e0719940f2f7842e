"""API-5: the concert list with shows and their free seats; a read-heavy query, optionally cached in Redis."""

from __future__ import annotations

import asyncio

import orjson
from sqlalchemy import func, select

from infra.sut.context import Services
from infra.sut.tables import concert, concert_show, seat
from infra.sut.web import iso


async def concert_list(svc: Services) -> bytes:
    """The JSON body; from the Redis cache when ``concert_cache`` is on and the entry is fresh."""
    s = svc.settings
    key = svc.key("cache", "concerts")
    if s.concert_cache:
        cached = await svc.redis.get(key)
        if cached is not None:
            return cached.encode() if isinstance(cached, str) else cached
    async with svc.db.connect() as conn:
        concerts = (await conn.execute(select(concert).order_by(concert.c.id))).all()
        shows = (await conn.execute(select(concert_show).order_by(concert_show.c.id))).all()
        counts = (await conn.execute(select(seat.c.show_id, seat.c.status, func.count()).group_by(
            seat.c.show_id, seat.c.status))).all()
        if s.concert_query_ms > 0:
            await asyncio.sleep(s.concert_query_ms / 1000)  # the heavy query's time, connection held
    per_show: dict[int, dict[str, int]] = {}
    for show_id, status, n in counts:
        per_show.setdefault(show_id, {})[status] = n
    body = [{"concertId": c.id, "title": c.title, "shows": [
        {"showId": sh.id, "startsAt": iso(sh.starts_at), "totalSeats": sum(per_show.get(sh.id, {}).values()),
         "availableSeats": per_show.get(sh.id, {}).get("AVAILABLE", 0)}
        for sh in shows if sh.concert_id == c.id]} for c in concerts]
    raw = orjson.dumps(body)
    if s.concert_cache:
        await svc.redis.set(key, raw, px=int(s.concert_cache_ttl_seconds * 1000))
    return raw
