"""The durable job queue: every outbound step is a row, so a restart loses and repeats nothing.

A job is queued -> running -> done, or back to queued with a later ``next_run_at`` after a
temporary failure, or failed (visible, with its reason) when its attempts run out or
retrying cannot help. ``room-gateway jobs retry ID`` puts a failed job back in the queue.
Payloads hold ids only, never names or note text, so jobs can be listed and logged.

Replicas share the queue. A replica claims a job under a lease (``lease_owner``, its
replica name and incarnation; ``lease_expires_at``) and renews it while the job runs; a
running job whose lease has expired (its replica died, hung or lost the database) is due
again and the next claim by any replica takes it over. Claims on PostgreSQL are
``FOR UPDATE SKIP LOCKED`` at READ COMMITTED, so replicas claiming at once take different
rows without waiting for or aborting each other; SQLite has one writer at a time, so the
same statements give the same semantics there. Every claim counts an attempt, and the
attempt number with the owner is the claim's fence: the outcome of an attempt whose lease
was taken over is refused (``complete``/``reschedule``/``fail`` with ``held``), so a slow
replica cannot undo what the one that took over did. Handlers are idempotent (Blueprint
records are looked up by external id before they are created; an upload Blueprint already
has answers 409), so a job run twice does its work once.

These functions take a connection inside the caller's transaction (see store.Database), so
a job is enqueued atomically with the state change that calls for it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

from gateway.jobs import JOB_STATES as JOB_STATES
from gateway.jobs import JobState as JobState
from gateway.store import Connection, Row

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
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    taken_over_from: str | None = None  # set by the claim that took an expired lease over

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
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
        )


@dataclass(frozen=True)
class Lease:
    """A job handed to a worker as it is queued: leased to ``owner`` for ``seconds``."""

    owner: str
    seconds: float


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
    job_id, _ = enqueue_leased(
        conn, kind, payload, max_attempts=max_attempts, session_id=session_id, key=key,
        delay_s=delay_s, lease=None,
    )  # fmt: skip
    return job_id


def enqueue_leased(
    conn: Connection,
    kind: str,
    payload: dict[str, Any],
    *,
    max_attempts: int,
    session_id: str | None,
    key: str | None,
    delay_s: float,
    lease: Lease | None,
) -> tuple[int, Job | None]:
    """``enqueue``, and with ``lease`` a job due now that this call writes (new, or reset
    from done or failed) is written already claimed by ``lease.owner``, its first attempt
    counted: the job that comes back is that claim, for the owner to run once the
    transaction commits, without a claim of its own. If the owner dies first, the lease
    runs out and any replica takes the job over, as after any claim."""
    now = time.time()
    if lease is None or delay_s > 0:
        state, attempts, owner, expires = "queued", 0, None, None
    else:
        state, attempts, owner, expires = "running", 1, lease.owner, now + lease.seconds
    if key is not None:
        row = conn.execute("SELECT id, state FROM jobs WHERE dedupe_key = ?", (key,)).fetchone()
        if row is not None:
            if row["state"] not in ("done", "failed"):
                return row["id"], None
            row = conn.execute(
                "UPDATE jobs SET state = ?, payload = ?, attempts = ?, max_attempts = ?,"
                " next_run_at = ?, last_error = NULL, lease_owner = ?, lease_expires_at = ?,"
                " updated_at = ? WHERE id = ? RETURNING *",
                (state, json.dumps(payload), attempts, max_attempts, now + delay_s, owner,
                 expires, now, row["id"]),
            ).fetchone()  # fmt: skip
            return row["id"], Job.from_row(row) if owner is not None else None
    row = conn.execute(
        "INSERT INTO jobs (kind, payload, state, attempts, max_attempts, next_run_at,"
        " session_id, dedupe_key, lease_owner, lease_expires_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (kind, json.dumps(payload), state, attempts, max_attempts, now + delay_s, session_id,
         key, owner, expires, now, now),
    ).fetchone()  # fmt: skip
    return int(row["id"]), Job.from_row(row) if owner is not None else None


# A running job whose lease has run out (NULL: claimed before leases existed) is due again.
_DUE = (
    "(state = 'queued' AND next_run_at <= ?)"
    " OR (state = 'running' AND COALESCE(lease_expires_at, 0) <= ?)"
)
# The claim an outcome belongs to is still the job's: nobody took its lease over.
_HELD = " AND state = 'running' AND lease_owner = ? AND attempts = ?"


def claim_due(
    conn: Connection, limit: int, owner: str = "local", lease_s: float = 30.0
) -> list[Job]:
    """Lease up to ``limit`` due jobs to ``owner`` for ``lease_s`` (oldest due first),
    counting the attempt; expired leases of other replicas are taken over.

    Run it with ``isolation="read_committed"``: the SELECT skips rows another replica's
    claim holds (PostgreSQL), instead of waiting for them and aborting as a conflict."""
    now = time.time()
    rows = conn.execute(
        f"SELECT id, state, lease_owner FROM jobs WHERE {_DUE}"
        " ORDER BY next_run_at, id LIMIT ?" + conn.dialect.skip_locked,
        (now, now, limit),
    ).fetchall()
    claimed: list[Job] = []
    for row in rows:
        conn.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?,"
            " lease_expires_at = ?, updated_at = ? WHERE id = ?",
            (owner, now + lease_s, now, row["id"]),
        )
        job = _get(conn, row["id"])
        if row["state"] == "running":
            job = dataclasses.replace(job, taken_over_from=row["lease_owner"] or "unknown")
        claimed.append(job)
    return claimed


def renew(conn: Connection, owner: str, job_ids: list[int], lease_s: float) -> list[int]:
    """Extend ``owner``'s leases on ``job_ids``; returns those it still holds (the others
    were taken over by another replica after their lease ran out)."""
    if not job_ids:
        return []
    placeholders = ", ".join("?" for _ in job_ids)
    rows = conn.execute(
        f"UPDATE jobs SET lease_expires_at = ? WHERE id IN ({placeholders})"
        " AND state = 'running' AND lease_owner = ? RETURNING id",
        (time.time() + lease_s, *job_ids, owner),
    ).fetchall()
    return sorted(row["id"] for row in rows)


def complete(conn: Connection, job_id: int, held: Job | None = None) -> bool:
    """Done; with ``held`` (the claimed job), only if that claim still holds it."""
    fence, args = _fence(held)
    cursor = conn.execute(
        "UPDATE jobs SET state = 'done', last_error = NULL, lease_owner = NULL,"
        " lease_expires_at = NULL, updated_at = ? WHERE id = ?" + fence,
        (time.time(), job_id, *args),
    )
    return cursor.rowcount == 1


def reschedule(
    conn: Connection, job_id: int, error: str, delay_s: float, held: Job | None = None
) -> bool:
    now = time.time()
    fence, args = _fence(held)
    cursor = conn.execute(
        "UPDATE jobs SET state = 'queued', last_error = ?, next_run_at = ?, lease_owner = NULL,"
        " lease_expires_at = NULL, updated_at = ? WHERE id = ?" + fence,
        (error[:MAX_ERROR_CHARS], now + delay_s, now, job_id, *args),
    )
    return cursor.rowcount == 1


def fail(conn: Connection, job_id: int, error: str, held: Job | None = None) -> Job | None:
    """Failed for good; None if ``held`` no longer holds it (taken over elsewhere)."""
    fence, args = _fence(held)
    cursor = conn.execute(
        "UPDATE jobs SET state = 'failed', last_error = ?, lease_owner = NULL,"
        " lease_expires_at = NULL, updated_at = ? WHERE id = ?" + fence,
        (error[:MAX_ERROR_CHARS], time.time(), job_id, *args),
    )
    return _get(conn, job_id) if cursor.rowcount == 1 else None


def _fence(held: Job | None) -> tuple[str, tuple[object, ...]]:
    if held is None:
        return "", ()
    return _HELD, (held.lease_owner, held.attempts)


def settle(conn: Connection, key: str) -> bool:
    """The queued job with ``key`` is no longer needed (what it waited for happened):
    done now. False if there is none queued (running, done, or never made)."""
    cursor = conn.execute(
        "UPDATE jobs SET state = 'done', updated_at = ? WHERE dedupe_key = ? AND state = 'queued'",
        (time.time(), key),
    )
    return cursor.rowcount == 1


def retry(conn: Connection, job_id: int) -> Job | None:
    """Queue a failed job again with fresh attempts; None if there is no such failed job."""
    now = time.time()
    cursor = conn.execute(
        "UPDATE jobs SET state = 'queued', attempts = 0, next_run_at = ?, updated_at = ?"
        " WHERE id = ? AND state = 'failed'",
        (now, now, job_id),
    )
    return _get(conn, job_id) if cursor.rowcount else None


def release_leases(conn: Connection, replica: str, everyone: bool = False) -> int:
    """At start: jobs an earlier run of ``replica`` left running are due now, rather than
    when their leases run out (that run is over: this is its successor). ``everyone``
    releases every running job: only for SQLite, where the serve lock proves no other
    process runs jobs. Safe either way, because handlers are idempotent."""
    now = time.time()
    mine = "" if everyone else " AND (lease_owner = ? OR substr(lease_owner, 1, ?) = ?)"
    args: tuple[object, ...] = () if everyone else (replica, len(replica) + 1, f"{replica}/")
    cursor = conn.execute(
        "UPDATE jobs SET state = 'queued', next_run_at = ?, lease_owner = NULL,"
        " lease_expires_at = NULL, updated_at = ? WHERE state = 'running'" + mine,
        (now, now, *args),
    )
    return cursor.rowcount


def release_owned(conn: Connection, owner: str) -> int:
    """At a clean stop: ``owner``'s running jobs are due now, for any replica to take."""
    now = time.time()
    cursor = conn.execute(
        "UPDATE jobs SET state = 'queued', next_run_at = ?, lease_owner = NULL,"
        " lease_expires_at = NULL, updated_at = ? WHERE state = 'running' AND lease_owner = ?",
        (now, now, owner),
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
    """When the next job is due: a queued one's time, or a running one's lease expiry."""
    row = conn.execute(
        "SELECT MIN(CASE WHEN state = 'queued' THEN next_run_at"
        " ELSE COALESCE(lease_expires_at, 0) END) FROM jobs"
        " WHERE state IN ('queued', 'running')"
    ).fetchone()
    return row[0]


def _get(conn: Connection, job_id: int) -> Job:
    job = get(conn, job_id)
    assert job is not None, job_id
    return job
