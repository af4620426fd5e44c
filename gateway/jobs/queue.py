"""The durable job queue: every outbound step is a row, so a restart loses and repeats nothing.

A job is queued -> running -> done, or back to queued with a later ``next_run_at`` after a
temporary failure, or failed (visible, with its reason) when its attempts run out or
retrying cannot help. ``room-gateway jobs retry ID`` puts a failed job back in the queue.
Payloads hold ids only, never names or note text, so jobs can be listed and logged.

These functions take a connection inside the caller's transaction (see store.Database), so
a job is enqueued atomically with the state change that calls for it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from gateway.store import Connection, Row

JobState = Literal["queued", "running", "done", "failed"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed")
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    payload: dict[str, Any]
    state: JobState
    attempts: int
    max_attempts: int
    next_run_at: float
    last_error: str | None
    session_id: str | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Row) -> Job:
        return cls(
            id=row["id"],
            kind=row["kind"],
            payload=json.loads(row["payload"]),
            state=row["state"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            next_run_at=row["next_run_at"],
            last_error=row["last_error"],
            session_id=row["session_id"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


def enqueue(
    conn: Connection,
    kind: str,
    payload: dict[str, Any],
    *,
    max_attempts: int,
    session_id: str | None = None,
    key: str | None = None,
    delay_s: float = 0.0,
) -> int:
    """Add a job, due after ``delay_s``; returns its id.

    With ``key``, at most one job exists per key: while it is queued or running the same
    job is returned; once done or failed it is reset and queued again with ``payload``.
    """
    now = time.time()
    if key is not None:
        row = conn.execute("SELECT id, state FROM jobs WHERE dedupe_key = ?", (key,)).fetchone()
        if row is not None:
            if row["state"] in ("done", "failed"):
                conn.execute(
                    "UPDATE jobs SET state = 'queued', payload = ?, attempts = 0,"
                    " max_attempts = ?, next_run_at = ?, last_error = NULL, updated_at = ?"
                    " WHERE id = ?",
                    (json.dumps(payload), max_attempts, now + delay_s, now, row["id"]),
                )
            return row["id"]
    row = conn.execute(
        "INSERT INTO jobs (kind, payload, state, max_attempts, next_run_at, session_id,"
        " dedupe_key, created_at, updated_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)"
        " RETURNING id",
        (kind, json.dumps(payload), max_attempts, now + delay_s, session_id, key, now, now),
    ).fetchone()
    return int(row["id"])


def claim_due(conn: Connection, limit: int) -> list[Job]:
    """Mark up to ``limit`` due jobs running (oldest due first) and count the attempt."""
    now = time.time()
    rows = conn.execute(
        "SELECT id FROM jobs WHERE state = 'queued' AND next_run_at <= ?"
        " ORDER BY next_run_at, id LIMIT ?",
        (now, limit),
    ).fetchall()
    ids = [row["id"] for row in rows]
    for job_id in ids:
        conn.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ?"
            " WHERE id = ?",
            (now, job_id),
        )
    return [_get(conn, job_id) for job_id in ids]


def complete(conn: Connection, job_id: int) -> None:
    conn.execute(
        "UPDATE jobs SET state = 'done', last_error = NULL, updated_at = ? WHERE id = ?",
        (time.time(), job_id),
    )


def reschedule(conn: Connection, job_id: int, error: str, delay_s: float) -> None:
    now = time.time()
    conn.execute(
        "UPDATE jobs SET state = 'queued', last_error = ?, next_run_at = ?, updated_at = ?"
        " WHERE id = ?",
        (error[:MAX_ERROR_CHARS], now + delay_s, now, job_id),
    )


def fail(conn: Connection, job_id: int, error: str) -> Job:
    conn.execute(
        "UPDATE jobs SET state = 'failed', last_error = ?, updated_at = ? WHERE id = ?",
        (error[:MAX_ERROR_CHARS], time.time(), job_id),
    )
    return _get(conn, job_id)


def retry(conn: Connection, job_id: int) -> Job | None:
    """Queue a failed job again with fresh attempts; None if there is no such failed job."""
    now = time.time()
    cursor = conn.execute(
        "UPDATE jobs SET state = 'queued', attempts = 0, next_run_at = ?, updated_at = ?"
        " WHERE id = ? AND state = 'failed'",
        (now, now, job_id),
    )
    return _get(conn, job_id) if cursor.rowcount else None


def requeue_running(conn: Connection) -> int:
    """After a crash: jobs left running by the dead process are due again now.

    Safe because every handler is idempotent (Blueprint records are looked up by external
    id before they are created). Only one gateway process uses a SQLite file.
    """
    now = time.time()
    cursor = conn.execute(
        "UPDATE jobs SET state = 'queued', next_run_at = ?, updated_at = ? WHERE state = 'running'",
        (now, now),
    )
    return cursor.rowcount


def get(conn: Connection, job_id: int) -> Job | None:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return Job.from_row(row) if row is not None else None


def list_jobs(conn: Connection, state: JobState | None = None, limit: int = 100) -> list[Job]:
    if state is None:
        rows = conn.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
    else:
        rows = conn.execute(
            "SELECT * FROM jobs WHERE state = ? ORDER BY id DESC LIMIT ?", (state, limit)
        )
    return [Job.from_row(row) for row in rows.fetchall()]


def for_session(conn: Connection, session_id: str) -> list[Job]:
    rows = conn.execute("SELECT * FROM jobs WHERE session_id = ? ORDER BY id", (session_id,))
    return [Job.from_row(row) for row in rows.fetchall()]


def counts(conn: Connection) -> dict[tuple[str, str], int]:
    """Number of jobs per (kind, state), for metrics."""
    rows = conn.execute("SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY kind, state")
    return {(row["kind"], row["state"]): row["n"] for row in rows.fetchall()}


def next_due_at(conn: Connection) -> float | None:
    row = conn.execute("SELECT MIN(next_run_at) FROM jobs WHERE state = 'queued'").fetchone()
    return row[0]


def _get(conn: Connection, job_id: int) -> Job:
    job = get(conn, job_id)
    assert job is not None, job_id
    return job
