"""The launcher: settings → Redis (embedded if none) → schema + seed → uvicorn (1..N workers).

Start-up work that must happen once per instance (reset, seed, the embedded Redis, the multiprocess
metrics folder) runs here in the parent, before any worker exists.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile

from infra.sut.settings import Settings, parse_settings


async def prepare(settings: Settings) -> dict:
    """Create the schema (dropped first with ``reset``), clear the prefix's Redis keys, seed."""
    import redis.asyncio as aioredis

    from infra.sut import admin
    from infra.sut.db import Database

    db = Database(settings)
    out: dict = {}
    try:
        await db.create_schema(drop=settings.reset)
        if settings.reset:
            r = aioredis.from_url(settings.redis_url)
            try:
                await admin.clear_redis(r, settings.redis_prefix)
                from infra.sut.context import make_bus

                bus = make_bus(settings, r)
                try:
                    await bus.reset()
                finally:
                    await bus.close()
            finally:
                await r.aclose()
        if settings.seed:
            out = await admin.seed(
                db,
                seats=settings.seed_seats,
                seat_price=settings.seed_seat_price,
                users=settings.seed_users,
                balance=settings.seed_balance,
            )
    finally:
        await db.dispose()
    return out


def serve(settings: Settings) -> None:
    """Run the service in the foreground until interrupted; cleans up what it started."""
    import uvicorn

    from infra.sut.redis_server import EmbeddedRedis

    _check_port(settings.host, settings.port)
    embedded = None
    metrics_dir = None
    try:
        if not settings.redis_url:
            embedded = EmbeddedRedis().start()
            settings.redis_url = embedded.url
        if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            metrics_dir = tempfile.mkdtemp(prefix="soundcheck-sut-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        settings.db_url = settings.effective_db_url
        seeded = asyncio.run(prepare(settings))
        os.environ.update(settings.to_env())
        print(
            f"soundcheck sut: http://{settings.host}:{settings.port} db={settings.db_url} "
            f"redis={settings.redis_url} workers={settings.workers} seed={seeded}",
            file=sys.stderr,
            flush=True,
        )
        uvicorn.run(
            "infra.sut.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            access_log=False,
            timeout_graceful_shutdown=5,
            backlog=4096,
            limit_concurrency=None,
            timeout_keep_alive=settings.http_keep_alive_seconds,
        )
    finally:
        if embedded:
            embedded.stop()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _check_port(host: str, port: int) -> None:
    """Fail fast (exit 2) when the port is taken, before anything is started."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            print(f"error: cannot listen on {host}:{port}: {e}", file=sys.stderr)
            raise SystemExit(2) from e


def main(argv: list[str] | None = None) -> None:
    try:
        settings = parse_settings(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    # the table names follow foreign mode (infra.sut.tables reads it once, at import): set it before that
    os.environ["SUT_FOREIGN"] = "1" if settings.foreign else "0"
    assert "infra.sut.tables" not in sys.modules, "infra.sut.tables imported before the settings were read"
    serve(settings)
