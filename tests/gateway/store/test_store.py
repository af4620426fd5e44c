"""The store on both engines: ordered migrations run once, a newer schema refused, failed
transactions leave nothing, serializable transactions re-run when replicas race, the
same rows and errors whichever engine; SQLite's file: WAL, FULL sync, private modes."""

from __future__ import annotations

import asyncio
import stat
import threading
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from gateway.store import (
    Connection,
    Database,
    DatabaseUnavailable,
    IntegrityError,
    Location,
    PostgresLocation,
    SchemaTooNew,
    StoreError,
    schema,
)
from gateway.store.dialect import postgres_ddl, postgres_query
from tests.support.postgres import PostgresServer


def test_a_new_sqlite_database_is_wal_full_private_and_at_the_latest_schema(
    tmp_path: Path,
) -> None:
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


def test_an_unusable_sqlite_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="cannot open the database"):
        Database.open(tmp_path / "dir.db")


def test_reopening_applies_nothing_twice(store_location: Location) -> None:
    Database.open(store_location).close()
    with _Open(store_location) as db, db.transaction(write=False) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, len(schema.MIGRATIONS) + 1))


def test_new_migrations_are_applied_in_order_on_open(
    store_location: Location, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = (
        ("ALTER TABLE rooms ADD COLUMN label TEXT",),
        ("UPDATE rooms SET label = 'migrated'", "CREATE INDEX rooms_by_label ON rooms (label)"),
    )
    with _Open(store_location) as db, db.transaction() as conn:
        conn.execute("INSERT INTO rooms (id, created_at) VALUES ('room-1', 0)")
    monkeypatch.setattr("gateway.store.schema.MIGRATIONS", schema.MIGRATIONS + extra)
    with _Open(store_location) as db:
        assert db.schema_version() == len(schema.MIGRATIONS)
        with db.transaction(write=False) as conn:
            assert conn.execute("SELECT label FROM rooms").fetchone()["label"] == "migrated"


def test_a_newer_database_is_refused_with_what_to_do(store_location: Location) -> None:
    with _Open(store_location) as db, db.transaction() as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(SchemaTooNew, match=r"schema version 99 is newer .* upgrade the gateway"):
        Database.open(store_location)


def test_the_portable_types_keep_64_bit_integers_and_exact_times(
    store_location: Location,
) -> None:
    """PostgreSQL's own INTEGER and REAL are 4 bytes: the dialect maps them."""
    now = 1_767_225_600.123456
    big = 2**40
    with _Open(store_location) as db:
        with db.transaction() as conn:
            conn.execute(
                "INSERT INTO ingest_sessions (session_id, device_id, claimed, state,"
                " created_at, updated_at) VALUES ('s1', 'room-1', 0, 'receiving', ?, ?)",
                (now, now),
            )
            conn.execute(
                "INSERT INTO chunks (session_id, seq, sha256, bytes, start_s, duration_s,"
                " file, received_at) VALUES ('s1', 1, 'x', ?, 0.5, 1.25, 'f', ?)",
                (big, now),
            )
        row = db.call(
            lambda c: c.execute(
                "SELECT bytes, received_at, SUM(bytes) AS total, COUNT(*) AS n FROM chunks"
                " GROUP BY bytes, received_at"
            ).fetchone(),
            write=False,
        )
    assert (row["bytes"], row["received_at"], row["total"], row["n"]) == (big, now, big, 1)
    assert type(row["total"]) is int  # SUM of a BIGINT is numeric on PostgreSQL
    assert dict(row) == {"bytes": big, "received_at": now, "total": big, "n": 1}


def test_a_new_id_comes_back_through_returning(store_location: Location) -> None:
    with _Open(store_location) as db, db.transaction() as conn:
        ids = [
            conn.execute(
                "INSERT INTO session_events (session_id, at, step) SELECT id, 0, 'x'"
                " FROM sessions WHERE 1 = 0 RETURNING id"
            ).fetchone(),
            conn.execute(
                "INSERT INTO webhook_events (digest, event_type, outcome, received_at)"
                " VALUES ('d1', 'e', 'received', 0) RETURNING id"
            ).fetchone()["id"],
            conn.execute(
                "INSERT INTO webhook_events (digest, event_type, outcome, received_at)"
                " VALUES ('d2', 'e', 'received', 0) RETURNING id"
            ).fetchone()["id"],
        ]
    assert ids[0] is None and ids[2] == ids[1] + 1


def test_placeholders_and_percent_signs_mean_the_same_on_both(store_location: Location) -> None:
    with _Open(store_location) as db:
        row = db.call(
            lambda c: c.execute(
                "SELECT ? AS a, '100%' AS b, 'why?' AS c, CAST(? AS TEXT) IS NULL AS d", ("x", None)
            ).fetchone(),
            write=False,
        )
    assert (row["a"], row["b"], row["c"], bool(row["d"])) == ("x", "100%", "why?", True)


def test_a_failed_transaction_leaves_nothing(store_location: Location) -> None:
    with _Open(store_location) as db:

        def half_done(conn: Connection) -> None:
            conn.execute("INSERT INTO rooms (id, created_at) VALUES ('room-1', 0)")
            raise RuntimeError("crash in the middle")

        with pytest.raises(RuntimeError):
            asyncio.run(db.run(half_done))
        assert db.call(_count_rooms, write=False) == 0


def test_a_constraint_is_an_integrity_error_naming_it_and_ends_the_transaction(
    store_location: Location,
) -> None:
    """Both engines: the error names the index; a statement after it is refused (on
    PostgreSQL the server aborts the transaction, the SQLite engine does the same)."""
    with _Open(store_location) as db:
        db.call(_add_room, "room-1", 1.0)
        after: list[str] = []

        def twice(conn: Connection) -> None:
            try:
                _add_room(conn, "room-1", 2.0)
            except IntegrityError as exc:
                after.append("violates" if exc.violates("rooms_pkey") or "rooms.id" in str(exc)
                             else str(exc))  # fmt: skip
            conn.execute("SELECT 1")

        with pytest.raises(StoreError, match="earlier statement in it failed"):
            db.call(twice)
        assert after == ["violates"]
        assert db.call(_count_rooms, write=False) == 1


def test_a_read_only_transaction_refuses_to_write(store_location: Location) -> None:
    with _Open(store_location) as db:
        with pytest.raises(StoreError):
            db.call(_add_room, "room-1", 0.0, write=False)
        assert db.call(_count_rooms, write=False) == 0


def test_after_commit_callbacks_run_once_and_only_after_a_commit(
    store_location: Location,
) -> None:
    ran: list[str] = []
    with _Open(store_location) as db:

        def committed(conn: Connection) -> None:
            _add_room(conn, "room-1", 0.0)
            conn.after_commit(lambda: ran.append("committed"))

        def rolled_back(conn: Connection) -> None:
            conn.after_commit(lambda: ran.append("rolled back"))
            raise RuntimeError

        db.call(committed)
        with pytest.raises(RuntimeError):
            db.call(rolled_back)
    assert ran == ["committed"]


def test_racing_replicas_stay_serializable(postgres: PostgresServer, tmp_path: Path) -> None:
    """Two connections read-then-write the same counter 50 times each: PostgreSQL aborts
    the loser of each race (SQLSTATE 40001) and the store runs it again, so no increment
    is lost, as if the transactions had run one after the other."""
    location = _postgres(postgres, tmp_path)
    with _Open(location) as first, _Open(location) as second:
        first.call(_add_room, "counter", 0.0)

        def increment(conn: Connection) -> None:
            value = conn.execute("SELECT created_at FROM rooms WHERE id = 'counter'").fetchone()
            conn.execute(
                "UPDATE rooms SET created_at = ? WHERE id = 'counter'", (value["created_at"] + 1,)
            )

        def hammer(db: Database) -> None:
            for _ in range(50):
                db.call(increment)

        threads = [threading.Thread(target=hammer, args=(db,)) for db in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = first.call(
            lambda c: c.execute("SELECT created_at FROM rooms WHERE id = 'counter'").fetchone()[0]
        )
    assert final == 100


def test_a_server_that_is_down_is_database_unavailable_then_recovers(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    if not postgres.can_restart:
        pytest.skip("external server: not restarted by tests")
    location = _postgres(postgres, tmp_path)
    with _Open(location) as db:
        db.call(_add_room, "room-1", 0.0)
        postgres.stop()
        try:
            with pytest.raises(DatabaseUnavailable, match=r"connection lost|cannot connect"):
                db.call(_count_rooms, write=False)
        finally:
            postgres.start_again()
        assert db.call(_count_rooms, write=False) == 1  # the broken connection was replaced


def test_a_restart_within_the_wait_is_not_even_noticed(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    if not postgres.can_restart:
        pytest.skip("external server: not restarted by tests")
    location = _postgres(postgres, tmp_path, unavailable_s=30)
    with _Open(location) as db:
        db.call(_add_room, "room-1", 0.0)
        postgres.restart("immediate")
        assert db.call(_count_rooms, write=False) == 1


def test_a_wrong_password_is_one_line_at_open(postgres: PostgresServer, tmp_path: Path) -> None:
    import dataclasses

    from pydantic import SecretStr

    location = dataclasses.replace(
        _postgres(postgres, tmp_path), password=SecretStr("wrong"), unavailable_s=0
    )
    with pytest.raises(DatabaseUnavailable) as caught:
        Database.open(location)
    message = str(caught.value)
    assert "wrong" not in message and "\n" not in message
    assert location.display in message


def test_the_dialect_is_small_and_mechanical() -> None:
    assert postgres_query("SELECT * FROM t WHERE a = ? AND b LIKE 'x%?' AND c = ?") == (
        "SELECT * FROM t WHERE a = %s AND b LIKE 'x%%?' AND c = %s"
    )
    assert postgres_ddl(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, at REAL, b BLOB)"
    ) == (
        "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        " n BIGINT NOT NULL, at DOUBLE PRECISION, b BYTEA)"
    )
    assert postgres_ddl("UPDATE t SET kind = 'REAL'") == "UPDATE t SET kind = 'REAL'"


def test_a_password_in_the_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="password_file") as caught:
        GatewaySettings(state_dir=tmp_path, store={"url": "postgresql://gw:s3cret@db/ra"})
    assert "keep it out of the URL" in str(caught.value)


def _postgres(server: PostgresServer, tmp_path: Path, **overrides: object) -> PostgresLocation:
    import dataclasses

    settings = GatewaySettings(
        state_dir=tmp_path,
        store={
            "url": server.url(server.database()),
            "password_file": server.password_file(tmp_path),
        },
    )
    location = settings.store_location
    assert isinstance(location, PostgresLocation)
    return dataclasses.replace(location, **overrides)  # type: ignore[arg-type]


def _add_room(conn: Connection, room_id: str, at: float) -> None:
    conn.execute("INSERT INTO rooms (id, created_at) VALUES (?, ?)", (room_id, at))


def _count_rooms(conn: Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM rooms").fetchone()[0])


class _Open:
    def __init__(self, location: Location | Path) -> None:
        self.db = Database.open(location)

    def __enter__(self) -> Database:
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


def test_a_room_has_one_active_session_also_while_starting_or_paused(tmp_path: Path) -> None:
    from gateway.sessions import states

    with _Open(tmp_path / "gateway.db") as db, db.transaction() as conn:
        conn.execute("INSERT INTO rooms (id, created_at) VALUES ('room-1', 0)")
        conn.execute(
            "INSERT INTO clinicians (external_id, first_name, last_name, created_at,"
            " updated_at) VALUES ('c', 'A', 'B', 0, 0)"
        )
        conn.execute(
            "INSERT INTO clients (external_id, first_name, last_name, clinician_external_id,"
            " created_at, updated_at) VALUES ('k', 'A', 'B', 'c', 0, 0)"
        )
        first = states.insert(conn, "room-1", "c", "k", "in-person", None, state="starting")
        with pytest.raises(states.RoomBusy):
            states.insert(conn, "room-1", "c", "k", "in-person", None)
        assert states.active_in_room(conn, "room-1") == first
        states.transition(conn, first.id, "paused", ["starting"], step="paused")
        with pytest.raises(states.RoomBusy):
            states.insert(conn, "room-1", "c", "k", "in-person", None, state="starting")
        states.mark_failed(conn, first.id, "test")
        assert states.active_in_room(conn, "room-1") is None
        states.insert(conn, "room-1", "c", "k", "in-person", None, state="starting")
