"""One-time enrollment codes (protocol/enrollment.py): made by `device add`, redeemed once
by `room-agent enroll`.

The ``enrollments`` table holds a lookup id and the device's files sealed with a key
derived from the code: the code itself is shown once and kept nowhere. A new code for a
room replaces its unused ones (a rotation makes the old files worthless anyway). Redeeming
marks the row used and deletes the sealed files in the same transaction, so a second try,
or anyone who sees the code afterwards, gets nothing. Wrong lookups are counted per client
address and refused for a while after too many (:class:`GuessLimiter`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from gateway.store import Connection
from protocol.enrollment import DeviceFiles, lookup_id, new_code, normalize_code, seal_files

GUESSES_PER_WINDOW = 10
GUESS_WINDOW_S = 60.0


@dataclass(frozen=True)
class Enrollment:
    code: str  # shown once, to the person who ran device add
    room_id: str
    expires_at: float


class EnrollmentRefused(Exception):
    """Unknown, used or expired: one answer for all three (no oracle for guessers)."""


def create(conn: Connection, files: DeviceFiles, ttl_s: float) -> Enrollment:
    code = new_code()
    raw = normalize_code(code)
    now = time.time()
    conn.execute(
        "DELETE FROM enrollments WHERE room_id = ? AND used_at IS NULL", (files.device_id,)
    )
    conn.execute(
        "INSERT INTO enrollments (id, room_id, sealed_bundle, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (lookup_id(raw), files.device_id, seal_files(files, raw), now, now + ttl_s),
    )
    return Enrollment(code=code, room_id=files.device_id, expires_at=now + ttl_s)


def redeem(conn: Connection, lookup: str) -> tuple[str, str]:
    """(room id, sealed files) for a valid, unused, unexpired lookup id; used up at once."""
    row = conn.execute(
        "SELECT room_id, sealed_bundle, expires_at, used_at FROM enrollments WHERE id = ?",
        (lookup,),
    ).fetchone()
    now = time.time()
    if row is None or row[1] is None or row[3] is not None or row[2] < now:
        raise EnrollmentRefused()
    cursor = conn.execute(
        "UPDATE enrollments SET used_at = ?, sealed_bundle = NULL WHERE id = ? AND used_at IS NULL",
        (now, lookup),
    )
    if cursor.rowcount != 1:  # another request used it meanwhile
        raise EnrollmentRefused()
    return str(row[0]), str(row[1])


def forget_expired(conn: Connection) -> None:
    """The sealed files of codes nobody used are deleted once they expire."""
    conn.execute(
        "UPDATE enrollments SET sealed_bundle = NULL"
        " WHERE expires_at < ? AND sealed_bundle IS NOT NULL",
        (time.time(),),
    )


class GuessLimiter:
    """At most GUESSES_PER_WINDOW wrong lookups per client address per GUESS_WINDOW_S.
    In memory, per replica: an 80-bit code needs no more, this only keeps the log and
    the store quiet under a scan."""

    def __init__(self, limit: int = GUESSES_PER_WINDOW, window_s: float = GUESS_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._lock = threading.Lock()
        self._wrong: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> float | None:
        """Seconds to wait before this client may try again, or None."""
        now = time.monotonic()
        with self._lock:
            wrong = self._wrong.get(client)
            if wrong is None:
                return None
            while wrong and wrong[0] < now - self.window_s:
                wrong.popleft()
            if len(wrong) < self.limit:
                return None
            return max(1.0, wrong[0] + self.window_s - now)

    def wrong(self, client: str) -> None:
        with self._lock:
            if len(self._wrong) > 10_000:  # a scan from everywhere: start over
                self._wrong.clear()
            self._wrong.setdefault(client, deque()).append(time.monotonic())
