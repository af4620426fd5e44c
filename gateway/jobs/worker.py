"""The job worker: an asyncio task that runs due jobs, a few at a time, with backoff.

Every replica runs one. A claimed job is leased to this worker (``owner``: the replica's
name and this run's incarnation) for ``jobs.lease_s``, and the lease is renewed every
third of that while the attempt runs; if the replica dies, another one takes the job over
once the lease has expired (see ``jobs.queue``). An attempt whose lease was lost (renewal
found another owner) is cancelled, and its outcome is never recorded over the new owner's.

Handlers say how an attempt ended by returning (done), raising Retryable (try again later,
no earlier than ``retry_after_s``), Permanent (retrying cannot help: failed now) or
anything else (an unexpected error: retried like Retryable until attempts run out, then
failed). The reason stored and logged is ``describe_error``'s, which never includes data
a handler was working on, because a pydantic error, for one, would echo names.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from pydantic import ValidationError

from gateway.jobs import queue as jobs
from gateway.jobs.queue import Job, Lease
from gateway.settings import JobSettings
from gateway.stages import UNTIMED, Stages
from gateway.store import Connection, Database, StoreError
from runtime.retry import backoff_s

logger = logging.getLogger(__name__)

Finish = Callable[[Connection], object]
"""A handler's last write, returned rather than run: the worker runs it in the transaction
that marks the job done, so the two commit together (one commit, not two), and neither
does if this attempt's lease was taken over meanwhile."""
Handler = Callable[[Job], Coroutine[Any, Any, Finish | None]]
OnFailed = Callable[[Connection, Job], None]
"""Runs inside the transaction that marks a job failed (e.g. to fail its session)."""
OnOutcome = Callable[[str, str], None]
"""Called with (kind, outcome) after every attempt: done, retry or failed; for metrics."""


class Retryable(Exception):
    """This attempt failed for a reason that may pass; try again later."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class Later(Retryable):
    """Not yet (a poll found nothing): try again after exactly ``retry_after_s``, with no
    backoff; it still counts as an attempt, so ``max_attempts`` bounds the polls."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason, retry_after_s)


class Permanent(Exception):
    """This job cannot succeed by repeating it; fail it now, visibly."""


def describe_error(exc: BaseException) -> str:
    """A reason safe to store, log and show: ours are written without PHI; foreign
    exceptions are reduced to their type (their text may carry whatever they handled)."""
    if isinstance(exc, Retryable | Permanent):
        return str(exc)
    if isinstance(exc, ValidationError):
        return f"invalid data ({exc.error_count()} errors in {exc.title})"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__} (errno {exc.errno})"
    return f"unexpected {type(exc).__name__}"


def raised_at(exc: BaseException) -> str:
    """Where an exception was raised, as file:line (function), without its message."""
    tb = exc.__traceback__
    if tb is None:
        return "unknown place"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{code.co_filename}:{tb.tb_lineno} ({code.co_name})"


