"""The PostgreSQL engine (psycopg 3): several gateway replicas on one database server.

Each database thread keeps its own connection (``store.pool_size`` threads per replica),
opened on first use and again after the server went away. Transactions run at
SERIALIZABLE: code written for SQLite's one-writer-at-a-time stays correct when replicas
run it at once, because PostgreSQL aborts whichever transaction would break that illusion
(SQLSTATE 40001/40P01) and ``call`` runs it again from the start. A queue's claim runs at
READ COMMITTED with ``FOR UPDATE SKIP LOCKED`` instead, so replicas claiming jobs at once
take different rows rather than aborting each other.

When the server cannot be reached (restarting, failing over), a transaction that has not
reached COMMIT is tried again for ``store.unavailable_s``, then DatabaseUnavailable: the
HTTP answer is 503 with Retry-After, a job runs later. A connection lost *during* COMMIT
leaves the outcome unknown, so that one is never re-run: every caller is idempotent
(a device re-sends its chunk, a job is taken over when its lease runs out).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import psycopg
from psycopg import IsolationLevel, errors
from psycopg.adapt import Loader

from gateway.store.connection import AfterCommit, Cursor, Params
from gateway.store.database import Database, Isolation
from gateway.store.dialect import POSTGRESQL, Dialect, Engine, postgres_ddl, postgres_query
from gateway.store.errors import DatabaseDamaged, DatabaseUnavailable, IntegrityError, StoreError
from gateway.store.location import PostgresLocation

logger = logging.getLogger(__name__)
T = TypeVar("T")
APPLICATION_NAME = "room-gateway"
SCHEMA_LOCK = 0x726F6F6D  # pg_advisory_xact_lock key while migrating ("room")
MAX_RACE_ATTEMPTS = 30
_ISOLATION = {
    "serializable": IsolationLevel.SERIALIZABLE,
    "read_committed": IsolationLevel.READ_COMMITTED,
}


class _Retry(Exception):
    """The transaction did not commit and may be run again: why, for the log."""

    def __init__(self, reason: str, lost_race: bool) -> None:
        super().__init__(reason)
        self.lost_race = lost_race


class Row(Sequence[Any]):
    """A result row like sqlite3.Row: by position, by column name, ``keys()``, ``dict()``."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: int | str) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"Row({', '.join(self._index)})"


def _rows(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], Row]:
    description = cursor.description or []
    index = {column.name: position for position, column in enumerate(description)}
    return lambda values: Row(index, values)


