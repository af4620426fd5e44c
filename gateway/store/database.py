"""The gateway's durable state: one schema, migrated on open, on SQLite or PostgreSQL.

``Database.open(location)`` gives the engine the location names; both offer the same
calls. ``await db.run(fn, *args)`` runs ``fn(conn, *args)`` in one transaction on a
database thread, so the event loop never waits on the disk or the network;
``db.call(fn, *args)`` is the same from a thread that may block (the CLI).
``with db.transaction() as conn`` is one transaction without re-runs, for admin commands.

Transactions are serializable on both engines: SQLite has one writer at a time, and
PostgreSQL runs them at SERIALIZABLE, re-running ``fn`` when it loses a race. So code
written as if it were alone stays correct with several replicas (see the conventions in
``gateway/store/__init__.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.store import schema
from gateway.store.connection import Connection
from gateway.store.dialect import DIALECTS, Dialect, Engine
from gateway.store.errors import SchemaTooNew, StoreError
from gateway.store.location import Location, PostgresLocation, SqliteLocation

__all__ = ["Database", "StoreError", "latest_version", "probe_write"]

T = TypeVar("T")
Isolation = Literal["serializable", "read_committed"]
"""``read_committed`` is for a queue's claim written with ``dialect.skip_locked`` only."""

SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
)


def latest_version() -> int:
    """The schema version this code writes and understands."""
    return len(schema.MIGRATIONS)


class Database:
    """One store; ``open`` returns the engine's subclass."""

    engine: Engine
    location: Location
    _executor: ThreadPoolExecutor
    # Set when the engine found its storage damaged (at start, or a statement since).
    damage: str | None = None

    @classmethod
    def open(cls, location: Location | Path, *, migrate: bool = True) -> Database:
        """Open (SQLite: creating the file) and migrate to the latest schema; StoreError
        (phrased for a person) if that cannot be done."""
        if isinstance(location, Path):
            location = SqliteLocation(location)
        if isinstance(location, PostgresLocation):
            from gateway.store.postgres import PostgresDatabase

            db: Database = PostgresDatabase.connect(location)
        else:
            from gateway.store.sqlite import SqliteDatabase

            db = SqliteDatabase.connect(location.path)
        if migrate:
            try:
                db.migrate()
            except BaseException:
                db.close()
                raise
        return db

    @property
    def dialect(self) -> Dialect:
        return DIALECTS[self.engine]

    @property
    def display(self) -> str:
        """Where the store is, safe to log (no password)."""
        return self.location.display

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        write: bool = True,
        isolation: Isolation = "serializable",
    ) -> T:
        """Run ``fn(conn, *args)`` in one transaction on a database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: self.call(fn, *args, write=write, isolation=isolation)
        )

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        write: bool = True,
        isolation: Isolation = "serializable",
    ) -> T:
        """``run`` for a thread that may block: the transaction, re-run if it lost a race."""
        raise NotImplementedError

    def transaction(self, write: bool = True) -> AbstractContextManager[Connection]:
        """One transaction, committed at the end of the block, rolled back on an error."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def integrity_problem(self) -> str | None:
        """What is damaged in the database's storage, if the engine can tell cheaply at
        start (SQLite: quick_check); None when sound or not checked (PostgreSQL checks
        its own pages)."""
        return None

    # --- schema -----------------------------------------------------------------------------

    def schema_version(self) -> int:
        """0 for a database no gateway has migrated yet."""
        return self.call(stored_version, write=False)

    def check_schema(self) -> None:
        """SchemaTooNew if a newer gateway has migrated this database."""
        current = self.schema_version()
        if current > latest_version():
            raise SchemaTooNew(_too_new(self.display, current))

    def migrate(self) -> int:
        """Apply the migrations this database has not seen yet, each in its own
        transaction; replicas starting together take turns (PostgreSQL: an advisory lock)."""
        with self.transaction() as conn:
            self._lock_schema(conn)
            conn.execute(SCHEMA_VERSION_TABLE)
            current = current_version(conn)
        latest = latest_version()
        if current > latest:
            raise SchemaTooNew(_too_new(self.display, current))
        for version in range(current + 1, latest + 1):
            with self.transaction() as conn:
                self._lock_schema(conn)
                if current_version(conn) >= version:  # another process got here first
                    continue
                for statement in schema.MIGRATIONS[version - 1]:
                    conn.execute(self._ddl(statement))
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        return latest

    def _lock_schema(self, conn: Connection) -> None:
        """Serialise migrations between processes (SQLite: BEGIN IMMEDIATE already does)."""

    def _ddl(self, statement: str) -> str:
        return statement


def current_version(conn: Connection) -> int:
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def stored_version(conn: Connection) -> int:
    """``current_version``, or 0 when there is no schema_version table yet."""
    if conn.execute(conn.dialect.table_exists, ("schema_version",)).fetchone() is None:
        return 0
    return current_version(conn)


def serialize_on(conn: Connection, key: str) -> None:
    """Make transactions that name ``key`` take turns, until this one ends. For hot rows
    many replicas write at once (a session's chunks): run them at ``read_committed`` with
    this as their first statement, and each sees everything the one before it committed,
    rather than SERIALIZABLE aborting nearly every pair (index-page predicate locks)."""
    if conn.dialect.advisory_lock:
        conn.execute(conn.dialect.advisory_lock, (key,))


def probe_write(conn: Connection) -> int:
    """Rewrite one row, so the commit really reaches the disk (readiness check); returns
    the schema version (a newer one means another replica was upgraded first)."""
    conn.execute(
        "UPDATE schema_version SET applied_at = applied_at"
        " WHERE version = (SELECT MAX(version) FROM schema_version)"
    )
    return current_version(conn)


def _too_new(where: str, current: int) -> str:
    return (
        f"{where}: schema version {current} is newer than this gateway understands"
        f" ({latest_version()}); upgrade the gateway"
    )
