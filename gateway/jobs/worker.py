"""The job worker: an asyncio task that runs due jobs, a few at a time, with backoff.

Handlers say how an attempt ended by returning (done), raising Retryable (try again later,
no earlier than ``retry_after_s``), Permanent (retrying cannot help: failed now) or
anything else (an unexpected error: retried like Retryable until attempts run out, then
failed). The reason stored and logged is ``describe_error``'s, which never includes data
a handler was working on, because a pydantic error, for one, would echo names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from pydantic import ValidationError
from tenacity import RetryCallState
from tenacity.wait import wait_exponential_jitter

from gateway.jobs import queue as jobs
from gateway.jobs.queue import Job
from gateway.settings import JobSettings
from gateway.store import Connection, Database, StoreError

logger = logging.getLogger(__name__)

Handler = Callable[[Job], Awaitable[None]]
OnFailed = Callable[[Connection, Job], None]
"""Runs inside the transaction that marks a job failed (e.g. to fail its session)."""
OnOutcome = Callable[[str, str], None]
"""Called with (kind, outcome) after every attempt: done, retry or failed; for metrics."""


class Retryable(Exception):
    """This attempt failed for a reason that may pass; try again later."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


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
    """Claims due jobs and runs their handlers; ``wake()`` after enqueuing to skip the poll."""

    def __init__(
        self,
        db: Database,
        handlers: dict[str, Handler],
        settings: JobSettings,
        *,
        on_failed: OnFailed | None = None,
        on_outcome: OnOutcome | None = None,
    ) -> None:
        self._db = db
        self._handlers = handlers
        self._settings = settings
        self._on_failed = on_failed
        self._on_outcome = on_outcome
        self._backoff = wait_exponential_jitter(
            multiplier=settings.backoff_base_s,
            max=settings.backoff_max_s,
            jitter=settings.backoff_base_s,
        )
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.last_tick = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="job-worker")

    async def stop(self) -> None:
        """Stop claiming and cancel attempts in flight; they are queued again on next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    def wake(self) -> None:
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
        requeued = await self._db.run(jobs.requeue_running)
        if requeued:
            logger.info("resuming %d jobs interrupted by the last shutdown", requeued)
        while True:
            self.last_tick = time.monotonic()
            self._wake.clear()
            free = self._settings.concurrency - len(self._running)
            if free > 0:
                try:
                    claimed = await self._db.run(jobs.claim_due, free)
                except StoreError as exc:
                    logger.error("cannot claim jobs: %s", type(exc).__name__)
                    claimed = []
                for job in claimed:
                    self._running[job.id] = asyncio.create_task(self._execute(job))
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation that stop() sends when the event is set at the same moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(await self._idle_s()):
                    await self._wake.wait()

    async def _idle_s(self) -> float:
        """Sleep until the next job is due, at most one poll interval (other processes,
        such as ``room-gateway jobs retry``, add work without waking us)."""
        poll = self._settings.poll_interval_s
        if len(self._running) >= self._settings.concurrency:
            return poll
        due = await self._db.run(jobs.next_due_at, write=False)
        if due is None:
            return poll
        return min(poll, max(0.0, due - time.time()))

    async def _execute(self, job: Job) -> None:
        try:
            await self._attempt(job)
        finally:
            self._running.pop(job.id, None)
            for future in self._waiters.pop(job.id, []):
                if not future.done():
                    future.set_result(None)
            self.wake()

    async def _attempt(self, job: Job) -> None:
        handler = self._handlers.get(job.kind)
        try:
            if handler is None:
                raise Permanent(f"no handler for job kind {job.kind}")
            await handler(job)
        except asyncio.CancelledError:
            raise
        except Permanent as exc:
            await self._fail(job, describe_error(exc))
        except Exception as exc:
            retry_after = exc.retry_after_s if isinstance(exc, Retryable) else None
            if not isinstance(exc, Retryable):
                # Not logger.exception: the traceback's last line is str(exc), which may
                # hold what the handler was working on. Type and place are enough to debug.
                logger.error(
                    "job %d %s: unexpected %s at %s",
                    job.id,
                    job.kind,
                    type(exc).__name__,
                    raised_at(exc),
                )
            await self._retry_or_fail(job, describe_error(exc), retry_after)
        else:
            await self._db.run(jobs.complete, job.id)
            logger.info("job %d %s done (attempt %d)", job.id, job.kind, job.attempts)
            self._report(job.kind, "done")

    async def _retry_or_fail(self, job: Job, reason: str, retry_after_s: float | None) -> None:
        if job.attempts >= job.max_attempts:
            await self._fail(job, f"{reason} (gave up after {job.attempts} attempts)")
            return
        delay = max(self._delay_s(job.attempts), retry_after_s or 0.0)
        await self._db.run(jobs.reschedule, job.id, reason, delay)
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
        await self._db.run(self._fail_in_transaction, job.id, reason)
        logger.error("job %d %s failed: %s", job.id, job.kind, reason)
        self._report(job.kind, "failed")

    def _fail_in_transaction(self, conn: Connection, job_id: int, reason: str) -> None:
        failed = jobs.fail(conn, job_id, reason)
        if self._on_failed is not None:
            self._on_failed(conn, failed)

    def _delay_s(self, attempts: int) -> float:
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempts
        return float(self._backoff(state))

    def _report(self, kind: str, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(kind, outcome)