class _WholeNumbers(Loader):
    """numeric (what SUM() of a BIGINT gives) as int when whole, else float: the types
    SQLite returns, so callers see the same values on both engines."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            return float(text)


class PostgresConnection(AfterCommit):
    engine: Engine = "postgresql"
    dialect: Dialect = POSTGRESQL

    def __init__(self, raw: psycopg.Connection[Row]) -> None:
        super().__init__()
        self.raw = raw
        self.failure: BaseException | None = None

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        if self.failure is not None:
            raise StoreError("the transaction is over: an earlier statement in it failed")
        try:
            return self.raw.execute(postgres_query(sql), tuple(params))
        except psycopg.Error as exc:
            self.failure = translate(exc, self.raw)
            raise self.failure from None


class PostgresDatabase(Database):
    engine: Engine = "postgresql"
    location: PostgresLocation

    def __init__(self, location: PostgresLocation) -> None:
        self.location = location
        self._local = threading.local()
        self._open: set[psycopg.Connection[Row]] = set()
        self._open_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=location.pool_size, thread_name_prefix="postgres"
        )

    @classmethod
    def connect(cls, location: PostgresLocation) -> PostgresDatabase:
        """The store, with one connection tried now, so a wrong URL or password is an
        error at start, not at the first request."""
        db = cls(location)
        try:
            db._connection()
        except _Retry as failure:
            db.close()
            raise DatabaseUnavailable(f"{location.display}: {failure}") from None
        except BaseException:
            db.close()
            raise
        return db

    # --- transactions -------------------------------------------------------------------------

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        write: bool = True,
        isolation: Isolation = "serializable",
    ) -> T:
        deadline = time.monotonic() + self.location.unavailable_s
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._transaction(write, isolation) as conn:
                    return fn(conn, *args)
            except _Retry as retry:
                if retry.lost_race and attempt < MAX_RACE_ATTEMPTS:
                    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                    continue
                if not retry.lost_race and time.monotonic() < deadline:
                    time.sleep(min(0.2, 0.02 * 2**attempt))
                    continue
                raise DatabaseUnavailable(f"{self.display}: {retry}") from None
            except DatabaseDamaged as exc:
                self.damage = f"{self.display}: {exc}"
                raise

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[PostgresConnection]:
        try:
            with self._transaction(write, "serializable") as conn:
                yield conn
        except _Retry as retry:
            raise DatabaseUnavailable(f"{self.display}: {retry}") from None

    @contextmanager
    def _transaction(self, write: bool, isolation: Isolation) -> Iterator[PostgresConnection]:
        raw = self._connection()
        raw.isolation_level = _ISOLATION[isolation]
        raw.read_only = not write
        conn = PostgresConnection(raw)
        try:
            yield conn
            if conn.failure is not None:
                raise conn.failure
        except BaseException as exc:
            self._rollback(raw)
            if isinstance(conn.failure, _Retry):
                raise conn.failure from None
            if isinstance(exc, psycopg.Error):
                raise translate(exc, raw) from None
            raise
        started = time.thread_time()
        try:
            raw.commit()
        except psycopg.Error as exc:
            failure = translate(exc, raw)
            if isinstance(failure, _Retry) and failure.lost_race:
                self._rollback(raw)
                raise failure from None
            # The connection broke during COMMIT: committed or not, nobody knows.
            self._rollback(raw)
            raise DatabaseUnavailable(
                f"{self.display}: connection lost while committing ({type(exc).__name__})"
            ) from None
        conn.commit_cpu_s = time.thread_time() - started
        conn.run_callbacks()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._open_lock:
            connections, self._open = self._open, set()
        for raw in connections:
            raw.close()

    # --- schema -------------------------------------------------------------------------------

    def _lock_schema(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))

    def _ddl(self, statement: str) -> str:
        return postgres_ddl(statement)

    # --- connections --------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Row]:
        raw: psycopg.Connection[Row] | None = getattr(self._local, "conn", None)
        if raw is not None and not raw.closed and not raw.broken:
            return raw
        if raw is not None:
            self._forget(raw)
        location = self.location
        try:
            raw = psycopg.connect(
                location.conninfo,
                password=location.password.get_secret_value() if location.password else None,
                connect_timeout=max(1, round(location.connect_timeout_s)),
                application_name=APPLICATION_NAME,
                autocommit=False,
                row_factory=_rows,
            )
        except psycopg.OperationalError as exc:
            raise _Retry(f"cannot connect ({_reason(exc)})", lost_race=False) from None
        raw.adapters.register_loader("numeric", _WholeNumbers)
        self._local.conn = raw
        with self._open_lock:
            self._open.add(raw)
        return raw

    def _forget(self, raw: psycopg.Connection[Row]) -> None:
        with self._open_lock:
            self._open.discard(raw)
        with suppress(psycopg.Error):
            raw.close()
        self._local.conn = None

    def _rollback(self, raw: psycopg.Connection[Row]) -> None:
        if raw.broken or raw.closed:
            self._forget(raw)
            return
        try:
            raw.rollback()
        except psycopg.Error:
            self._forget(raw)


def translate(exc: psycopg.Error, raw: psycopg.Connection[Any]) -> BaseException:
    """psycopg's exception as ours (or as _Retry when running it again is safe)."""
    if isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected):
        return _Retry(f"lost a race ({exc.sqlstate})", lost_race=True)
    if raw.broken or isinstance(exc, psycopg.InterfaceError) or _server_going(exc):
        return _Retry(f"connection lost ({_reason(exc)})", lost_race=False)
    if isinstance(exc, psycopg.IntegrityError):
        return IntegrityError(_primary(exc), exc.diag.constraint_name)
    if isinstance(exc, errors.DataCorrupted | errors.IndexCorrupted):
        return DatabaseDamaged(f"the server reports damaged data ({_reason(exc)})")
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnavailable(f"the database is unavailable ({_reason(exc)})")
    return StoreError(f"database error: {_primary(exc)}")


def _server_going(exc: psycopg.Error) -> bool:
    """Shutting down, starting up, or cannot connect now (SQLSTATE class 57P, 08)."""
    state = exc.sqlstate or ""
    return state.startswith(("57P", "08"))


def _primary(exc: psycopg.Error) -> str:
    """The server's one-line message, without DETAIL (which quotes the values)."""
    return exc.diag.message_primary or type(exc).__name__


def _reason(exc: psycopg.Error) -> str:
    if exc.sqlstate:
        return f"{type(exc).__name__}, SQLSTATE {exc.sqlstate}"
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
