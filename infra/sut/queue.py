"""The waiting-room queue (API-1 issue, API-2 poll), capacity, positions, promotion and TTL.

Redis is the admission authority: one Lua script decides ENTERED or WAITING atomically, so exactly
``queue_capacity`` tokens are active per target however many requests arrive together. The token id comes
from a Redis sequence, so the DB row (``queue_token``), the waiting sorted set and the plan's
``id < ?`` position query all agree on the order. TTL lives in both places: the token's Redis key
expires (PEXPIRE) and the row carries ``expires_at``; the sweeper marks expired rows EXPIRED.

Positions: API-1 answers the position the admission script computed (exact under concurrent issuance).
API-2 uses the ``position_strategy``: ``count`` runs the plan's ``SELECT COUNT(*) … WHERE status='WAITING'
AND expires_at > now AND id < ?`` (index ix_queue_wait); ``rank`` answers from the sorted set (ZRANK)
without touching the DB.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError

from infra.sut.context import Services
from infra.sut.tables import queue_token, utcnow
from infra.sut.web import ApiError, iso

ADMIT = """
local existing = redis.call('GET', KEYS[5])
if existing then return {'DUP', existing} end
local id = redis.call('INCR', KEYS[6])
local status
if redis.call('ZCARD', KEYS[2]) == 0 and redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  status = 'ENTERED'
else
  redis.call('ZADD', KEYS[2], id, id)
  redis.call('ZADD', KEYS[3], ARGV[2], id)
  status = 'WAITING'
end
redis.call('HSET', KEYS[4], 'id', id, 'target', ARGV[4], 'user', ARGV[5], 'exp', ARGV[7])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('SET', KEYS[5], ARGV[6], 'PX', ARGV[3])
redis.call('SADD', KEYS[7], ARGV[4])
local rank = redis.call('ZRANK', KEYS[2], id)
return {status, tostring(id), rank and tostring(rank + 1) or ''}
"""

# KEYS[1] token hash; ARGV[1] prefix. -> {status, id, target, user, exp, position-or-''} or nil
POLL = """
local h = redis.call('HMGET', KEYS[1], 'id', 'target', 'user', 'exp')
if not h[1] then return nil end
local base = ARGV[1] .. 'q:' .. h[2]
if redis.call('ZSCORE', base .. ':active', h[1]) then return {'ENTERED', h[1], h[2], h[3], h[4], ''} end
local r = redis.call('ZRANK', base .. ':waiting', h[1])
if r then return {'WAITING', h[1], h[2], h[3], h[4], tostring(r + 1)} end
return {'GONE', h[1], h[2], h[3], h[4], ''}
"""

# KEYS active, waiting, wexp; ARGV now, capacity -> {promoted ids...}
PROMOTE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
for _, id in ipairs(gone) do redis.call('ZREM', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
local promoted = {}
if free > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[2], free)
  for i = 1, #popped, 2 do
    local id = popped[i]
    local exp = redis.call('ZSCORE', KEYS[3], id) or ARGV[1]
    redis.call('ZADD', KEYS[1], exp, id)
    redis.call('ZREM', KEYS[3], id)
    promoted[#promoted + 1] = id
  end
end
return promoted
"""

UNDO = """
redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('ZREM', KEYS[2], ARGV[1]); redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4], KEYS[5])
return 1
"""


class TokenWriter:
    """Group commit for queue-token inserts on SQLite: rows that arrive while a commit is running are
    written together in the next one (what InnoDB's group commit does under MySQL). One commit per batch
    instead of per request keeps a spike from queueing on SQLite's single writer; each caller still
    waits for its own row to be durable and sees its own IntegrityError."""

    def __init__(self, svc: Services, max_batch: int = 500):
        self.svc, self.max_batch = svc, max_batch
        self.pending: list[tuple[dict, asyncio.Future]] = []
        self.wake = asyncio.Event()

    async def insert(self, row: dict) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((row, fut))
        self.wake.set()
        await fut

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                await self._write(batch)

    async def _write(self, batch: list[tuple[dict, asyncio.Future]]) -> None:
        try:
            async with self.svc.db.begin() as conn:
                await conn.execute(queue_token.insert(), [row for row, _ in batch])
            outcomes = [None] * len(batch)
        except IntegrityError:  # someone in the batch is a duplicate: find who, one row at a time
            outcomes = []
            for row, _ in batch:
                try:
                    async with self.svc.db.begin() as conn:
                        await conn.execute(queue_token.insert().values(**row))
                    outcomes.append(None)
                except Exception as e:  # noqa: BLE001 - handed to the caller
                    outcomes.append(e)
        except Exception as e:  # noqa: BLE001 - handed to every caller
            outcomes = [e] * len(batch)
        for (_, fut), err in zip(batch, outcomes, strict=True):
            if fut.done():
                continue
            if err is None:
                fut.set_result(None)
            else:
                fut.set_exception(err)


