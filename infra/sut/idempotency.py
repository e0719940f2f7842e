"""Idempotency-Key handling: replay the first answer, also while the first request is still in flight.

The first request with a key claims it in Redis (SET NX, state ``pending`` with the body's hash). Others
with the same key and body wait for it and replay its answer; the same key with another body is 422.
Only successful answers are kept; a failed first attempt frees the key so a retry runs again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import orjson

from infra.sut.context import Services
from infra.sut.web import ApiError


def body_hash(path: str, body: dict) -> str:
    return hashlib.sha256(path.encode() + b"\0" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Idempotency:
    """One claim on (scope, user, key). ``await begin()`` returns a replayed (status, body) or None."""

    def __init__(self, svc: Services, scope: str, user: int, key: str, digest: str):
        self.svc, self.digest = svc, digest
        self.rkey = svc.key("idem", scope, user, key)
        self.claimed = False

    async def begin(self, wait_seconds: float) -> tuple[int, dict] | None:
        if self.svc.fault("no_idempotency"):  # every request runs anew, replays included
            return None
        r = self.svc.redis
        pending = orjson.dumps({"state": "pending", "hash": self.digest})
        claim_ms = int(max(wait_seconds, 1.0) * 1000) + 30_000
        deadline = time.monotonic() + wait_seconds
        while True:
            if await r.set(self.rkey, pending, nx=True, px=claim_ms):
                self.claimed = True
                return None
            raw = await r.get(self.rkey)
            if raw is not None:
                seen = orjson.loads(raw)
                if seen["hash"] != self.digest:
                    raise ApiError(
                        422, "IDEMPOTENCY_KEY_REUSED", "this Idempotency-Key was used with a different request body"
                    )
                if seen["state"] == "done":
                    return seen["status"], seen["body"]
            if time.monotonic() >= deadline:
                raise ApiError(409, "IDEMPOTENCY_IN_FLIGHT", "a request with this Idempotency-Key is in progress")
            await asyncio.sleep(0.01)

    async def complete(self, status: int, body: dict) -> None:
        if self.svc.fault("no_idempotency"):
            return
        ttl = int(self.svc.settings.idempotency_ttl_seconds * 1000)
        done = orjson.dumps({"state": "done", "hash": self.digest, "status": status, "body": body})
        await self.svc.redis.set(self.rkey, done, px=ttl)
        self.claimed = False

    async def abandon(self) -> None:
        if self.claimed:
            self.claimed = False
            await self.svc.redis.delete(self.rkey)
