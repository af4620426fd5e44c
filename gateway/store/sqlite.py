"""The SQLite engine: one file in WAL mode, one writer connection, readers beside it.

Every write goes through one connection and one thread. The HTTP handlers and the job
worker ``await db.run(fn)``, so the event loop never waits on the disk, and write
transactions never interleave. Reads awaited with ``run(fn, write=False)`` (a device's
token check before each chunk) run on reader threads with connections of their own: WAL
lets them read the last commit while the writer is inside a transaction or waiting for its
fsync, so they never queue behind writes (on the writer's thread a token check waited for
every commit ahead of it). Other processes (the ``room-gateway jobs`` commands) open the
same file; WAL lets them read while the service writes, and ``busy_timeout`` makes writers
queue. A writer takes the write lock at BEGIN (IMMEDIATE), so it never deadlocks.

``synchronous=FULL``: in WAL mode NORMAL survives a killed process but may lose the last
commits on a power cut. We answer Blueprint's webhook 2xx only after its event is
committed, and Blueprint does not resend a 2xx'd webhook, so a lost commit would be a lost
note. FULL costs one fsync per commit (a few ms).

Group commit: the write transactions that ``run`` was given while the database thread was
busy are run together, each in a savepoint of one transaction, and committed with one
fsync. Each still succeeds or fails alone (a failing one is rolled back to its savepoint),
and each caller hears of success only after the COMMIT: under load the disk's fsyncs no
longer queue the gateway's work one by one.

A statement that fails ends the transaction, as on PostgreSQL (where the server aborts
it): later statements and the commit raise, so code tested here behaves the same there.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.store.connection import AfterCommit, Cursor, Params
from gateway.store.database import Database, Isolation
from gateway.store.dialect import SQLITE, Dialect, Engine
from gateway.store.errors import DatabaseDamaged, DatabaseUnavailable, IntegrityError, StoreError
from gateway.store.location import SqliteLocation

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000
GROUP_MAX = 64  # write transactions committed together at most
READERS = 2  # threads (each with its own connection) for reads awaited with run()
# Result codes that say "try again later" rather than "this statement is wrong".
_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                "SQLITE_READONLY", "SQLITE_PROTOCOL", "SQLITE_NOMEM")  # fmt: skip
_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
# quick_check's first lines are enough to say what is wrong (it lists every bad page).
INTEGRITY_LINES = 3
_CONSTRAINT = re.compile(r"constraint failed: (?:index '([^']+)'|([\w.]+))")


class SqliteConnection(AfterCommit):
    engine: Engine = "sqlite"
    dialect: Dialect = SQLITE

    def __init__(self, raw: sqlite3.Connection) -> None:
        super().__init__()
        self.raw = raw
        self.failure: StoreError | None = None

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        if self.failure is not None:
            raise StoreError("the transaction is over: an earlier statement in it failed")
        try:
            return self.raw.execute(sql, params)
        except sqlite3.Error as exc:
            self.failure = translate(exc)
            raise self.failure from None


class SqliteDatabase(Database):
    engine: Engine = "sqlite"

    def __init__(self, path: Path) -> None:
        self.location = SqliteLocation(path)
        self.path = path
        self._conn = _connect(path)
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._waiting: deque[_Write] = deque()  # write transactions for the next group
        self._waiting_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="sqlite-read")
        self._reader = threading.local()  # each reader thread's connection
        self._reader_conns: list[sqlite3.Connection] = []  # all of them, to close
        self._reader_conns_lock = threading.Lock()

    @classmethod
    def connect(cls, path: Path) -> SqliteDatabase:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            path.touch(mode=0o600, exist_ok=True)  # PHI: SQLite gives -wal/-shm this mode too
            return cls(path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: cannot open the database ({exc})") from None

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[SqliteConnection]:
        with self._lock, self._transaction_on(self._conn, write) as conn:
            yield conn
        conn.run_callbacks()

    @contextmanager
    def _transaction_on(
        self, raw: sqlite3.Connection, write: bool, *, pinned_read_only: bool = False
    ) -> Iterator[SqliteConnection]:
        """One transaction on ``raw`` (the caller keeps others off it), committed at the
        end of the block; its after-commit callbacks are left to the caller. A read on the
        writer's connection sets ``query_only`` for its span; a reader's connection has it
        set for good (``pinned_read_only``), which spares two statements per read."""
        toggle = not write and not pinned_read_only
        conn = SqliteConnection(raw)
        try:
            if toggle:
                raw.execute("PRAGMA query_only = 1")
            raw.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
        except sqlite3.Error as exc:
            _reset(raw, toggle)
            raise self._translated(exc) from None
        try:
            yield conn
            if conn.failure is not None:
                raise conn.failure
            raw.execute("COMMIT")
        except BaseException as exc:
            _rollback(raw)
            _reset(raw, toggle)
            if isinstance(exc, sqlite3.Error):
                raise self._translated(exc) from None
            self._note_damage(exc)  # a statement's DatabaseDamaged, raised by conn
            raise
        _reset(raw, toggle)

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        write: bool = True,
        isolation: Isolation = "serializable",
    ) -> T:
        """Run ``fn(conn, *args)`` in one transaction: a write on the database thread,
        committed together with the others waiting then (group commit); a read on a
        reader thread, beside the writes."""
        if not write:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._readers, self._read, fn, args)
        request = _Write(fn, args, Future())
        with self._waiting_lock:
            self._waiting.append(request)
        self._executor.submit(self._commit_waiting)
        return await asyncio.wrap_future(request.future)

    def _commit_waiting(self) -> None:
        """On the database thread: the waiting writes (up to GROUP_MAX), in one COMMIT."""
        with self._waiting_lock:
            taken = [self._waiting.popleft() for _ in range(min(GROUP_MAX, len(self._waiting)))]
        # A write whose caller gave up while it waited (cancelled) is not run; the others
        # can no longer be cancelled, so each gets its answer (those put back after a lost
        # group are running already).
        group = [
            request
            for request in taken
            if request.future.running() or request.future.set_running_or_notify_cancel()
        ]
        if not group:
            return  # an earlier call took them, or their callers gave up
        done: list[_Write] = []
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._fail(group, self._translated(exc))
                return
            for index, request in enumerate(group):
                outcome = self._in_savepoint(request, index)
                if outcome == "lost":  # SQLite ended the whole transaction: start again
                    self._fail(done, _group_lost())
                    with self._waiting_lock:
                        self._waiting.extendleft(reversed(group[index + 1 :]))
                    self._executor.submit(self._commit_waiting)
                    return
                if outcome == "ok":
                    done.append(request)
            started = time.thread_time()
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(self._conn)
                self._fail(done, self._translated(exc))
                return
            share = (time.thread_time() - started) / max(1, len(done))
        for request in done:
            try:
                if request.conn is not None:
                    request.conn.commit_cpu_s = share
                    request.conn.run_callbacks()
            except BaseException as exc:
                request.future.set_exception(exc)
            else:
                request.future.set_result(request.result)

    def _in_savepoint(self, request: _Write, index: int) -> Literal["ok", "failed", "lost"]:
        """Run one write in its savepoint: "ok" (its result kept for the commit), "failed"
        (rolled back to the savepoint, its caller told) or "lost" (SQLite ended the whole
        transaction)."""
        conn = request.conn = SqliteConnection(self._conn)
        try:
            self._conn.execute(f"SAVEPOINT w{index}")
            request.result = request.fn(conn, *request.args)
            if conn.failure is not None:
                raise conn.failure
            self._conn.execute(f"RELEASE w{index}")
        except BaseException as exc:
            if isinstance(exc, sqlite3.Error):
                request.future.set_exception(self._translated(exc))
            else:
                self._note_damage(exc)  # a statement's DatabaseDamaged, raised by conn
                request.future.set_exception(exc)
            if not self._conn.in_transaction:
                return "lost"
            try:
                self._conn.execute(f"ROLLBACK TO w{index}")
                self._conn.execute(f"RELEASE w{index}")
            except sqlite3.Error:
                _rollback(self._conn)
                return "lost"
            return "failed"
        return "ok"

    def _translated(self, exc: sqlite3.Error) -> StoreError:
        """sqlite3's exception as ours, noting damage for /readyz."""
        error = translate(exc)
        self._note_damage(error)
        return error

    def _note_damage(self, error: BaseException) -> None:
        if isinstance(error, DatabaseDamaged):
            self.damage = str(error)

    def _read(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """On a reader thread: ``fn(conn, *args)`` in a read-only transaction on that
        thread's own connection, which sees the last commit."""
        raw = self._reader_connection()
        with self._transaction_on(raw, write=False, pinned_read_only=True) as conn:
            result = fn(conn, *args)
        conn.run_callbacks()
        return result

    def _reader_connection(self) -> sqlite3.Connection:
        """This reader thread's connection, opened on its first read."""
        raw: sqlite3.Connection | None = getattr(self._reader, "conn", None)
        if raw is None:
            try:
                raw = _connect(self.path)
                raw.execute("PRAGMA query_only = 1")  # only ever reads: set once
            except sqlite3.Error as exc:
                raise self._translated(exc) from None
            with self._reader_conns_lock:
                self._reader_conns.append(raw)
            self._reader.conn = raw
        return raw

    @staticmethod
    def _fail(requests: list[_Write], error: BaseException) -> None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error)

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        write: bool = True,
        isolation: Isolation = "serializable",
    ) -> T:
        with self.transaction(write) as conn:
            return fn(conn, *args)

    def integrity_problem(self) -> str | None:
        """``PRAGMA quick_check`` (every page read, indexes not compared with tables; a
        few seconds per GB): None if the file is sound, else its first findings. Also
        remembered as ``damage`` for /readyz."""
        try:
            with self._lock:
                rows = self._conn.execute("PRAGMA quick_check").fetchmany(INTEGRITY_LINES + 1)
        except sqlite3.Error as exc:
            found = str(translate(exc))
        else:
            lines = [str(row[0]) for row in rows]
            if lines == ["ok"]:
                return None
            found = "; ".join(lines[:INTEGRITY_LINES]) + ("; ..." if len(lines) > 3 else "")
        self.damage = f"{self.path}: quick_check: {found[:400]}"
        return self.damage

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self._executor.shutdown(wait=True)
        with self._reader_conns_lock:
            for raw in self._reader_conns:
                raw.close()
            self._reader_conns.clear()
        with self._lock:
            self._conn.close()


