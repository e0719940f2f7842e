"""API-1 and API-2 as raw ASGI: the two endpoints a ticket-open spike hammers.

At the plan's peak 10,000 users poll every 3 s (3,333 req/s) beside 1,000 token issues a second, on the
same cores as k6. Starlette's request objects, routing and middleware cost more per poll than the answer
itself (one Redis script call), so these two routes are answered here first. Same answers, errors and
metrics as the Starlette routes (tests/infra/sut/test_hot.py compares them; `hot_paths: false` turns this
off); anything else, and any request these routes do not expect in this form (foreign mode's body
form, a missing header, a bad path), goes the ordinary way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson

from infra.sut import queue
from infra.sut.context import Services
from infra.sut.db import PoolTimeout
from infra.sut.web import ApiError, error_response, json_response, user_of

log = logging.getLogger("infra.sut")

ENTER = "/api/v1/queues/enter"
TOKENS = "/api/v1/queues/tokens/"
JSON_HEADERS = [(b"content-type", b"application/json")]


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def error_answer(exc: BaseException):
    """The response the Starlette app's exception handlers give for ``exc`` (one mapping for both)."""
    if isinstance(exc, ApiError):
        return error_response(exc)
    if isinstance(exc, PoolTimeout):
        return json_response({"error": "DB_POOL_TIMEOUT", "message": "no database connection available"}, 503)
    return json_response({"error": "INTERNAL_ERROR", "message": type(exc).__name__}, 500)


class HotPaths:
    """Answers API-1 and API-2 before the Starlette app sees them (see the module's docstring)."""

    def __init__(self, app, svc_getter: Callable[[], Services | None]):
        self.app, self.svc_getter = app, svc_getter

    async def __call__(self, scope, receive, send):
        svc = self.svc_getter() if scope["type"] == "http" and scope["method"] == "POST" else None
        if svc is None or svc.settings.foreign:
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == ENTER:
            token = _header(scope, b"queue-token")
            if not token:
                return await self.app(scope, receive, send)
            call = queue.status_of(svc, token)
            ok = 200
        elif path.startswith(TOKENS) and path[len(TOKENS) :].isdigit() and int(path[len(TOKENS) :]) >= 1:
            call = self._issue(svc, int(path[len(TOKENS) :]), _header(scope, b"authorization"))
            ok = None
        else:
            return await self.app(scope, receive, send)
        try:
            answer = await call
        except Exception as exc:  # noqa: BLE001 - mapped as the app's exception handlers map it
            if not isinstance(exc, ApiError | PoolTimeout):
                log.exception("unhandled error on %s", path, exc_info=exc)
            return await error_answer(exc)(scope, receive, send)
        status, body = (ok, answer) if ok else answer
        payload = orjson.dumps(body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    async def _issue(svc: Services, target: int, authorization: str | None) -> tuple[int, dict]:
        user = user_of(authorization)
        if svc.settings.token_delay_ms > 0:
            await asyncio.sleep(svc.settings.token_delay_ms / 1000)
        return await queue.issue(svc, target, user)
