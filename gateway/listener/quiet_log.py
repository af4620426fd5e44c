"""Log lines that do not multiply: an event that can happen a thousand times a second
under attack (a connection evicted, a deadline met, an accept that failed) is logged
once, then counted, and the count is logged with the next one after ``interval_s``."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

# What asyncio reports when accept() fails for want of descriptors or memory: one line
# (it retries by itself a second later), not a traceback per attempt.
RESOURCE_MESSAGES = ("socket.accept() out of system resource",)


class RepeatLimited:
    def __init__(self, log: logging.Logger, interval_s: float = 60.0) -> None:
        self._log = log
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """None: ``key`` was logged less than ``interval_s`` ago (counted); otherwise log
        it now, with this many like it held back since."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        held = self.admit(key)
        if held is None:
            return
        if held:
            message += " (and %d more like it since the last such line)"
            args = (*args, held)
        self._log.log(level, message, *args)


def install_loop_handler(loop: asyncio.AbstractEventLoop, limited: RepeatLimited) -> None:
    """The event loop's reports of errors nobody handled, repeat-limited; a failed accept
    is one line naming the cause, without the traceback asyncio prints every time."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "event loop error"))
        if message in RESOURCE_MESSAGES:
            exc = context.get("exception")
            cause = getattr(exc, "strerror", None) or type(exc).__name__
            limited.log(
                logging.ERROR,
                message,
                "http: cannot accept a connection: %s (it retries; raise LimitNOFILE or"
                " lower http.max_connections)",
                cause,
            )
            return
        held = limited.admit(message)
        if held is not None:
            if held:
                context = {**context, "message": f"{message} (and {held} more like it)"}
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