class _Write:
    """A write transaction waiting for the next group commit."""

    __slots__ = ("args", "conn", "fn", "future", "result")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], future: Future[Any]) -> None:
        self.fn, self.args, self.future = fn, args, future
        self.conn: SqliteConnection | None = None
        self.result: Any = None


def _rollback(raw: sqlite3.Connection) -> None:
    if raw.in_transaction:
        with suppress(sqlite3.Error):  # nothing more to undo: SQLite rolled back already
            raw.execute("ROLLBACK")


def _reset(raw: sqlite3.Connection, toggled: bool) -> None:
    """Undo a read's ``query_only`` on the writer's connection."""
    if toggled:
        with suppress(sqlite3.Error):
            raw.execute("PRAGMA query_only = 0")


def _group_lost() -> DatabaseUnavailable:
    """For the writes already run in a group whose transaction SQLite ended (one instance
    each: an exception raised in several tasks would share its traceback)."""
    return DatabaseUnavailable("the database ended the transaction; try again")


def translate(exc: sqlite3.Error) -> StoreError:
    """sqlite3's exception as ours: a constraint, a passing problem, or a fault."""
    message = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        match = _CONSTRAINT.search(message)
        constraint = (match.group(1) or match.group(2)) if match else None
        return IntegrityError(message, constraint)
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(_DAMAGED):
        return DatabaseDamaged(f"the database file is damaged ({name})")
    if name.startswith(_UNAVAILABLE) or "database is locked" in message:
        return DatabaseUnavailable(f"the database is unavailable ({name or message})")
    return StoreError(f"database error: {message}")


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