def _keys(svc: Services, target: int) -> tuple[str, str, str]:
    return svc.key("q", target, "active"), svc.key("q", target, "waiting"), svc.key("q", target, "wexp")


async def issue(svc: Services, target: int, user: int) -> tuple[int, dict]:
    """API-1: a token for (target, user); 201 when new, 200 with the same token when issued before. In foreign
    mode every target shares one global queue (target 0) and the answer is always 201."""
    s = svc.settings
    asked = target
    if s.foreign:
        target = 0
    token = str(uuid.uuid4())
    now = time.time()
    exp_epoch = now + s.queue_ttl_seconds
    expires_at = dt.datetime.fromtimestamp(exp_epoch, dt.UTC).replace(tzinfo=None)
    active, waiting, wexp = _keys(svc, target)
    res = await svc.run_script(
        ADMIT,
        [
            active,
            waiting,
            wexp,
            svc.key("qt", token),
            svc.key("qu", target, user),
            svc.key("q", "seq"),
            svc.key("q", "targets"),
        ],
        [s.queue_capacity, exp_epoch, int(s.queue_ttl_seconds * 1000), target, user, token, exp_epoch],
    )
    again = 201 if s.foreign else 200
    if res[0] == "DUP":
        return again, await status_of(svc, res[1])
    status, tid, rank = res[0], int(res[1]), res[2]
    now_dt = utcnow()
    row = {
        "id": tid,
        "target_id": target,
        "user_id": user,
        "token": token,
        "status": status,
        "expires_at": expires_at,
        "entered_at": now_dt if status == "ENTERED" else None,
        "created_at": now_dt,
        "updated_at": now_dt,
    }
    try:
        if svc.token_writer is not None:
            await svc.token_writer.insert(row)
        else:
            async with svc.db.begin() as conn:
                await conn.execute(queue_token.insert().values(**row))
    except IntegrityError:
        # (target, user) already has a row whose Redis keys are gone (expired or finished): answer it.
        await svc.run_script(UNDO, [active, waiting, wexp, svc.key("qt", token), svc.key("qu", target, user)], [tid])
        async with svc.db.connect() as conn:
            row = (
                await conn.execute(
                    select(queue_token.c.token).where(queue_token.c.target_id == target, queue_token.c.user_id == user)
                )
            ).first()
        if row is None:
            raise
        return again, await status_of(svc, row.token)
    except BaseException:
        await svc.run_script(UNDO, [active, waiting, wexp, svc.key("qt", token), svc.key("qu", target, user)], [tid])
        raise
    body = {
        "token": token,
        "targetId": asked,
        "userId": user,
        "status": status,
        "position": None,
        "expiresAt": iso(expires_at),
    }
    if status == "WAITING":
        # The position at admission, from the same atomic script: exact even while lower ids are still being
        # inserted. Polls (API-2) compute it with the configured strategy.
        body["position"] = int(rank)
    return 201, body


async def count_position(svc: Services, target: int, tid: int) -> int:
    """The plan's position query, on index ix_queue_wait(target_id, status, expires_at, id)."""
    async with svc.db.connect() as conn:
        n = (
            await conn.execute(
                select(func.count())
                .select_from(queue_token)
                .where(
                    and_(
                        queue_token.c.target_id == target,
                        queue_token.c.status == "WAITING",
                        queue_token.c.expires_at > utcnow(),
                        queue_token.c.id < tid,
                    )
                )
            )
        ).scalar_one()
    return int(n) + 1


async def lookup(svc: Services, token: str) -> dict | None:
    """The token's live state from Redis: status, id, target, user (None once its key expired)."""
    res = await svc.run_script(POLL, [svc.key("qt", token)], [svc.settings.redis_prefix])
    if not res:
        return None
    return {
        "status": res[0],
        "id": int(res[1]),
        "target": int(res[2]),
        "user": int(res[3]),
        "exp": float(res[4]),
        "rank": int(res[5]) if res[5] else None,
    }


