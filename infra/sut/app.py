"""The Starlette application: routes, error mapping, request metrics, and the background loops."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from infra.sut import admin, concerts, metrics, outbox, payments, points, queue, reservations
from infra.sut.bus import GROUPS
from infra.sut.consumers import start_consumers
from infra.sut.context import Services, make_bus
from infra.sut.db import Database, PoolTimeout
from infra.sut.hot import HotPaths, error_answer
from infra.sut.instance_port import InstanceListener
from infra.sut.settings import Settings
from infra.sut.web import (
    ApiError,
    idempotency_key,
    json_body,
    json_response,
    path_int,
    positive_int,
    user_id,
)

log = logging.getLogger("infra.sut")


def svc_of(request: Request) -> Services:
    return request.app.state.svc


# ------------------------------------------------------------------------------------------- API
async def issue_token(request: Request) -> Response:
    """API-1 ``POST /api/v1/queues/tokens/{targetId}``: 201 new token, 200 the same token again."""
    user = user_id(request)
    svc = svc_of(request)
    if svc.settings.token_delay_ms > 0:
        await asyncio.sleep(svc.settings.token_delay_ms / 1000)
    status, body = await queue.issue(svc, path_int(request, "targetId"), user)
    return json_response(body, status)


async def enter(request: Request) -> Response:
    """API-2 ``POST /api/v1/queues/enter``: Queue-Token header, or body ``{targetId, token}`` (the only way in
    foreign mode, as in the original service's EnterQueueRequest)."""
    svc = svc_of(request)
    if svc.settings.foreign:
        body = await json_body(request, required=False)
        if not isinstance(body.get("token"), str) or not body.get("token") or body.get("targetId") is None:
            raise ApiError(400, "VALIDATION_FAILED", "body {token, targetId} is required")
        return json_response(await queue.status_of(svc, body["token"]))
    token = request.headers.get("queue-token")
    if not token:
        body = await json_body(request, required=False)
        token = body.get("token") if isinstance(body.get("token"), str) else None
    if not token:
        raise ApiError(401, "QUEUE_TOKEN_REQUIRED", "Queue-Token header (or body {targetId, token}) is required")
    return json_response(await queue.status_of(svc_of(request), token))


async def reserve(request: Request) -> Response:
    """API-3 ``POST /api/v1/reservations/{showId}`` body ``{"seatIds": [...]}``."""
    user = user_id(request)
    key = idempotency_key(request)
    show_id = path_int(request, "showId")
    body = await json_body(request)
    svc = svc_of(request)
    status, answer = await reservations.reserve(
        svc,
        user=user,
        show_id=show_id,
        body=body,
        key=key,
        token=request.headers.get("queue-token"),
        path=request.url.path,
    )
    if svc.settings.foreign and status == 200:  # the original's createReservation answers 201 Created
        status = 201
    return json_response(answer, status)


async def get_reservation(request: Request) -> Response:
    return json_response(
        await reservations.get_reservation(svc_of(request), user_id(request), request.path_params["reservationId"])
    )


async def pay(request: Request) -> Response:
    """API-4 ``POST /api/v1/payments/`` body ``{"reservationId", "amount"}``."""
    user = user_id(request)
    key = idempotency_key(request)
    body = await json_body(request)
    status, answer = await payments.pay(svc_of(request), user=user, body=body, key=key, path="/api/v1/payments/")
    return json_response(answer, status)


async def get_payment(request: Request) -> Response:
    svc = svc_of(request)
    body = await payments.get_payment(svc, user_id(request), path_int(request, "paymentId"))
    if svc.settings.foreign and body.get("status") == "COMPLETED":  # the original's PaymentStatus
        body = {**body, "status": "SUCCEEDED"}
    return json_response(body)


async def list_concerts(request: Request) -> Response:
    """API-5 ``GET /api/v1/concerts/``."""
    return Response(await concerts.concert_list(svc_of(request)), media_type="application/json")


async def charge_points(request: Request) -> Response:
    """API-6 ``POST /api/v1/users/me/points/charges`` body ``{"amount"}``."""
    user = user_id(request)
    body = await json_body(request)
    svc = svc_of(request)
    if svc.settings.foreign:  # the original's PointRequest: requestId, userId, amount, useType
        missing = [k for k in ("requestId", "userId", "amount", "useType") if body.get(k) in (None, "")]
        if missing or body.get("useType") != "CHARGE":
            raise ApiError(
                400,
                "VALIDATION_FAILED",
                f"PointRequest needs requestId, userId, amount and useType "
                f"CHARGE (missing: {', '.join(missing) or 'useType CHARGE'})",
            )
    return json_response(await points.charge(svc, user, positive_int(body, "amount", points.MAX_CHARGE)))


async def my_points(request: Request) -> Response:
    return json_response(await points.balance_of(svc_of(request), user_id(request)))


# ------------------------------------------------------------------------------------------- ops
async def health(request: Request) -> Response:
    svc = svc_of(request)
    try:
        async with svc.db.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        await svc.redis.ping()
    except Exception as e:  # noqa: BLE001 - health reports any failure
        return json_response({"status": "down", "error": str(e)[:200]}, 503)
    s = svc.settings
    return json_response(
        {
            "status": "ok",
            "db": svc.db.dialect,
            "positionStrategy": s.position_strategy,
            "faults": sorted(s.fault_set),
            "workers": s.workers,
            "bus": "kafka" if s.kafka_bootstrap else "redis-streams",
        }
    )


async def metrics_endpoint(request: Request) -> Response:
    svc = svc_of(request)
    shared: list[tuple[str, str, dict[str, str], float]] = []
    with contextlib.suppress(Exception):
        info = await svc.redis.info("memory")
        shared.append(("sut_redis_used_memory_bytes", "Redis used_memory.", {}, float(info["used_memory"])))
    for topic, group in GROUPS.items():
        with contextlib.suppress(Exception):
            n, age = await svc.bus.lag(topic, group)
            labels = {"group": group, "topic": topic}
            shared.append(("sut_bus_consumer_lag_messages", "Messages not yet acknowledged by the group.", labels, n))
            shared.append(("sut_bus_consumer_lag_seconds", "Age of the oldest unacknowledged message.", labels, age))
    with contextlib.suppress(Exception):
        pending, age, failed = await outbox.outbox_backlog(svc)
        shared.append(("sut_outbox_pending", "PENDING outbox rows.", {}, pending))
        shared.append(("sut_outbox_oldest_age_seconds", "Age of the oldest PENDING outbox row.", {}, age))
        shared.append(("sut_outbox_failed", "Outbox rows that exhausted their retries.", {}, failed))
    with contextlib.suppress(Exception):
        for target, active, waiting in await queue.queue_sizes(svc):
            shared.append(("sut_queue_active", "ENTERED tokens per target.", {"target": str(target)}, active))
            shared.append(("sut_queue_waiting", "WAITING tokens per target.", {"target": str(target)}, waiting))
    size, in_use, waiting = svc.db.pool_stats()
    metrics.refresh_process_gauges(size, in_use, waiting)
    text = metrics.render(shared)
    if svc.settings.foreign:
        text = metrics.as_micrometer(text)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def require_admin(request: Request) -> None:
    if request.headers.get("x-admin-token") != svc_of(request).settings.admin_token:
        raise ApiError(401, "ADMIN_TOKEN_REQUIRED", "X-Admin-Token missing or wrong")


async def admin_seed(request: Request) -> Response:
    require_admin(request)
    body = await json_body(request, required=False)
    s = svc_of(request).settings
    kw = {
        "concert_id": int(body.get("concertId", 1)),
        "show_id": int(body.get("showId", 101)),
        "seats": int(body.get("seats", s.seed_seats)),
        "seat_price": int(body.get("seatPrice", s.seed_seat_price)),
        "users": int(body.get("users", s.seed_users)),
        "user_start": int(body.get("userStart", 1)),
        "balance": int(body.get("balance", s.seed_balance)),
        "reset_seats": bool(body.get("resetSeats", False)),
    }
    if "title" in body:
        kw["title"] = str(body["title"])
    out = await admin.seed(svc_of(request).db, **kw)
    await svc_of(request).redis.delete(svc_of(request).key("cache", "concerts"))
    return json_response(out)


async def admin_cleanup(request: Request) -> Response:
    require_admin(request)
    body = await json_body(request)
    try:
        since = dt.datetime.fromisoformat(str(body["since"]).replace("Z", "+00:00"))
    except (KeyError, ValueError) as e:
        raise ApiError(400, "BAD_REQUEST", "since (ISO 8601 timestamp) is required") from e
    if since.tzinfo is not None:
        since = since.astimezone(dt.UTC).replace(tzinfo=None)
    svc = svc_of(request)
    counts = await admin.cleanup(svc.db, since)
    counts["redis_keys"] = await _clear_volatile(svc)
    return json_response({"since": since.isoformat(), "deleted": counts})


async def admin_reset(request: Request) -> Response:
    """Everything back to the start state: rows wiped, Redis keys cleared, the default seed applied."""
    require_admin(request)
    svc = svc_of(request)
    await admin.wipe(svc.db)
    await admin.clear_redis(svc.redis, svc.settings.redis_prefix)
    await svc.bus.reset()
    for topic, group in GROUPS.items():
        await svc.bus.ensure_group(topic, group)
    s = svc.settings
    out = (
        await admin.seed(
            svc.db, seats=s.seed_seats, seat_price=s.seed_seat_price, users=s.seed_users, balance=s.seed_balance
        )
        if s.seed
        else {}
    )
    return json_response({"reset": True, "seed": out})


async def admin_settings(request: Request) -> Response:
    require_admin(request)
    values = {k: v for k, v in vars(svc_of(request).settings).items() if k != "admin_token"}
    return json_response(values)


async def _clear_volatile(svc: Services) -> int:
    n = 0
    for part in ("q:", "qt:", "qu:", "idem:", "cache:", "lock:"):
        n += await admin.clear_redis(svc.redis, svc.settings.redis_prefix + part)
    await queue.sync_sequence(svc)
    return n


ROUTES = [
    Route("/api/v1/queues/tokens/{targetId}", issue_token, methods=["POST"]),
    Route("/api/v1/queues/enter", enter, methods=["POST"]),
    Route("/api/v1/reservations/{showId}", reserve, methods=["POST"]),
    Route("/api/v1/reservations/by-id/{reservationId}", get_reservation, methods=["GET"]),
    Route("/api/v1/payments/", pay, methods=["POST"]),
    Route("/api/v1/payments", pay, methods=["POST"]),
    Route("/api/v1/payments/{paymentId}", get_payment, methods=["GET"]),
    Route("/api/v1/concerts/", list_concerts, methods=["GET"]),
    Route("/api/v1/concerts", list_concerts, methods=["GET"]),
    Route("/api/v1/users/me/points/charges", charge_points, methods=["POST"]),
    Route("/api/v1/users/me/points", my_points, methods=["GET"]),
    Route("/api/v1/users/me/points/", my_points, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
#: The reference service's test-data API (soundcheck's fast path); absent in foreign mode, as in a real service.
ADMIN_ROUTES = [
    Route("/admin/seed", admin_seed, methods=["POST"]),
    Route("/admin/cleanup", admin_cleanup, methods=["POST"]),
    Route("/admin/reset", admin_reset, methods=["POST"]),
    Route("/admin/settings", admin_settings, methods=["GET"]),
]


# ------------------------------------------------------------------------------- middleware, errors
class Instrument:
    """Pure ASGI middleware: latency histogram by route template and status; the ``leak`` fault."""

    def __init__(self, app, svc_getter: Callable[[], Services | None]):
        self.app, self.svc_getter = app, svc_getter
        self.templates: dict[tuple[str, str], str] = {}

    def route_of(self, scope) -> str:
        key = (scope["method"], scope["path"])
        found = self.templates.get(key)
        if found is None:
            found = "unmatched"
            for r in ROUTES:
                match, _ = r.matches(scope)
                if match != Match.NONE:
                    found = r.path
                    break
            if len(self.templates) < 5000 or found == "unmatched":
                self.templates[key] = found
        return found

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics.REQUEST_LATENCY.labels(scope["method"], self.route_of(scope), str(status[0])).observe(
                time.perf_counter() - start
            )
            svc = self.svc_getter()
            if svc is not None and svc.fault("leak"):
                svc.leak.append(b"\x01" * svc.settings.leak_bytes)  # touched pages: resident, unlike calloc's


async def on_api_error(request: Request, exc: Exception) -> Response:
    return error_answer(exc)


async def on_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_answer(exc)


# ------------------------------------------------------------------------------- background loops
async def _every(seconds: float, fn: Callable[[], Awaitable[object]], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", name)


async def _leader_pass(svc: Services, name: str, lease_s: float, fn) -> None:
    """Run ``fn`` unless another process holds this loop's short lease (one sweeper per instance)."""
    if await svc.redis.set(svc.key("leader", name), "1", nx=True, px=int(lease_s * 1000)):
        await fn()


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app (uvicorn factory). Settings come from ``SUT_*`` when not given."""
    settings = settings or Settings.from_env()
    holder: dict[str, Services] = {}
    outermost: list[Any] = []  # the ASGI app uvicorn serves (Instrument over the hot paths over Starlette)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        logging.basicConfig(level=logging.WARNING)
        metrics.install_gc_hook()
        db = Database(settings)
        redis = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=512, timeout=20, decode_responses=True
            )
        )
        svc = Services(settings=settings, db=db, redis=redis, bus=make_bus(settings, redis))
        app.state.svc = holder["svc"] = svc
        tasks: list[asyncio.Task] = []
        try:
            await db.create_schema()
            await queue.sync_sequence(svc)
            tasks += await start_consumers(svc)
        except BaseException:
            await svc.bus.close()
            await redis.aclose()
            await db.dispose()
            raise
        s = settings
        metrics.refresh_process_gauges(*db.pool_stats())  # this worker counts in /metrics from its first moment
        if db.is_sqlite and s.sqlite_group_commit:
            svc.token_writer = queue.TokenWriter(svc)
            tasks.append(asyncio.create_task(svc.token_writer.run(), name="token-writer"))
        tasks += [
            asyncio.create_task(outbox.run_publisher(svc), name="outbox"),
            asyncio.create_task(
                _every(
                    s.hold_sweep_seconds,
                    lambda: _leader_pass(
                        svc, "holds", s.hold_sweep_seconds * 0.9, lambda: reservations.sweep_holds(svc)
                    ),
                    "holds",
                ),
                name="hold-sweeper",
            ),
            asyncio.create_task(
                _every(
                    s.queue_timer_seconds,
                    lambda: _leader_pass(svc, "queue", s.queue_timer_seconds * 0.9, lambda: queue.sweep(svc)),
                    "queue",
                ),
                name="queue-sweeper",
            ),
            asyncio.create_task(
                _every(s.metrics_interval_seconds, lambda: _refresh(svc), "metrics"), name="process-metrics"
            ),
        ]
        if s.concert_cache:
            tasks.append(asyncio.create_task(concerts.warm(svc), name="concert-cache-warm"))
        if s.gc_freeze:  # everything above lives for the whole run
            metrics.freeze_startup_heap()
        listener = None
        if s.instance_port_dir:  # the sizing stage's per-request balancing (infra/sut/instance_port.py)
            listener = InstanceListener(outermost[0], s.host, s.instance_port_dir, s.http_keep_alive_seconds)
            await listener.start()
        try:
            yield
        finally:
            if listener is not None:
                await listener.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await svc.bus.close()
            await redis.aclose()
            await db.dispose()

    app = Starlette(
        routes=ROUTES + ([] if settings.foreign else ADMIN_ROUTES),
        lifespan=lifespan,
        exception_handlers={ApiError: on_api_error, PoolTimeout: on_api_error, Exception: on_error},
    )
    svc_getter = lambda: holder.get("svc")  # noqa: E731
    inner = HotPaths(app, svc_getter) if settings.hot_paths else app
    outermost.append(Instrument(inner, svc_getter))
    return outermost[0]


async def _refresh(svc: Services) -> None:
    metrics.refresh_process_gauges(*svc.db.pool_stats())
