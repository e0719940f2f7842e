"""Per-seat distributed locks: SET NX with a lease, taken in sorted order, released only by their owner.

Sorted order means two reservations that share seats never wait on each other in a cycle. A lock is
released by a Lua compare-and-delete, so a request whose lease ran out can never free a lock that
another request has since taken.

Within one process, requests for the same seat first queue on a local FIFO ``asyncio.Lock`` (same sorted
order, same overall deadline), so only one of them at a time polls Redis: the Redis lock still excludes
other processes and instances, but a hot seat no longer costs a Redis round trip per waiter per retry.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

from infra.sut import metrics
from infra.sut.context import Services

RELEASE = """
local n = 0
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then n = n + redis.call('DEL', k) end
end
return n
"""


_local: dict[str, list] = {}  # key -> [asyncio.Lock, users]


def _local_lock(key: str) -> asyncio.Lock:
    entry = _local.get(key)
    if entry is None:
        entry = _local[key] = [asyncio.Lock(), 0]
    entry[1] += 1
    return entry[0]


def _local_done(key: str) -> None:
    entry = _local.get(key)
    if entry is not None:
        entry[1] -= 1
        if entry[1] <= 0:
            del _local[key]


class LockTimeout(Exception):
    """A seat lock stayed busy for longer than lock_wait_seconds."""


class SeatLocks:
    """All locks of one reservation attempt; use ``async with``."""

    def __init__(self, svc: Services, show_id: int, seat_ids: list[int]):
        self.svc = svc
        self.keys = [svc.key("lock", "seat", show_id, s) for s in sorted(seat_ids)]
        self.owner = uuid.uuid4().hex
        self.held: list[str] = []
        self.local_held: list[str] = []
        self.local_joined: list[str] = []

    async def __aenter__(self) -> SeatLocks:
        s = self.svc.settings
        lease_ms = int(s.lock_lease_seconds * 1000)
        start = time.monotonic()
        deadline = start + s.lock_wait_seconds
        try:
            for key in self.keys:
                lock = _local_lock(key)
                self.local_joined.append(key)
                try:
                    await asyncio.wait_for(lock.acquire(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    metrics.LOCK_TIMEOUTS.inc()
                    raise LockTimeout(key) from None
                self.local_held.append(key)
                while not await self.svc.redis.set(key, self.owner, nx=True, px=lease_ms):
                    if time.monotonic() >= deadline:
                        metrics.LOCK_TIMEOUTS.inc()
                        raise LockTimeout(key)
                    pause = s.lock_retry_ms / 1000 * (0.5 + random.random())
                    await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                self.held.append(key)
        except BaseException:
            await self.release()
            raise
        metrics.LOCK_WAIT.observe(time.monotonic() - start)
        return self

    async def release(self) -> None:
        try:
            if self.held:
                held, self.held = self.held, []
                await self.svc.run_script(RELEASE, held, [self.owner])
        finally:
            for key in self.local_held:
                _local[key][0].release()
            for key in self.local_joined:
                _local_done(key)
            self.local_held, self.local_joined = [], []

    async def __aexit__(self, *exc) -> None:
        await self.release()