async def status_of(svc: Services, token: str) -> dict:
    """API-2's answer for a token: ENTERED, WAITING with position, or the row's final state."""
    live = await lookup(svc, token)
    if live is not None and live["status"] in ("ENTERED", "WAITING"):
        expires = dt.datetime.fromtimestamp(live["exp"], dt.UTC).replace(tzinfo=None)
        body = {
            "token": token,
            "targetId": live["target"],
            "userId": live["user"],
            "status": live["status"],
            "position": None,
            "expiresAt": iso(expires),
        }
        if live["status"] == "WAITING":
            body["position"] = (
                live["rank"]
                if svc.settings.position_strategy == "rank"
                else await count_position(svc, live["target"], live["id"])
            )
        return body
    async with svc.db.connect() as conn:
        row = (await conn.execute(select(queue_token).where(queue_token.c.token == token))).first()
    if row is None:
        raise ApiError(404, "TOKEN_NOT_FOUND", "unknown queue token")
    status = row.status
    if status in ("WAITING", "ENTERED") and (live is None or row.expires_at <= utcnow()):
        status = "EXPIRED"
    return {
        "token": token,
        "targetId": row.target_id,
        "userId": row.user_id,
        "status": status,
        "position": None,
        "expiresAt": iso(row.expires_at),
    }


async def promote(svc: Services, target: int) -> list[int]:
    """Drop expired tokens from the active/waiting sets and fill free places in arrival order."""
    active, waiting, wexp = _keys(svc, target)
    ids = await svc.run_script(PROMOTE, [active, waiting, wexp], [time.time(), svc.settings.queue_capacity])
    promoted = [int(i) for i in ids or []]
    if promoted:
        now = utcnow()
        async with svc.db.begin() as conn:
            await conn.execute(
                update(queue_token)
                .where(queue_token.c.id.in_(promoted), queue_token.c.status == "WAITING")
                .values(status="ENTERED", entered_at=now, updated_at=now)
            )
    return promoted


async def finish(svc: Services, token_id: int) -> None:
    """An active user is done (payment terminal): free the place at once and promote the next."""
    if svc.fault("admission_stall"):  # the payer keeps its place until its TTL: nobody waiting moves up
        return
    async with svc.db.begin() as conn:
        row = (
            await conn.execute(
                select(queue_token.c.target_id, queue_token.c.status).where(queue_token.c.id == token_id)
            )
        ).first()
        if row is None:
            return
        await conn.execute(
            update(queue_token)
            .where(queue_token.c.id == token_id, queue_token.c.status == "ENTERED")
            .values(status="DONE", updated_at=utcnow())
        )
    active, _, _ = _keys(svc, row.target_id)
    await svc.redis.zrem(active, token_id)
    if not svc.settings.foreign:  # foreign mode: the place waits for the admission timer
        await promote(svc, row.target_id)


async def sweep(svc: Services) -> None:
    """Expire rows past their TTL and promote waiting users on every known target."""
    now = utcnow()
    async with svc.db.begin() as conn:
        await conn.execute(
            update(queue_token)
            .where(queue_token.c.status.in_(("WAITING", "ENTERED")), queue_token.c.expires_at <= now)
            .values(status="EXPIRED", updated_at=now)
        )
    for target in await svc.redis.smembers(svc.key("q", "targets")):
        await promote(svc, int(target))


async def sync_sequence(svc: Services) -> None:
    """Keep the Redis id sequence ahead of the table (Redis may be younger than the database)."""
    async with svc.db.connect() as conn:
        top = (await conn.execute(select(func.max(queue_token.c.id)))).scalar() or 0
    seq_key = svc.key("q", "seq")
    current = int(await svc.redis.get(seq_key) or 0)
    if top > current:
        await svc.redis.set(seq_key, top)


async def queue_sizes(svc: Services) -> list[tuple[int, int, int]]:
    out = []
    for target in await svc.redis.smembers(svc.key("q", "targets")):
        active, waiting, _ = _keys(svc, int(target))
        out.append((int(target), await svc.redis.zcard(active), await svc.redis.zcard(waiting)))
    return out