class Worker:
    """Claims due jobs and runs their handlers; ``wake()`` after enqueuing to skip the poll.

    A job queued while this worker has a free slot can be handed to it instead
    (``lease``, then ``take`` once committed; ``SessionLifecycle`` does this): written
    already claimed, it starts as soon as its transaction commits, with no claim and no
    wait for one. The worker claims from the queue when told there is work (``wake``),
    at each poll, and when a job ends while its last claim filled every slot.
    """

    def __init__(
        self,
        db: Database,
        handlers: Mapping[str, Handler],
        settings: JobSettings,
        *,
        on_failed: OnFailed | None = None,
        on_outcome: OnOutcome | None = None,
        replica: str = "local",
        sole: bool = False,
        stages: Stages = UNTIMED,
    ) -> None:
        """``sole``: no other process runs this queue's jobs (SQLite, under the serve lock),
        so every job left running at start is a dead process's."""
        self._db = db
        self.replica = replica
        self._sole = sole
        # This run of the replica: a restart (same name) is a new owner of new leases.
        self.owner = f"{replica}/{os.getpid()}-{secrets.token_hex(3)}"
        self._handlers = handlers
        self._settings = settings
        self._on_failed = on_failed
        self._on_outcome = on_outcome
        self._stages = stages
        self._wake = asyncio.Event()
        self._claim_wanted = True  # look in the queue at the next turn of the loop
        self._backlog = False  # the last claim filled every free slot: more may be due
        self._deadline = 0.0  # monotonic time of the next poll
        self._loop_of: asyncio.AbstractEventLoop | None = None
        self._accepting = False  # hand-offs are taken (once started, until stop)
        self._taken: collections.deque[Job] = collections.deque()  # handed off, not started
        self._running: dict[int, asyncio.Task[None]] = {}
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.last_tick = 0.0

    def start(self) -> None:
        self._loop_of = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._loop(), name="job-worker")
        self._renewer = asyncio.create_task(self._renew_leases(), name="job-leases")

    async def stop(self) -> None:
        """Stop claiming, cancel attempts in flight and release their leases, so another
        replica takes them at once (after a crash: when the leases expire)."""
        self._accepting = False
        for task in (self._task, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        try:
            await self._db.run(jobs.release_owned, self.owner)
        except StoreError as exc:
            logger.warning("jobs not released at stop (%s): leases expire", type(exc).__name__)

    def wake(self) -> None:
        """There is work in the queue (on the event loop's thread)."""
        self._claim_wanted = True
        self._wake.set()

    def queued(self) -> None:
        """``wake`` from any thread: a transaction that queued a job has committed."""
        loop = self._loop_of
        if loop is not None and self._accepting:
            loop.call_soon_threadsafe(self.wake)

    def lease(self) -> Lease | None:
        """A lease for a job being queued now, if this worker would start it at once (any
        thread; None when every slot is taken, so a busy worker's new jobs wait in the
        queue in their turn). Two transactions may both get one for the last slot: the
        second job then waits for a slot here, under its lease."""
        if not self._accepting:
            return None
        if len(self._running) + len(self._taken) >= self._settings.concurrency:
            return None
        return Lease(self.owner, self._settings.lease_s)

    def take(self, job: Job) -> None:
        """Run ``job``, queued under a ``lease`` by a transaction that has committed (any
        thread)."""
        loop = self._loop_of
        if loop is not None:
            loop.call_soon_threadsafe(self._take, job)

    def _take(self, job: Job) -> None:
        if not self._accepting:
            return  # stopping: its lease runs out, and the next run (or replica) takes it
        self._taken.append(job)
        self._wake.set()

    @property
    def alive(self) -> bool:
        """The loop is running and has looked for work recently."""
        if self._task is None or self._task.done():
            return False
        stale_after = max(5.0, self._settings.poll_interval_s * 3)
        return time.monotonic() - self.last_tick < stale_after

    async def wait_for(self, job_id: int, timeout_s: float) -> None:
        """Return when an attempt of ``job_id`` ends (any outcome), or after ``timeout_s``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        self.wake()
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(job_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(job_id, None)

    async def _loop(self) -> None:
        try:
            requeued = await self._db.run(jobs.release_leases, self.replica, self._sole)
        except StoreError as exc:  # their leases expire instead
            logger.error("cannot release the last run's jobs: %s", type(exc).__name__)
            requeued = 0
        if requeued:
            logger.info("resuming %d jobs interrupted by the last shutdown", requeued)
        # Only now: a job handed over before the release above would be released under
        # its running attempt, and claimed a second time.
        self._accepting = True
        while True:
            self.last_tick = time.monotonic()
            self._wake.clear()
            while self._taken and len(self._running) < self._settings.concurrency:
                self._run(self._taken.popleft())
            free = self._settings.concurrency - len(self._running)
            if free > 0 and self._claim_wanted:
                self._claim_wanted = False
                claimed = await self._claim(free)
                self._backlog = len(claimed) == free
                for job in claimed:
                    self._run(job)
                self._deadline = time.monotonic() + await self._idle_s()
            elif self._deadline <= time.monotonic():  # a poll found every slot taken
                self._deadline = time.monotonic() + self._settings.poll_interval_s
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation that stop() sends when the event is set at the same moment.
            try:
                async with asyncio.timeout(max(0.0, self._deadline - time.monotonic())):
                    await self._wake.wait()
            except TimeoutError:
                self._claim_wanted = True

    async def _claim(self, free: int) -> list[Job]:
        try:
            with self._stages.waited("job.claim"):
                claimed = await self._db.run(
                    jobs.claim_due,
                    free,
                    self.owner,
                    self._settings.lease_s,
                    isolation="read_committed",
                )
        except StoreError as exc:
            logger.error("cannot claim jobs: %s", type(exc).__name__)
            return []
        for job in claimed:
            if job.taken_over_from is not None:
                logger.warning(
                    "job %d %s taken over from %s (its lease expired)",
                    job.id,
                    job.kind,
                    job.taken_over_from,
                )
        return claimed

    def _run(self, job: Job) -> None:
        self._running[job.id] = asyncio.create_task(self._execute(job))

    async def _idle_s(self) -> float:
        """Sleep until the next job is due, at most one poll interval (other processes,
        such as ``room-gateway jobs retry``, add work without waking us)."""
        poll = self._settings.poll_interval_s
        if len(self._running) >= self._settings.concurrency:
            return poll
        try:
            due = await self._db.run(jobs.next_due_at, write=False)
        except StoreError:  # the database is away: look again after a poll, never give up
            return poll
        if due is None:
            return poll
        return min(poll, max(0.0, due - time.time()))

    async def _renew_leases(self) -> None:
        """Every third of a lease: extend ours; cancel attempts whose lease was taken."""
        interval = self._settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            ids = sorted({*self._running, *(job.id for job in self._taken)})
            if not ids:
                continue
            try:
                held = set(await self._db.run(jobs.renew, self.owner, ids, self._settings.lease_s))
            except StoreError as exc:
                logger.warning("cannot renew job leases: %s", type(exc).__name__)
                continue
            for job_id in ids:
                if job_id in held:
                    continue
                task = self._running.get(job_id)
                if task is not None:
                    logger.warning("job %d: lease lost to another replica; attempt stopped", job_id)
                    task.cancel()
                else:  # handed off, not started: the replica that took it over runs it
                    self._taken = collections.deque(j for j in self._taken if j.id != job_id)

    async def _execute(self, job: Job) -> None:
        # How long it waited to be claimed once due (wake-ups, polls, a busy store).
        self._stages.record(f"job.{job.kind}.queued", 0.0, time.time() - job.next_run_at)
        settled = False
        try:
            settled = await self._attempt(job)
        except asyncio.CancelledError:
            pass  # stopping, or the lease was lost: the job's next owner runs it
        except StoreError as exc:
            # The outcome was not recorded: the job runs again when its lease expires.
            logger.error("job %d %s: outcome not recorded (%s)", job.id, job.kind,
                         type(exc).__name__)  # fmt: skip
        finally:
            self._running.pop(job.id, None)
            for future in self._waiters.pop(job.id, []):
                if not future.done():
                    future.set_result(None)
            # A slot is free: claim if more may be due, or if this job went back to the
            # queue (its next run may be due before the next poll).
            if self._backlog or not settled:
                self._claim_wanted = True
            self._wake.set()

    async def _attempt(self, job: Job) -> bool:
        """Run one attempt and record its outcome; False when the job went back to the
        queue (or its outcome was not this worker's to record)."""
        handler = self._handlers.get(job.kind)
        try:
            if handler is None:
                raise Permanent(f"no handler for job kind {job.kind}")
            finish = await self._stages.awaited(f"job.{job.kind}", handler(job))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return await self._failed_attempt(job, exc)
        try:
            with self._stages.waited("job.complete"):
                completed = await self._db.run(self._complete, job, finish)
        except Exception as exc:
            if finish is None and isinstance(exc, StoreError):
                raise  # nothing was recorded: the job runs again when its lease expires
            # Its last write failed: as if the handler had raised (it used to run it).
            return await self._failed_attempt(job, exc)
        if not completed:
            self._lost(job)
            return False
        logger.info("job %d %s done (attempt %d)", job.id, job.kind, job.attempts)
        self._report(job.kind, "done")
        return True

    @staticmethod
    def _complete(conn: Connection, job: Job, finish: Finish | None) -> bool:
        if not jobs.complete(conn, job.id, job):
            return False  # taken over: the handler's last write is not made either
        if finish is not None:
            finish(conn)
        return True

    async def _failed_attempt(self, job: Job, exc: Exception) -> bool:
        """Record a failed attempt: failed (Permanent) or back in the queue; True when it
        left the queue."""
        if isinstance(exc, Permanent):
            await self._fail(job, describe_error(exc))
            return True
        retry_after = exc.retry_after_s if isinstance(exc, Retryable) else None
        if not isinstance(exc, Retryable):
            # Not logger.exception: the traceback's last line is str(exc), which may
            # hold what the handler was working on. Type and place are enough to debug.
            logger.error(
                "job %d %s: unexpected %s at %s", job.id, job.kind, type(exc).__name__,
                raised_at(exc),
            )  # fmt: skip
        exact = isinstance(exc, Later)
        await self._retry_or_fail(job, describe_error(exc), retry_after, exact)
        return False

    def _lost(self, job: Job) -> None:
        logger.warning("job %d %s: taken over by another replica; this outcome dropped",
                       job.id, job.kind)  # fmt: skip

    async def _retry_or_fail(
        self, job: Job, reason: str, retry_after_s: float | None, exact: bool = False
    ) -> None:
        if job.attempts >= job.max_attempts:
            await self._fail(job, f"{reason} (gave up after {job.attempts} attempts)")
            return
        delay = max(self._delay_s(job.attempts), retry_after_s or 0.0)
        if exact and retry_after_s is not None:
            delay = retry_after_s
        if not await self._db.run(jobs.reschedule, job.id, reason, delay, job):
            self._lost(job)
            return
        logger.warning(
            "job %d %s attempt %d failed: %s; next in %.1f s",
            job.id,
            job.kind,
            job.attempts,
            reason,
            delay,
        )
        self._report(job.kind, "retry")

    async def _fail(self, job: Job, reason: str) -> None:
        if not await self._db.run(self._fail_in_transaction, job, reason):
            self._lost(job)
            return
        logger.error("job %d %s failed: %s", job.id, job.kind, reason)
        self._report(job.kind, "failed")

    def _fail_in_transaction(self, conn: Connection, job: Job, reason: str) -> bool:
        failed = jobs.fail(conn, job.id, reason, job)
        if failed is None:
            return False
        if self._on_failed is not None:
            self._on_failed(conn, failed)
        return True

    def _delay_s(self, attempts: int) -> float:
        return backoff_s(attempts, self._settings.backoff_base_s, self._settings.backoff_max_s)

    def _report(self, kind: str, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(kind, outcome)
