"""A job queued through the session lifecycle while the worker has a free slot is handed
to it as its transaction commits: it starts without a claim, and without a wait for one.
In-process on a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from gateway.jobs import queue as jobs
from gateway.jobs.queue import Job
from gateway.jobs.worker import Worker
from gateway.sessions.lifecycle import JobKind, SessionLifecycle
from gateway.settings import JobSettings
from gateway.stages import Stages
from gateway.store import Connection, Database, Location
from tests.support.eventually import eventually_async

# No poll comes to the rescue within a test: only hand-offs and wake-ups run jobs.
NO_POLL = JobSettings(poll_interval_s=30, concurrency=2)


@pytest.fixture
def db(store_location: Location) -> Iterator[Database]:
    database = Database.open(store_location)
    yield database
    database.close()


class Claims:
    """The worker's claims, counted as its metrics count them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stages = Stages(self.registry)

    def __call__(self) -> int:
        value = self.registry.get_sample_value("gateway_stage_count_total", {"stage": "job.claim"})
        return int(value or 0)


def state(db: Database, job_id: int) -> Job:
    with db.transaction(write=False) as conn:
        found = jobs.get(conn, job_id)
    assert found is not None
    return found


def test_the_next_step_starts_without_a_claim(db: Database) -> None:
    lifecycle = SessionLifecycle(NO_POLL, "bpenv_test")
    claims = Claims()
    ran: list[Job] = []
    next_ids: list[int] = []

    def queue_next(conn: Connection) -> int:
        return lifecycle.enqueue(conn, JobKind.NOTIFY_DEVICE, {"step": 2})

    async def first(_: Job) -> None:
        next_ids.append(await db.run(queue_next))

    async def second(job: Job) -> None:
        ran.append(job)

    async def main() -> None:
        handlers = {"first": first, JobKind.NOTIFY_DEVICE: second}
        worker = Worker(db, handlers, NO_POLL, stages=claims.stages)
        lifecycle.hand_jobs_to(worker)
        worker.start()
        try:
            await eventually_async(lambda: claims() == 1, what="the start's claim")
            with db.transaction() as conn:
                first_id = jobs.enqueue(conn, "first", {}, max_attempts=3)
            worker.wake()
            await eventually_async(lambda: ran, timeout=5, what="the second step ran")
            await eventually_async(lambda: state(db, first_id).state == "done")
            await eventually_async(lambda: state(db, next_ids[0]).state == "done")
        finally:
            await worker.stop()

    asyncio.run(main())
    assert claims() == 2  # at start, and the wake-up for the first job: none for the second
    assert ran[0].id == next_ids[0]
    assert state(db, ran[0].id).attempts == 1


def test_a_busy_worker_leaves_new_jobs_in_the_queue_in_their_turn(db: Database) -> None:
    """Every slot taken: the job is queued as before, and claimed when a slot frees."""
    settings = JobSettings(poll_interval_s=30, concurrency=1)
    lifecycle = SessionLifecycle(settings, "bpenv_test")
    release = asyncio.Event()
    ran: list[int] = []
    queued: list[Job] = []

    async def slow(_: Job) -> None:
        job_id = await db.run(lambda conn: lifecycle.enqueue(conn, JobKind.NOTIFY_DEVICE, {}))
        queued.append(state(db, job_id))
        await release.wait()

    async def quick(job: Job) -> None:
        ran.append(job.id)

    async def main() -> None:
        worker = Worker(db, {"slow": slow, JobKind.NOTIFY_DEVICE: quick}, settings)
        lifecycle.hand_jobs_to(worker)
        worker.start()
        try:
            with db.transaction() as conn:
                jobs.enqueue(conn, "slow", {}, max_attempts=3)
            worker.wake()
            await eventually_async(lambda: queued, what="the slow job queued the quick one")
            release.set()
            await eventually_async(lambda: ran, timeout=5, what="the quick job ran")
        finally:
            await worker.stop()

    asyncio.run(main())
    assert queued[0].state == "queued" and queued[0].lease_owner is None


