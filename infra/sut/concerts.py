"""API-5: the concert list with shows and their free seats; a read-heavy query, optionally cached in Redis."""

from __future__ import annotations

import asyncio

import orjson
from sqlalchemy import func, select

from infra.sut.context import Services
from infra.sut.tables import concert, concert_show, seat
from infra.sut.web import iso


def _bytes(v: bytes | str) -> bytes:
    return v.encode() if isinstance(v, str) else v


def _keys(svc: Services) -> tuple[str, str, str]:
    return svc.key("cache", "concerts"), svc.key("cache", "concerts", "stale"), svc.key("cache", "concerts", "lock")


async def concert_list(svc: Services) -> bytes:
    """The JSON body; from the Redis cache when ``concert_cache`` is on.

    The cache serves stale-while-revalidate, as a production cache of a heavy query must: when the fresh
    entry expires, the previous body is served while one request (a short Redis lock) rebuilds it in the
    background. Without that, every request of the rebuild's duration would go to the database at each
    expiry (a stampede), and the cache would not remove the slow query from anyone's response time.
    """
    if not svc.settings.concert_cache:
        return await _rebuild(svc)
    key, stale_key, lock = _keys(svc)
    cached = await svc.redis.get(key)
    if cached is not None:
        return _bytes(cached)
    stale = await svc.redis.get(stale_key)
    if stale is None:  # cold: nothing to serve yet
        return await _rebuild(svc)
    if await svc.redis.set(lock, "1", nx=True, px=int(max(svc.settings.concert_query_ms, 0) + 5000)):
        _background.add(task := asyncio.create_task(_rebuild(svc)))
        task.add_done_callback(_background.discard)
    return _bytes(stale)


#: Rebuilds running in the background (kept referenced until done).
_background: set[asyncio.Task] = set()


async def warm(svc: Services) -> None:
    """Fill the cache at start-up when it is on, so no user pays for the first build."""
    if svc.settings.concert_cache:
        await _rebuild(svc)


async def _rebuild(svc: Services) -> bytes:
    s = svc.settings
    async with svc.db.connect() as conn:
        concerts = (await conn.execute(select(concert).order_by(concert.c.id))).all()
        shows = (await conn.execute(select(concert_show).order_by(concert_show.c.id))).all()
        counts = (
            await conn.execute(
                select(seat.c.show_id, seat.c.status, func.count()).group_by(seat.c.show_id, seat.c.status)
            )
        ).all()
        if s.concert_query_ms > 0:
            await asyncio.sleep(s.concert_query_ms / 1000)  # the heavy query's time, connection held
    per_show: dict[int, dict[str, int]] = {}
    for show_id, status, n in counts:
        per_show.setdefault(show_id, {})[status] = n
    body = [
        {
            "concertId": c.id,
            "title": c.title,
            "shows": [
                {
                    "showId": sh.id,
                    "startsAt": iso(sh.starts_at),
                    "totalSeats": sum(per_show.get(sh.id, {}).values()),
                    "availableSeats": per_show.get(sh.id, {}).get("AVAILABLE", 0),
                }
                for sh in shows
                if sh.concert_id == c.id
            ],
        }
        for c in concerts
    ]
    raw = orjson.dumps(body)
    if s.concert_cache:
        key, stale_key, lock = _keys(svc)
        ttl_ms = int(s.concert_cache_ttl_seconds * 1000)
        await svc.redis.set(key, raw, px=ttl_ms)
        await svc.redis.set(stale_key, raw)  # served only while one request rebuilds the fresh entry
        await svc.redis.delete(lock)
    return raw
