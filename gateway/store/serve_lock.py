"""One ``serve`` per SQLite file: a second one refuses to start, naming the first.

A SQLite store belongs to one host and one service: two on one file would take turns at
its single write lock for every request, and both would hold the same replica name (the
same MQTT client id, the same job leases), knocking each other off. So ``serve`` holds an
exclusive ``flock`` on ``<database>.lock`` for as long as it runs; the kernel releases it
when the process ends, however it ends (SIGKILL included), so a stale lock never blocks a
restart. The file says who holds it (pid, host, start time: no secrets) for the refusal.

Admin commands (``jobs``, ``device``, ...) do not take it: they are short transactions that
WAL lets run beside the service. PostgreSQL needs no lock: any number of replicas may serve.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import suppress
from pathlib import Path
from typing import IO

from gateway.store.errors import StoreError


class AlreadyServed(StoreError):
    """Another process serves this SQLite file."""


class ServeLock:
    """Held from ``acquire`` until the process exits (or ``release``)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(database.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> ServeLock:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the lock file ({exc.strerror})") from None
        file = os.fdopen(fd, "r+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(file.read())
            file.close()
            raise AlreadyServed(
                f"{self.database} is already served by {holder}: stop it first, or"
                " share a PostgreSQL store (store.url) to run several gateways"
            ) from None
        file.seek(0)
        file.truncate()
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        file.write(json.dumps(record) + "\n")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        if self._file is not None:
            with suppress(OSError):
                self._file.close()
            self._file = None


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder["since"])))
        return f"pid {int(holder['pid'])} on {holder['host']} (since {since})"
    except (ValueError, KeyError, TypeError):
        return "another process (its lock file says no more)"
