"""Runs the reference service as a real server process for the SUT tests, and fires requests together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from infra.sut.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN = {"X-Admin-Token": "test-admin"}


def auth(user: int) -> dict[str, str]:
    return {"Authorization": f"Bearer test-user-{user}"}


def mariadb_url() -> str | None:
    """A fresh database on the local MariaDB when it is reachable, else None (tests skip)."""
    try:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=2)
    except Exception:  # noqa: BLE001 - unreachable for any reason: skip
        return None
    name = f"sut_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"mysql+aiomysql://root:@127.0.0.1:3306/{name}"


def postgres_url(prefix: str = "t") -> str | None:
    """A fresh database on the local PostgreSQL when it is reachable, else None (tests skip)."""
    try:
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=2, autocommit=True
        ) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    except Exception:  # noqa: BLE001 - unreachable for any reason: skip
        return None


def drop_mariadb(url: str) -> None:
    import pymysql

    name = url.rsplit("/", 1)[1]
    with contextlib.suppress(Exception):
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=2)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()


class Sut:
    """A running service: its base URL, its Redis (shared with the test), its DB URL and settings."""

    def __init__(self, base: str, redis_url: str, db_url: str, env: dict[str, str], proc: subprocess.Popen):
        self.base, self.redis_url, self.db_url, self.env, self.proc = base, redis_url, db_url, env, proc

    def sql(self, query: str, *params) -> list[tuple]:
        """Run one of the plan's SQL checks, unchanged, against the service's database."""
        from sqlalchemy import create_engine, text

        sync_url = (
            self.db_url.replace("+aiosqlite", "").replace("+aiomysql", "+pymysql").replace("+asyncpg", "+psycopg")
        )
        engine = create_engine(sync_url)
        try:
            with engine.connect() as conn:
                names = {f"p{i}": p for i, p in enumerate(params)}
                q = query
                for i in range(len(params)):
                    q = q.replace("?", f":p{i}", 1)
                return [tuple(r) for r in conn.execute(text(q), names).all()]
        finally:
            engine.dispose()


@contextlib.contextmanager
def run_sut(tmp: Path, db_url: str | None = None, kafka: str | None = None, **settings) -> Iterator[Sut]:
    """Start ``python -m infra.sut`` on a free loopback port with ``SUT_*`` settings; stop it after.
    `kafka`: a broker's bootstrap servers for the Saga's bus (Redis Streams without)."""
    redis = EmbeddedRedis().start()
    port = free_port()
    db_url = db_url or f"sqlite+aiosqlite:///{tmp / f'sut-{port}.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUT_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    values = {
        "port": port,
        "redis_url": redis.url,
        "db_url": db_url,
        "admin_token": ADMIN["X-Admin-Token"],
        "seed_users": 1500,
        "seed_seats": 300,
        **({"kafka_bootstrap": kafka} if kafka else {}),
        **settings,
    }
    for k, v in values.items():
        env["SUT_" + k.upper()] = str(v)
    log = open(tmp / f"sut-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.sut"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited: {(tmp / f'sut-{port}.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("service did not become healthy in 60 s")
            time.sleep(0.1)
        yield Sut(base, redis.url, db_url, env, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        redis.stop()


async def together(n: int, make: Callable[[int], Awaitable]) -> list:
    """Start ``n`` coroutines that all wait on one barrier, release them at once, gather the results."""
    gate = asyncio.Event()
    ready = 0

    async def one(i: int):
        nonlocal ready
        ready += 1
        await gate.wait()
        return await make(i)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    while ready < n:
        await asyncio.sleep(0.001)
    gate.set()
    return await asyncio.gather(*tasks)


def client(base: str, n: int = 256) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base, timeout=30, limits=httpx.Limits(max_connections=n, max_keepalive_connections=n)
    )


async def entered_token(c: httpx.AsyncClient, user: int, target: int | None = None) -> str:
    """An ENTERED queue token for ``user``: by default on a target of its own, so capacity never binds."""
    target = 100_000 + user if target is None else target
    r = await c.post(f"/api/v1/queues/tokens/{target}", headers=auth(user))
    assert r.status_code in (200, 201), r.text
    body = r.json()
    assert body["status"] == "ENTERED", body
    return body["token"]


def backends() -> list:
    """SQLite always; MariaDB when reachable (skipped otherwise)."""
    return ["sqlite", "mariadb"]


@contextlib.contextmanager
def sut_on(backend: str, tmp: Path, **settings) -> Iterator[Sut]:
    if backend == "sqlite":
        with run_sut(tmp, **settings) as sut:
            yield sut
        return
    url = mariadb_url()
    if url is None:
        pytest.skip("MariaDB on 127.0.0.1:3306 not reachable")
    try:
        with run_sut(tmp, db_url=url, **settings) as sut:
            yield sut
    finally:
        drop_mariadb(url)
