"""SQLite reads do not queue behind writes: ``run(write=False)`` has connections of its own
(WAL lets readers work beside the one writer), so a device's token check is answered while
the writer is inside a transaction or waiting for a commit's fsync, and still sees every
write committed before it began.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from gateway.store import Connection, Database, StoreError
from gateway.store.sqlite import SqliteDatabase

# Only a bound on a hang: the read either overlaps the write or waits for its release.
HANG_S = 10.0


def make_table(conn: Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS marks (n INTEGER PRIMARY KEY)")


def insert(conn: Connection, n: int) -> None:
    conn.execute("INSERT INTO marks (n) VALUES (?)", (n,))


def count(conn: Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM marks").fetchone()[0])


@pytest.fixture
def db(tmp_path: Path):
    opened = Database.open(tmp_path / "gateway.db")
    assert isinstance(opened, SqliteDatabase)
    opened.call(make_table)
    yield opened
    opened.close()


def test_a_read_is_answered_while_a_write_is_inside_its_transaction(db) -> None:
    entered, release = threading.Event(), threading.Event()

    def held_write(conn: Connection) -> None:
        insert(conn, 1)
        entered.set()
        release.wait(HANG_S)  # the writer's thread stays inside the transaction

    async def scenario() -> tuple[int, bool]:
        write = asyncio.ensure_future(db.run(held_write))
        try:
            assert await asyncio.to_thread(entered.wait, HANG_S)
            seen = await db.run(count, write=False)
            return seen, write.done()
        finally:
            release.set()
            await write

    seen, write_done = asyncio.run(scenario())
    assert not write_done, "the read waited for the write to finish"
    assert seen == 0  # the uncommitted row is not visible
    assert db.call(count, write=False) == 1


def test_a_read_sees_every_write_committed_before_it(db) -> None:
    async def scenario() -> list[int]:
        seen = []
        for n in range(20):
            await db.run(insert, n)
            seen.append(await db.run(count, write=False))
        return seen

    assert asyncio.run(scenario()) == list(range(1, 21))


def test_a_read_may_not_write(db) -> None:
    with pytest.raises(StoreError):
        asyncio.run(db.run(insert, 7, write=False))
    assert db.call(count, write=False) == 0