def test_a_job_handed_off_to_a_worker_that_died_is_taken_over(db: Database) -> None:
    """Handed off and committed, but its worker never ran it: once the lease runs out,
    another worker claims it."""
    short = JobSettings(poll_interval_s=0.05, lease_s=0.3)
    lifecycle = SessionLifecycle(short, "bpenv_test")
    ran: list[Job] = []

    class Dead:
        """A worker that leases and then dies before the commit's hand-off arrives."""

        def lease(self) -> jobs.Lease:
            return jobs.Lease("gone/1-abc", 0.3)

        def take(self, job: Job) -> None:
            pass

        def queued(self) -> None:
            pass

    lifecycle.hand_jobs_to(Dead())
    with db.transaction() as conn:
        job_id = lifecycle.enqueue(conn, JobKind.NOTIFY_DEVICE, {})
    assert state(db, job_id).lease_owner == "gone/1-abc"

    async def record(job: Job) -> None:
        ran.append(job)

    async def main() -> None:
        worker = Worker(db, {JobKind.NOTIFY_DEVICE: record}, short, replica="other")
        worker.start()
        try:
            await eventually_async(lambda: ran, timeout=5, what="taken over")
        finally:
            await worker.stop()

    asyncio.run(main())
    assert ran[0].taken_over_from == "gone/1-abc"
    assert ran[0].attempts == 2


def test_a_job_queued_as_the_worker_starts_runs_once(db: Database) -> None:
    """Queued between start() and the worker's release of the last run's jobs (which, on
    SQLite, puts every running job back in the queue): it is not handed over, so it is
    not released under its running attempt and claimed a second time."""
    settings = JobSettings(poll_interval_s=30, concurrency=1)
    lifecycle = SessionLifecycle(settings, "bpenv_test")
    runs: list[int] = []

    async def count(job: Job) -> None:
        runs.append(job.attempts)

    async def main() -> int:
        worker = Worker(db, {JobKind.NOTIFY_DEVICE: count}, settings, sole=True)
        lifecycle.hand_jobs_to(worker)
        worker.start()
        with db.transaction() as conn:  # before the worker's task has run at all
            job_id = lifecycle.enqueue(conn, JobKind.NOTIFY_DEVICE, {})
        try:
            await eventually_async(lambda: state(db, job_id).state == "done", timeout=5)
        finally:
            await worker.stop()
        return job_id

    asyncio.run(main())
    assert runs == [1]


def _mark(conn: Connection, job_id: int) -> None:
    conn.execute("INSERT INTO finished_marks (job_id) VALUES (?)", (job_id,))


def _marked(db: Database, job_id: int) -> bool:
    with db.transaction(write=False) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM finished_marks WHERE job_id = ?", (job_id,)
        ).fetchone()
    return bool(row[0])


def test_a_jobs_last_write_commits_with_its_completion_or_not_at_all(db: Database) -> None:
    """A handler may return its last write: the worker runs it in the transaction that
    marks the job done (one commit, not two). An attempt whose lease was taken over while
    it ran records neither: the replica that took the job over does its work."""
    settings = JobSettings(poll_interval_s=0.05, concurrency=1)  # one after the other

    async def finishes(job: Job) -> Callable[[Connection], None]:
        if job.payload["taken_over"]:  # another replica took the lease meanwhile
            await db.run(
                lambda conn: conn.execute(
                    "UPDATE jobs SET lease_owner = 'other/1-abc' WHERE id = ?", (job.id,)
                )
            )
        return lambda conn: _mark(conn, job.id)

    with db.transaction() as conn:
        conn.execute("CREATE TABLE finished_marks (job_id INTEGER NOT NULL)")
        lost = jobs.enqueue(conn, "finishes", {"taken_over": True}, max_attempts=3)
        kept = jobs.enqueue(conn, "finishes", {"taken_over": False}, max_attempts=3)

    async def main() -> None:
        worker = Worker(db, {"finishes": finishes}, settings)
        worker.start()
        try:
            # The lost attempt ran first, so it has ended once the kept one is done.
            await eventually_async(lambda: state(db, kept).state == "done", timeout=5)
        finally:
            await worker.stop()

    asyncio.run(main())
    assert _marked(db, kept)
    assert state(db, lost).lease_owner == "other/1-abc" and state(db, lost).state == "running"
    assert not _marked(db, lost)
