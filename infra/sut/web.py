"""HTTP plumbing shared by the handlers: JSON answers, API errors, bearer auth, request parsing."""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

_BEARER = re.compile(r"^Bearer test-user-(\d{1,18})$")


class ApiError(Exception):
    """An answer other than success, with its status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str = ""):
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message = status, code, message or code


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class BareServerError(ApiError):
    """A 500 with an empty body (the `lock_timeout_500_bare` fault: some real services answer so)."""

    def __init__(self) -> None:
        super().__init__(500, "", "")


def error_response(err: ApiError) -> Response:
    if isinstance(err, BareServerError):
        return Response(b"", status_code=500)
    return json_response({"error": err.code, "message": err.message}, err.status)


def user_id(request: Request) -> int:
    """``Authorization: Bearer test-user-{userId}`` (the original team's scheme); 401 otherwise."""
    return user_of(request.headers.get("authorization"))


def user_of(header: str | None) -> int:
    """The user id an Authorization header carries (see `user_id`)."""
    if not header:
        raise ApiError(401, "UNAUTHORIZED", "missing Authorization: Bearer test-user-{userId}")
    m = _BEARER.match(header.strip())
    if not m or int(m.group(1)) < 1:
        raise ApiError(401, "UNAUTHORIZED", "malformed Authorization; expected Bearer test-user-{userId}")
    return int(m.group(1))


def idempotency_key(request: Request) -> str:
    key = (request.headers.get("idempotency-key") or "").strip()
    if not key:
        raise ApiError(400, "IDEMPOTENCY_KEY_REQUIRED", "Idempotency-Key header is required")
    if len(key) > 128:
        raise ApiError(400, "BAD_REQUEST", "Idempotency-Key longer than 128 characters")
    return key


async def json_body(request: Request, required: bool = True) -> dict:
    raw = await request.body()
    if not raw:
        if required:
            raise ApiError(400, "BAD_REQUEST", "a JSON body is required")
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, "BAD_REQUEST", "body is not valid JSON") from e
    if not isinstance(body, dict):
        raise ApiError(400, "BAD_REQUEST", "body must be a JSON object")
    return body


def path_int(request: Request, name: str) -> int:
    try:
        value = int(request.path_params[name])
    except (KeyError, ValueError) as e:
        raise ApiError(400, "BAD_REQUEST", f"{name} must be an integer") from e
    if value < 1:
        raise ApiError(400, "BAD_REQUEST", f"{name} must be positive")
    return value


def positive_int(body: dict, name: str, maximum: int = 10**12) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > maximum:
        raise ApiError(400, "BAD_REQUEST", f"{name} must be an integer between 1 and {maximum}")
    return value


def iso(value) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"
