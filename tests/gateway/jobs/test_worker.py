"""The durable queue and its worker, in-process on a real SQLite file: backoff, attempts,
failure with a reason, Retry-After, restart recovery, de-duplication, no PHI in errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

import pytest

from gateway.jobs import queue as jobs
from gateway.jobs.queue import Job
from gateway.jobs.worker import Handler, Permanent, Retryable, Worker
from gateway.settings import JobSettings
from gateway.store import Connection, Database, Location
from tests.support.eventually import eventually_async

FAST = JobSettings(concurrency=2, poll_interval_s=0.05, backoff_base_s=0.01, backoff_max_s=0.05)


@pytest.fixture
def db(store_location: Location) -> Iterator[Database]:
    database = Database.open(store_location)
    yield database
    database.close()


def enqueue(db: Database, kind: str = "step", max_attempts: int = 3, **payload: object) -> int:
    with db.transaction() as conn:
        return jobs.enqueue(conn, kind, dict(payload), max_attempts=max_attempts)


def job(db: Database, job_id: int) -> Job:
    with db.transaction(write=False) as conn:
        found = jobs.get(conn, job_id)
    assert found is not None
    return found


def run_until(
    db: Database,
    handlers: dict[str, Handler],
    done: Callable[[], bool],
    settings: JobSettings = FAST,
    on_failed: Callable[[Connection, Job], None] | None = None,
    timeout: float = 5.0,
) -> list[tuple[str, str]]:
    """Run a worker until ``done()``; returns the (kind, outcome) reports."""
    outcomes: list[tuple[str, str]] = []

    async def main() -> None:
        worker = Worker(
            db,
            handlers,
            settings,
            on_failed=on_failed,
            on_outcome=lambda kind, outcome: outcomes.append((kind, outcome)),
        )
        worker.start()
        try:
            await eventually_async(
                done, timeout=timeout, interval=0.01, what="worker did not get there"
            )
            assert worker.alive
        finally:
            await worker.stop()

    asyncio.run(main())
    return outcomes


def handler(fn: Callable[[Job], None]) -> Handler:
    async def run(job: Job) -> None:
        fn(job)

    return run


def test_a_job_runs_once_and_is_done(db: Database) -> None:
    seen: list[dict] = []
    job_id = enqueue(db, room="room-1")
    run_until(
        db,
        {"step": handler(lambda j: seen.append(j.payload))},
        lambda: job(db, job_id).state == "done",
    )
    assert seen == [{"room": "room-1"}]
    assert job(db, job_id).attempts == 1


def test_temporary_failures_back_off_then_succeed(db: Database) -> None:
    calls: list[float] = []

    def flaky(_: Job) -> None:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise Retryable("Blueprint busy")

    job_id = enqueue(db, max_attempts=5)
    outcomes = run_until(db, {"step": handler(flaky)}, lambda: job(db, job_id).state == "done")
    assert outcomes == [("step", "retry"), ("step", "retry"), ("step", "done")]
    assert job(db, job_id).attempts == 3 and job(db, job_id).last_error is None
    assert calls[1] - calls[0] >= 0.01  # backoff: at least backoff_base_s


def test_exhausted_attempts_fail_visibly_with_the_reason(db: Database) -> None:
    failed: list[Job] = []

    def always(_: Job) -> None:
        raise Retryable("find_session: HTTP 503")

    job_id = enqueue(db, max_attempts=3)
    run_until(
        db,
        {"step": handler(always)},
        lambda: job(db, job_id).state == "failed",
        on_failed=lambda conn, j: failed.append(j),
    )
    final = job(db, job_id)
    assert final.attempts == 3
    assert final.last_error == "find_session: HTTP 503 (gave up after 3 attempts)"
    assert [j.id for j in failed] == [job_id]
    with db.transaction() as conn:
        assert [j.id for j in jobs.list_jobs(conn, "failed")] == [job_id]
        retried = jobs.retry(conn, job_id)
        assert retried is not None and retried.state == "queued" and retried.attempts == 0
        assert jobs.retry(conn, job_id) is None  # only failed jobs are retried


def test_permanent_failures_are_not_retried(db: Database) -> None:
    def refused(_: Job) -> None:
        raise Permanent("create_client: Blueprint answered HTTP 422")

    job_id = enqueue(db, max_attempts=10)
    outcomes = run_until(db, {"step": handler(refused)}, lambda: job(db, job_id).state == "failed")
    assert outcomes == [("step", "failed")]
    assert job(db, job_id).attempts == 1


def test_retry_after_is_respected(db: Database) -> None:
    def throttled(_: Job) -> None:
        raise Retryable("HTTP 429", retry_after_s=30)

    job_id = enqueue(db, max_attempts=5)
    before = time.time()
    run_until(
        db,
        {"step": handler(throttled)},
        lambda: job(db, job_id).attempts == 1 and job(db, job_id).state == "queued",
    )
    assert job(db, job_id).next_run_at >= before + 30


def test_unexpected_errors_keep_their_data_out_of_logs_and_reasons(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    def buggy(_: Job) -> None:
        raise ValueError("Adelaide Quintrell")

    job_id = enqueue(db, max_attempts=1)
    with caplog.at_level(logging.DEBUG):
        run_until(db, {"step": handler(buggy)}, lambda: job(db, job_id).state == "failed")
    assert job(db, job_id).last_error == "unexpected ValueError (gave up after 1 attempts)"
    assert "Adelaide" not in caplog.text
    assert "unexpected ValueError at" in caplog.text and "test_worker.py" in caplog.text


def test_jobs_left_running_by_a_killed_process_run_again_on_start(db: Database) -> None:
    job_id = enqueue(db)
    with db.transaction() as conn:
        assert [j.id for j in jobs.claim_due(conn, 10)] == [job_id]  # then "killed"
    assert job(db, job_id).state == "running"
    run_until(db, {"step": handler(lambda j: None)}, lambda: job(db, job_id).state == "done")
    assert job(db, job_id).attempts == 2


def test_a_job_without_a_handler_fails(db: Database) -> None:
    job_id = enqueue(db, kind="from_the_future")
    run_until(db, {}, lambda: job(db, job_id).state == "failed")
    assert job(db, job_id).last_error == "no handler for job kind from_the_future"


def test_a_key_keeps_one_job_per_thing(db: Database) -> None:
    with db.transaction() as conn:
        first = jobs.enqueue(conn, "upload_audio", {"n": 1}, max_attempts=3, key="upload:s1")
        again = jobs.enqueue(conn, "upload_audio", {"n": 2}, max_attempts=3, key="upload:s1")
        assert first == again and jobs.get(conn, first).payload == {"n": 1}
        jobs.complete(conn, first)
        requeued = jobs.enqueue(conn, "upload_audio", {"n": 3}, max_attempts=3, key="upload:s1")
        assert requeued == first
        assert (jobs.get(conn, first).state, jobs.get(conn, first).payload) == ("queued", {"n": 3})


def test_concurrency_is_bounded(db: Database) -> None:
    running = 0
    peak = 0
    finished = 0

    async def slow(_: Job) -> None:
        nonlocal running, peak, finished
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        finished += 1

    for _ in range(6):
        enqueue(db)
    run_until(db, {"step": slow}, lambda: finished == 6)
    assert peak == FAST.concurrency


def test_by_default_a_quick_job_is_not_held_behind_a_few_slow_ones(db: Database) -> None:
    """Jobs mostly await Blueprint or the broker: with a handful of slow uploads in flight
    (8, as under 5 sessions/s), a device's notify still runs at once (it waited up to
    half a second at concurrency 4)."""
    release = asyncio.Event()
    notified = False

    async def slow(_: Job) -> None:
        await release.wait()

    async def notify(_: Job) -> None:
        nonlocal notified
        notified = True
        release.set()

    for _ in range(8):
        enqueue(db, "upload")
    enqueue(db, "notify")
    defaults = JobSettings(poll_interval_s=30)  # only wake-ups: no poll to the rescue
    run_until(db, {"upload": slow, "notify": notify}, lambda: notified, defaults, timeout=3)


def test_waiting_for_a_job(db: Database) -> None:
    async def main() -> float:
        worker = Worker(db, {"step": handler(lambda j: None)}, JobSettings(poll_interval_s=30))
        worker.start()
        job_id = enqueue(db)
        started = time.monotonic()
        await worker.wait_for(job_id, timeout_s=5)  # wakes the worker: no 30 s poll
        elapsed = time.monotonic() - started
        await worker.stop()
        return elapsed

    assert asyncio.run(main()) < 2
