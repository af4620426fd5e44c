"""SQLite commits the transactions that wait together with one fsync (group commit), and
each still succeeds or fails alone: a caller hears "done" only once its rows are durable,
and a failing transaction in a group takes nothing of the others with it.

The commits are counted in the WAL file itself: each commit ends with a frame whose header
carries the database size (other frames carry 0), under the WAL's current salt.
"""

from __future__ import annotations

import asyncio
import sqlite3
import struct
import time
from pathlib import Path

import pytest

from gateway.store import Connection, Database, IntegrityError
from gateway.store.sqlite import SqliteDatabase

WAL_HEADER, FRAME_HEADER = 32, 24
TRANSACTIONS = 200


def wal_commits(db_path: Path) -> int:
    """Commit frames in the WAL since its last reset."""
    wal = Path(f"{db_path}-wal").read_bytes()
    if len(wal) < WAL_HEADER:
        return 0
    page_size = struct.unpack(">I", wal[8:12])[0]
    salt = wal[16:24]
    commits, at = 0, WAL_HEADER
    while at + FRAME_HEADER <= len(wal):
        header = wal[at : at + FRAME_HEADER]
        if header[8:16] != salt:
            break  # frames of an earlier generation of the WAL
        commits += struct.unpack(">I", header[4:8])[0] != 0
        at += FRAME_HEADER + page_size
    return commits


def make_table(conn: Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS marks (n INTEGER PRIMARY KEY, side TEXT)")


def insert(conn: Connection, n: int) -> int:
    conn.execute("INSERT INTO marks (n, side) VALUES (?, 'x')", (n,))
    return n


@pytest.fixture
def db(tmp_path: Path):
    opened = Database.open(tmp_path / "gateway.db")
    assert isinstance(opened, SqliteDatabase)
    opened.call(make_table)
    with sqlite3.connect(tmp_path / "gateway.db") as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # count from an empty WAL
    yield opened
    opened.close()


def test_transactions_that_wait_together_are_committed_together(db, tmp_path: Path) -> None:
    async def many() -> list[int]:
        return await asyncio.gather(*(db.run(insert, n) for n in range(TRANSACTIONS)))

    assert asyncio.run(many()) == list(range(TRANSACTIONS))
    commits = wal_commits(tmp_path / "gateway.db")
    assert 0 < commits <= TRANSACTIONS // 4, f"{commits} commits for {TRANSACTIONS} transactions"
    with sqlite3.connect(tmp_path / "gateway.db") as other:  # durable, seen from outside
        assert other.execute("SELECT count(*) FROM marks").fetchone()[0] == TRANSACTIONS


def test_a_failing_transaction_in_a_group_takes_nothing_of_the_others(db) -> None:
    def clash(conn: Connection) -> None:
        conn.execute("INSERT INTO marks (n, side) VALUES (-1, 'clash')")
        conn.execute("INSERT INTO marks (n, side) VALUES (0, 'clash')")  # n = 0 is taken

    def boom(conn: Connection) -> None:
        conn.execute("INSERT INTO marks (n, side) VALUES (-2, 'boom')")
        raise ValueError("the caller's own error")

    called: list[int] = []

    def with_callback(conn: Connection, n: int) -> int:
        conn.after_commit(lambda: called.append(n))
        return insert(conn, n)

    async def mixed() -> list[object]:
        await db.run(insert, 0)
        jobs = [db.run(with_callback, n) for n in range(1, 50)]
        jobs.insert(10, db.run(clash))
        jobs.insert(30, db.run(boom))
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(mixed())
    assert isinstance(results[10], IntegrityError)
    assert isinstance(results[30], ValueError)
    assert [r for r in results if isinstance(r, int)] == list(range(1, 50))
    assert sorted(called) == list(range(1, 50)), "each callback once, after its commit"
    rows = db.call(lambda conn: conn.execute("SELECT n, side FROM marks ORDER BY n").fetchall())
    assert [tuple(row) for row in rows] == [(n, "x") for n in range(50)]


def test_a_write_whose_caller_gave_up_is_skipped_and_the_rest_of_its_group_commits(db) -> None:
    """A caller cancelled while its write waited (a job worker stopping, a request that
    timed out): that write is not run, and the writes waiting with it are still committed
    and answered. They hung forever when the cancelled one was answered first."""
    release = asyncio.Event()

    def block(conn: Connection, started: asyncio.Future[None], loop) -> None:
        loop.call_soon_threadsafe(started.set_result, None)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)

    async def main() -> tuple[int, list[int]]:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        blocker = asyncio.create_task(db.run(block, started, loop))
        await started  # the database thread is busy: the next writes wait, as one group
        given_up = asyncio.create_task(db.run(insert, 1))
        others = [asyncio.create_task(db.run(insert, n)) for n in range(2, 6)]
        await asyncio.sleep(0)  # all of them are waiting
        given_up.cancel()
        release.set()
        await blocker
        async with asyncio.timeout(10):
            done = await asyncio.gather(*others)
        rows = await db.run(lambda conn: [r[0] for r in conn.execute("SELECT n FROM marks")])
        return len(done), sorted(rows)

    assert asyncio.run(main()) == (4, [2, 3, 4, 5])


def test_each_member_of_a_group_is_charged_its_share_of_the_commit_not_the_others_work(
    db,
) -> None:
    """What the stage counters charge a transaction for its COMMIT (``commit_cpu_s``, read
    in its after-commit callback): a share of that COMMIT only. Timing from the end of
    one's own statements to the callback charged each member with the statements of every
    member after it in its group (here 30 ms of CPU each) and the whole fsync."""
    burn_s = 0.03

    def busy_insert(conn: Connection, n: int) -> None:
        started = time.thread_time()
        while time.thread_time() - started < burn_s:
            pass
        insert(conn, n)
        conn.after_commit(lambda: charged.append(conn.commit_cpu_s))

    charged: list[float] = []

    async def grouped() -> None:
        await asyncio.gather(*(db.run(busy_insert, n) for n in range(6)))

    asyncio.run(grouped())
    assert len(charged) == 6
    assert all(0 <= share < burn_s / 3 for share in charged), charged
