"""Jobs across replicas, on both engines: two workers, each with its own Database (as two
replica processes have), claim from one queue.

Each job runs once however many replicas claim at once; a job whose replica died is taken
over by another after its lease; a lease renewed by a living replica is never taken; the
outcome of an attempt whose lease was taken over is refused. (A SQLite gateway is the only
one on its file, so its worker also takes every running job at start: ``sole``.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.jobs import queue as jobs
from gateway.jobs.queue import Job
from gateway.jobs.worker import Handler, Worker
from gateway.settings import GatewaySettings, JobSettings
from gateway.store import Database, Location
from tests.support.eventually import eventually_async

LEASE = JobSettings(
    concurrency=2, poll_interval_s=0.05, backoff_base_s=0.01, backoff_max_s=0.05, lease_s=0.6
)
# Renewed every 0.5 s: room for a loaded machine's pauses, so a takeover means a bug.
RENEWED = LEASE.model_copy(update={"lease_s": 1.5})


@pytest.fixture
def replicas(store_location: Location) -> Iterator[tuple[Database, Database]]:
    first = Database.open(store_location)
    second = Database.open(store_location)
    yield first, second
    second.close()
    first.close()


def enqueue(db: Database, kind: str = "step") -> int:
    with db.transaction() as conn:
        return jobs.enqueue(conn, kind, {}, max_attempts=5)


def job(db: Database, job_id: int) -> Job:
    with db.transaction(write=False) as conn:
        found = jobs.get(conn, job_id)
    assert found is not None
    return found


async def run_workers(
    workers: list[Worker], done: Callable[[], bool], within_s: float = 20.0
) -> None:
    for worker in workers:
        worker.start()
    try:
        await eventually_async(
            done, timeout=within_s, interval=0.01, what="the workers did not get there"
        )
    finally:
        for worker in workers:
            await worker.stop()


def test_replicas_claiming_at_once_run_each_job_once(replicas) -> None:
    first, second = replicas
    ids = [enqueue(first) for _ in range(24)]
    runs: Counter[int] = Counter()
    by: Counter[str] = Counter()

    def recording(name: str) -> Handler:
        async def run(job: Job) -> None:
            runs[job.id] += 1
            by[name] += 1
            await asyncio.sleep(0.02)

        return run

    async def main() -> None:
        workers = [
            Worker(db, {"step": recording(name)}, LEASE, replica=name)
            for db, name in ((first, "a"), (second, "b"))
        ]
        await run_workers(workers, lambda: all(job(first, i).state == "done" for i in ids))

    asyncio.run(main())
    assert runs == Counter({job_id: 1 for job_id in ids})
    assert by["a"] > 0 and by["b"] > 0, by  # both replicas took a share


def test_a_dead_replicas_job_is_taken_over_after_its_lease(
    replicas, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = replicas
    job_id = enqueue(first)
    with first.transaction() as conn:  # replica a claims it, then dies
        [claimed] = jobs.claim_due(conn, 10, "a/1", LEASE.lease_s)
    assert claimed.lease_owner == "a/1" and claimed.lease_expires_at is not None
    ran_at: list[float] = []

    async def step(job: Job) -> None:
        ran_at.append(time.time())

    async def main() -> None:
        worker = Worker(second, {"step": step}, LEASE, replica="b")
        await run_workers([worker], lambda: job(second, job_id).state == "done")

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert len(ran_at) == 1 and job(second, job_id).attempts == 2
    assert ran_at[0] >= claimed.lease_expires_at  # replica b waited for a's lease
    assert f"job {job_id} step taken over from a/1 (its lease expired)" in caplog.text


def test_the_sole_gateway_on_a_file_resumes_every_running_job_at_start(replicas) -> None:
    first, second = replicas
    job_id = enqueue(first)
    with first.transaction() as conn:  # claimed by a process that was then SIGKILLed
        jobs.claim_due(conn, 10, "old-host/123-abc", 3600.0)
    ran: list[int] = []

    async def step(job: Job) -> None:
        ran.append(job.id)

    async def main() -> None:
        worker = Worker(second, {"step": step}, LEASE, replica="new-host", sole=True)
        await run_workers([worker], lambda: job(second, job_id).state == "done", within_s=5)

    asyncio.run(main())  # well before the hour's lease
    assert ran == [job_id]


def test_a_living_replica_keeps_its_lease_while_its_job_runs(replicas) -> None:
    first, second = replicas
    long_job = enqueue(first, "long")
    runs: Counter[str] = Counter()
    started = asyncio.Event()

    async def long(job: Job) -> None:
        runs["long"] += 1
        started.set()
        await asyncio.sleep(RENEWED.lease_s * 3)  # three leases: renewed twice at least

    async def sentinel(job: Job) -> None:
        runs["sentinel"] += 1

    async def main() -> None:
        a = Worker(first, {"long": long}, RENEWED, replica="a")
        a.start()
        await asyncio.wait_for(started.wait(), 10)
        b = Worker(second, {"long": long, "sentinel": sentinel}, RENEWED, replica="b")
        b.start()
        try:
            budget_end = time.monotonic() + 20  # for both waits together
            await eventually_async(
                lambda: job(first, long_job).state == "done",
                timeout=20,
                interval=0.02,
                what="the long job did not finish",
            )
            await a.stop()
            marker = enqueue(first, "sentinel")  # b was claiming all along: it takes this
            await eventually_async(
                lambda: job(first, marker).state == "done",
                timeout=budget_end - time.monotonic(),
                interval=0.02,
                what="b stopped claiming",
            )
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())
    assert runs == Counter({"long": 1, "sentinel": 1})
    assert job(first, long_job).attempts == 1


def test_the_outcome_of_a_taken_over_attempt_is_refused(replicas) -> None:
    first, second = replicas
    job_id = enqueue(first)
    with first.transaction() as conn:
        [stale] = jobs.claim_due(conn, 1, "a/1", 0.0)  # expires at once
    with second.transaction() as conn:
        [fresh] = jobs.claim_due(conn, 1, "b/1", 30.0)
    assert fresh.taken_over_from == "a/1" and fresh.attempts == 2
    with first.transaction() as conn:
        assert jobs.complete(conn, job_id, stale) is False
        assert jobs.reschedule(conn, job_id, "late", 0.0, stale) is False
        assert jobs.fail(conn, job_id, "late", stale) is None
        assert jobs.renew(conn, "a/1", [job_id], 30.0) == []
    assert job(first, job_id).state == "running"
    with second.transaction() as conn:
        assert jobs.renew(conn, "b/1", [job_id], 30.0) == [job_id]
        assert jobs.complete(conn, job_id, fresh) is True
    assert (job(first, job_id).state, job(first, job_id).lease_owner) == ("done", None)


def test_the_worker_keeps_working_after_the_database_went_away(postgres, tmp_path: Path) -> None:
    """PostgreSQL restarted under a running worker: it claims and runs jobs again after
    (its loop once died on the first failed look at the queue, and with it every job)."""
    if not postgres.can_restart:
        pytest.skip("external PostgreSQL: cannot restart it")
    name = postgres.database()
    location = GatewaySettings(
        state_dir=tmp_path,
        store={"url": postgres.url(name), "password_file": postgres.password_file(tmp_path),
               "unavailable_s": 0.2},
    ).store_location  # fmt: skip
    db = Database.open(location)
    ran: list[int] = []

    async def step(job: Job) -> None:
        ran.append(job.id)

    async def main() -> None:
        worker = Worker(db, {"step": step}, LEASE, replica="a")
        worker.start()
        try:
            postgres.stop("fast")
            await asyncio.sleep(2.0)  # the loop looks at the queue several times meanwhile
            postgres.start_again()
            job_id = await asyncio.to_thread(enqueue, db)
            await eventually_async(
                lambda: job_id in ran, timeout=20, what="the worker stopped working"
            )
            assert worker.alive
        finally:
            await worker.stop()

    try:
        asyncio.run(main())
    finally:
        db.close()
        postgres.drop(name)
