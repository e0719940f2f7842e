"""The service's tables, named as the plan's SQL checks expect them.

``reservation`` holds one row per reserved seat; the rows of one reservation share its ``id`` (a string,
not the primary key, which is ``row_id``). So ``SELECT COUNT(*) FROM reservation WHERE show_id=101 AND
seat_id=1`` counts the reservations that ever took seat 1, and ``SELECT status FROM reservation WHERE id = ?``
returns the reservation's status (once per seat, every row the same). Every table has ``created_at`` so the
plan's §6.2 cleanup can delete the rows a test created.
"""

from __future__ import annotations

import datetime as dt
import os

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import Table as _Table
from sqlalchemy.dialects import mysql

from soundcheck.plan import TEST_DATA_TABLES as PLAN_TEST_DATA_TABLES
from soundcheck.schema_map import load_schema_map


def utcnow() -> dt.datetime:
    """Naive UTC, the one clock every table uses (portable across SQLite, MySQL, PostgreSQL)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


#: Foreign mode (SUT_FOREIGN=1, read once at import: every worker process gets the settings as SUT_* variables):
#: the tables and columns under the original service's names, from the schema map a profile names for it
#: (deployments/schema_maps/original.yaml: `payments.reservaion_id` is its own spelling). The code keeps the
#: plan's names as column keys, so only the SQL the database sees changes.
FOREIGN_NAMES: dict[str, tuple[str, dict[str, str]]] = {
    plan: (t.table, dict(t.columns)) for plan, t in load_schema_map("original").tables.items()
}
FOREIGN = os.environ.get("SUT_FOREIGN", "0").lower() in ("1", "true", "yes")


def N(table: str) -> str:  # noqa: N802 - reads as a name
    """The database name of the plan's table `table` (renamed in foreign mode)."""
    return FOREIGN_NAMES.get(table, (table, {}))[0] if FOREIGN else table


def Table(name: str, meta: MetaData, *items):  # noqa: N802 - stands in for sqlalchemy.Table
    """sqlalchemy.Table under the foreign names when FOREIGN; columns keep the plan's names as keys."""
    if not FOREIGN or name not in FOREIGN_NAMES:
        return _Table(name, meta, *items)
    new, cols = FOREIGN_NAMES[name]
    for c in items:
        if isinstance(c, Column) and c.name in cols:
            c.key, c.name = c.name, cols[c.name]
    return _Table(new, meta, *items)


metadata = MetaData()
ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY
# Microseconds everywhere: MySQL's plain DATETIME keeps whole seconds, which would make the plan's
# "ORDER BY created_at" ambiguous and the §6.2 cleanup ("created after the start") coarse.
TS = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _created():
    return Column("created_at", TS, nullable=False, default=utcnow, index=True)


concert = Table(
    "concert",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=False),
    Column("title", String(200), nullable=False),
    _created(),
)

concert_show = Table(  # "show" is a reserved word in MySQL
    "concert_show",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=False),
    Column("concert_id", ID, ForeignKey(f"{N('concert')}.id"), nullable=False),
    Column("starts_at", TS, nullable=False),
    _created(),
)

seat = Table(
    "seat",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=False),
    Column("show_id", ID, ForeignKey(f"{N('concert_show')}.id"), nullable=False),
    Column("seat_no", Integer, nullable=False),
    Column("price", Integer, nullable=False),
    Column("status", String(16), nullable=False, default="AVAILABLE"),  # AVAILABLE | HELD | SOLD
    Column("reservation_id", String(36)),
    Column("held_until", TS),
    Column("updated_at", TS, nullable=False, default=utcnow),
    _created(),
    UniqueConstraint("show_id", "seat_no", name="uq_seat_show_no"),
    Index("ix_seat_show_status", "show_id", "status"),
)

reservation = Table(
    "reservation",
    metadata,
    Column("row_id", ID, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, index=True),
    Column("show_id", ID, nullable=False),
    Column("seat_id", ID, nullable=False),
    Column("user_id", ID, nullable=False),
    Column("queue_token_id", ID),
    Column("status", String(20), nullable=False),  # HELD | PAYMENT_PENDING | CONFIRMED | CANCELLED | EXPIRED
    Column("amount", Integer, nullable=False),
    Column("idempotency_key", String(128)),
    Column("expires_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False, default=utcnow),
    _created(),
    UniqueConstraint("id", "seat_id", name="uq_reservation_seat"),
    Index("ix_reservation_show_seat", "show_id", "seat_id"),
    Index("ix_reservation_status_expiry", "status", "expires_at"),
)

point_wallet = Table(
    "point_wallet",
    metadata,
    Column("user_id", ID, primary_key=True, autoincrement=False),
    Column("balance", BigInteger, nullable=False),
    Column("updated_at", TS, nullable=False, default=utcnow),
    _created(),
)

point_history = Table(
    "point_history",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("user_id", ID, nullable=False, index=True),
    Column("delta", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),  # CHARGE | USE
    Column("payment_id", ID),
    _created(),
)

payment = Table(
    "payment",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("reservation_id", String(36), nullable=False, unique=True),
    Column("user_id", ID, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # PENDING | PROCESSING | COMPLETED | FAILED
    Column("failure_reason", String(64)),
    Column("idempotency_key", String(128)),
    Column("updated_at", TS, nullable=False, default=utcnow),
    Column("completed_at", TS),
    _created(),
)

payment_outbox = Table(
    "payment_outbox",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("aggregate_id", ID, nullable=False, index=True),  # the payment id
    Column("aggregate_type", String(32), nullable=False, default="PAYMENT"),
    Column("event_type", String(48), nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),  # PENDING | PUBLISHED | FAILED
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", TS, nullable=False, default=utcnow),
    Column("last_error", String(255)),
    Column("published_at", TS),
    _created(),
    Index("ix_outbox_pending", "status", "next_attempt_at", "id"),
)

queue_token = Table(
    "queue_token",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("target_id", ID, nullable=False),
    Column("user_id", ID, nullable=False),
    Column("token", String(36), nullable=False, unique=True),
    Column("status", String(16), nullable=False),  # WAITING | ENTERED | DONE | EXPIRED
    Column("expires_at", TS, nullable=False),
    Column("entered_at", TS),
    Column("updated_at", TS, nullable=False, default=utcnow),
    _created(),
    UniqueConstraint("target_id", "user_id", name="uq_queue_target_user"),
    Index("ix_queue_wait", "target_id", "status", "expires_at", "id"),
)

consumed_message = Table(  # the inbox that makes every consumer idempotent
    "consumed_message",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("consumer_group", String(48), nullable=False),
    Column("message_key", String(96), nullable=False),
    Column("result", Text),
    _created(),
    UniqueConstraint("consumer_group", "message_key", name="uq_consumed"),
)

# Rows a test creates, deleted by the §6.2 cleanup (children first): the plan catalogue's list.
TEST_DATA_TABLES = tuple(metadata.tables[N(name)] for name in PLAN_TEST_DATA_TABLES)
