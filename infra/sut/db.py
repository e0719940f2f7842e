"""The async engine with a hard-limited pool (HikariCP-like) that reports its use to /metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from infra.sut import metrics
from infra.sut.settings import Settings
from infra.sut.tables import metadata


class PoolTimeout(Exception):
    """No pooled connection within db_pool_timeout: the pool is exhausted (answered 503)."""


class Database:
    """The engine plus a count of requests waiting for a connection (SQLAlchemy does not expose one)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = settings.effective_db_url
        self.dialect = self.url.split(":", 1)[0].split("+", 1)[0]
        kw: dict = dict(
            poolclass=AsyncAdaptedQueuePool,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout,
            pool_pre_ping=False,
        )
        if self.dialect == "sqlite":
            kw["connect_args"] = {"timeout": 30}
        else:
            kw["pool_recycle"] = 1800
        self.engine: AsyncEngine = create_async_engine(self.url, **kw)
        self.waiting = 0
        # SQLite has one writer at a time; letting five pooled connections race for its lock makes them
        # sleep in SQLite's busy handler (1, 2, 5 … 100 ms steps). Queue writers here instead.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def pool_stats(self) -> tuple[int, int, int]:
        pool = self.engine.pool
        return self.settings.db_pool_size, pool.checkedout(), self.waiting

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection (no transaction begun); counts waits and timeouts."""
        self.waiting += 1
        try:
            conn = await self.engine.connect()
        except sa_exc.TimeoutError as e:
            metrics.POOL_TIMEOUTS.inc()
            raise PoolTimeout(str(e)) from e
        finally:
            self.waiting -= 1
        try:
            yield conn
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def transaction(self, conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
        """A write transaction on ``conn`` (on SQLite, one writer per process at a time)."""
        if self._write_lock is None:
            async with conn.begin():
                yield conn
            return
        async with self._write_lock, conn.begin():
            yield conn

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection inside one transaction, committed on success, rolled back on error."""
        async with self.connect() as conn, self.transaction(conn):
            yield conn

    async def create_schema(self, drop: bool = False) -> None:
        async with self.engine.begin() as conn:
            if drop:
                await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)

    async def dispose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
