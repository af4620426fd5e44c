"""The SQLite store: WAL, FULL sync, private file modes, ordered migrations run once."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from gateway.store import schema
from gateway.store.database import Database, StoreError


def test_a_new_database_is_wal_full_private_and_at_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "state" / "gateway.db"
    db = Database.open(path)
    try:
        with db.transaction(write=False) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"sessions", "jobs", "webhook_events", "partner_tokens", "rooms"} <= tables
        assert db.schema_version() == len(schema.MIGRATIONS)
    finally:
        db.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_reopening_applies_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    Database.open(path).close()
    db = Database.open(path)
    with db.transaction(write=False) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version")]
    db.close()
    assert versions == list(range(1, len(schema.MIGRATIONS) + 1))


def test_new_migrations_are_applied_in_order_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.db"
    extra = (
        ("ALTER TABLE rooms ADD COLUMN label TEXT",),
        ("UPDATE rooms SET label = 'migrated'", "CREATE INDEX rooms_by_label ON rooms (label)"),
    )
    with _Open(path) as db, db.transaction() as conn:
        conn.execute("INSERT INTO rooms (id, created_at) VALUES ('room-1', 0)")
    monkeypatch.setattr("gateway.store.database.MIGRATIONS", schema.MIGRATIONS + extra)
    with _Open(path) as db:
        assert db.schema_version() == len(schema.MIGRATIONS) + 2
        with db.transaction(write=False) as conn:
            assert conn.execute("SELECT label FROM rooms").fetchone()[0] == "migrated"


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    with _Open(path) as db, db.transaction() as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Database.open(path)


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    with _Open(tmp_path / "gateway.db") as db:

        def half_done(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO rooms (id, created_at) VALUES ('room-1', 0)")
            raise RuntimeError("crash in the middle")

        with pytest.raises(RuntimeError):
            asyncio.run(db.run(half_done))
        with db.transaction(write=False) as conn:
            assert conn.execute("SELECT COUNT(*) FROM rooms").fetchone()[0] == 0


def test_an_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="cannot open the database"):
        Database.open(tmp_path / "dir.db")


class _Open:
    def __init__(self, path: Path) -> None:
        self.db = Database.open(path)

    def __enter__(self) -> Database:
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()
