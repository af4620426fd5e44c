"""The gateway's durable state: one SQLite file in WAL mode, migrated on open.

Every access goes through one connection and one thread. The HTTP handlers and the job
worker ``await db.run(fn)``, so the event loop never waits on the disk, and transactions
never interleave. Other processes (the ``room-gateway jobs`` commands) open the same file;
WAL lets them read while the service writes, and ``busy_timeout`` makes writers queue.

``synchronous=FULL``: in WAL mode NORMAL survives a killed process but may lose the last
commits on a power cut. We answer Blueprint's webhook 2xx only after its event is
committed, and Blueprint does not resend a 2xx'd webhook, so a lost commit would be a lost
note. FULL costs one fsync per commit (a few ms), well inside the webhook budget.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from gateway.store.schema import MIGRATIONS

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """The database cannot be used (newer schema, unreadable file); phrased for a person."""


class Database:
    """The SQLite file, its migrations, and short transactions on a single thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = _connect(path)
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    @classmethod
    def open(cls, path: Path) -> Database:
        """Open (creating the file and its directory if needed) and migrate to the latest."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            path.touch(mode=0o600, exist_ok=True)  # PHI: SQLite gives -wal/-shm this mode too
            db = cls(path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: cannot open the database ({exc})") from None
        try:
            db.migrate()
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; a writer takes the write lock at BEGIN so it never deadlocks."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    async def run(self, fn: Callable[..., T], *args: Any, write: bool = True) -> T:
        """Run ``fn(conn, *args)`` in one transaction on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_sync, fn, args, write)

    def _run_sync(self, fn: Callable[..., T], args: tuple[Any, ...], write: bool) -> T:
        with self.transaction(write) as conn:
            return fn(conn, *args)

    def schema_version(self) -> int:
        with self.transaction(write=False) as conn:
            return _current_version(conn)

    def migrate(self) -> int:
        """Apply the migrations this file has not seen yet, each in its own transaction."""
        with self.transaction() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            current = _current_version(conn)
        if current > len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: schema version {current} is newer than this gateway "
                f"understands ({len(MIGRATIONS)}); upgrade the gateway"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            with self.transaction() as conn:
                if _current_version(conn) >= version:  # another process got here first
                    continue
                for statement in MIGRATIONS[version - 1]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        return len(MIGRATIONS)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            self._conn.close()


def probe_write(conn: sqlite3.Connection) -> None:
    """Rewrite one row, so the commit really reaches the disk (readiness check)."""
    conn.execute(
        "UPDATE schema_version SET applied_at = applied_at"
        " WHERE version = (SELECT MAX(version) FROM schema_version)"
    )


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are exactly the BEGIN/COMMIT issued above.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL unavailable")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0
