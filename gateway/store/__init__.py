"""The gateway's durable state, on SQLite (one host: the default) or PostgreSQL (replicas).

One schema (``schema.py``, ordered migrations) and one set of queries serve both engines;
every test that touches the store runs on both. Write store code by these rules and it is
right on both without thinking about which one runs it:

Transactions
- A store function takes ``conn: Connection`` first and runs inside one transaction:
  ``await db.run(fn, *args)`` (or ``db.call`` from a thread, ``with db.transaction()`` in
  the CLI). Pass ``write=False`` when it only reads (the engine enforces it).
- Transactions are serializable on both engines. On PostgreSQL a transaction that loses a
  race with another replica is run again from the start, so a store function does database
  work only: no HTTP, no MQTT, no files, no counters. Register what must follow the commit
  with ``conn.after_commit(callback)`` (runs on the database thread; keep it tiny, e.g.
  ``loop.call_soon_threadsafe(wake)``).
- A statement that fails ends the transaction (PostgreSQL aborts it; the SQLite engine
  does the same on purpose). Never catch a StoreError inside a transaction to carry on:
  use ``INSERT ... ON CONFLICT ... DO NOTHING`` and look at ``rowcount``, or check first.

SQL (see ``dialect.py`` for the little that is translated)
- ``?`` placeholders, standard SQL, ``INSERT ... ON CONFLICT (...) DO NOTHING / DO UPDATE
  SET x = excluded.x``, ``RETURNING`` for a new id (never ``cursor.lastrowid``),
  ``COALESCE`` (not ``ifnull``); no ``INSERT OR ...``, ``PRAGMA``, ``strftime``,
  ``julianday`` or other engine-only functions.
- A placeholder whose type nothing in the statement fixes needs a cast:
  ``CAST(? AS TEXT) IS NULL``, not ``? IS NULL``.
- Booleans are INTEGER 0/1 (pass ``int(flag)``); times are REAL Unix seconds; bytes BLOB.
- Rows read by name or position: ``row["state"]``, ``row[0]``, ``dict(row)``.
- Rows a transaction will update after reading them: nothing to add (serializable). A
  queue claimed by several replicas: ``"SELECT ..." + conn.dialect.skip_locked`` under
  ``isolation="read_committed"``, as ``jobs.queue.claim_due`` does. Many writers of one
  thing at once (a session's chunks): ``serialize_on(conn, key)`` first, under
  ``read_committed``, as the ingest receiver does.

Migrations
- Append to ``schema.MIGRATIONS``; never edit one that has landed on main. Column types:
  TEXT, INTEGER (64-bit on both), REAL (8-byte float on both), BLOB, and
  ``INTEGER PRIMARY KEY`` for an id the database assigns. Standard DDL only
  (``ALTER TABLE ... ADD COLUMN``, ``CREATE [UNIQUE] INDEX ... [WHERE ...]``).

Errors
- Catch ``IntegrityError`` (``.violates("index_name")``), ``DatabaseUnavailable`` (the HTTP
  answer is 503 with Retry-After, a job retries) or ``StoreError`` (any of them), never
  sqlite3's or psycopg's exceptions. Messages name tables and constraints, never values.
"""

from gateway.store.connection import Connection, Row
from gateway.store.database import (
    Database,
    Isolation,
    latest_version,
    probe_write,
    serialize_on,
)
from gateway.store.errors import (
    DatabaseDamaged,
    DatabaseUnavailable,
    IntegrityError,
    SchemaTooNew,
    StoreError,
)
from gateway.store.location import Location, PostgresLocation, SqliteLocation, parse_url

__all__ = [
    "Connection",
    "Database",
    "DatabaseDamaged",
    "DatabaseUnavailable",
    "IntegrityError",
    "Isolation",
    "Location",
    "PostgresLocation",
    "Row",
    "SchemaTooNew",
    "SqliteLocation",
    "StoreError",
    "latest_version",
    "parse_url",
    "probe_write",
    "serialize_on",
]
