"""The reference service's database for one run: a SQLite file, or a fresh database on a server.

The service wants an async SQLAlchemy URL (aiosqlite / aiomysql / asyncpg); the campaign reads the
same database synchronously and read-only for the plan's SQL checks (SQLite opened with ``mode=ro``;
MariaDB/MySQL sessions ``SET SESSION TRANSACTION READ ONLY``; PostgreSQL sessions with
``default_transaction_read_only=on``). Pointed at a server, a new database named for the run is
created, so runs never see each other's rows, and dropped at teardown unless kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL

_ASYNC = {"sqlite": "aiosqlite", "mysql": "aiomysql", "postgresql": "asyncpg"}
_SYNC = {"sqlite": "pysqlite", "mysql": "pymysql", "postgresql": "psycopg"}


def _family(url: URL) -> str:
    backend = url.get_backend_name()
    if backend == "mariadb":
        return "mysql"
    if backend not in _ASYNC:
        raise ValueError(f"unsupported database {backend!r}: use sqlite, mysql/mariadb or postgresql")
    return backend


@dataclass
class RunDatabase:
    sut_url: str  # async URL the reference service uses
    readonly_url: str  # sync, read-only URL for the campaign's SQL checks
    write_url: str = ""  # sync URL with write rights (SQL fixtures, the §6.2 cleanup)
    admin_url: str | None = None  # server URL used to create/drop the run's database
    name: str | None = None  # the run's database on a server
    created: bool = False

    def drop(self) -> None:
        """Drop the run's database (server only; a SQLite file stays in the run folder)."""
        if not (self.created and self.admin_url and self.name):
            return
        url = make_url(self.admin_url)
        fam = _family(url)
        eng = create_engine(url.set(drivername=f"{fam}+{_SYNC[fam]}"), isolation_level="AUTOCOMMIT")
        try:
            with eng.connect() as c:
                if fam == "mysql":
                    c.execute(text(f"DROP DATABASE IF EXISTS `{self.name}`"))
                else:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        finally:
            eng.dispose()
        self.created = False


def sqlite_database(path: Path) -> RunDatabase:
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return RunDatabase(
        sut_url=f"sqlite+aiosqlite:///{path}",
        readonly_url=f"sqlite:///file:{path}?mode=ro&uri=true",
        write_url=f"sqlite:///{path}",
    )


def server_database(server_url: str, run_tag: str, *, fresh: bool = True) -> RunDatabase:
    """Create database ``soundcheck_<run_tag>`` on the server (or use the URL's database when not fresh)."""
    url = make_url(server_url)
    fam = _family(url)
    name = url.database
    created = False
    if fresh:
        name = "soundcheck_" + re.sub(r"[^a-z0-9_]", "_", run_tag.lower())[:40]
        admin = url.set(drivername=f"{fam}+{_SYNC[fam]}", database="postgres" if fam == "postgresql" else None)
        if fam == "postgresql" and url.database:
            admin = admin.set(database=url.database)
        eng = create_engine(admin, isolation_level="AUTOCOMMIT")
        try:
            with eng.connect() as c:
                if fam == "mysql":
                    c.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
                    c.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
                else:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    c.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            eng.dispose()
        created = True
    if not name:
        raise ValueError("the database URL names no database, and a fresh one was not asked for")
    sut = url.set(drivername=f"{fam}+{_ASYNC[fam]}", database=name)
    rw = ro = url.set(drivername=f"{fam}+{_SYNC[fam]}", database=name)
    if fam == "mysql":
        ro = ro.update_query_dict({"init_command": "SET SESSION TRANSACTION READ ONLY"})
    else:
        ro = ro.update_query_dict({"options": "-c default_transaction_read_only=on"})
    return RunDatabase(
        sut_url=sut.render_as_string(hide_password=False),
        readonly_url=ro.render_as_string(hide_password=False),
        write_url=rw.render_as_string(hide_password=False),
        admin_url=url.render_as_string(hide_password=False),
        name=name,
        created=created,
    )
