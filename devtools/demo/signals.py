"""Ctrl-C and SIGTERM for the demo: stop everything cleanly, promptly, exactly once.

The first SIGINT or SIGTERM raises Interrupted in the main thread, which unwinds the demo
into its clean-up. Two moments must not be cut short by it:

- starting a child: a signal between fork and the moment the child is recorded would leave
  it unknown, hence running; inside ``deferred()`` the signal waits until the child is
  recorded;
- the clean-up itself: inside ``shielded()`` a signal only makes it ``hurry`` (stop waiting
  for graceful exits and kill), so a second Ctrl-C never leaves half the processes behind.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException so no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports it: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + self.signum


class Signals:
    def __init__(self) -> None:
        self.received: int | None = None
        self.hurry = False
        self._deferring = 0
        self._shielded = False
        self._pending: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> Signals:
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if self._deferring == 0 and self._pending is not None:
            signum, self._pending = self._pending, None
            self._raise(signum)

    @contextmanager
    def shielded(self) -> Iterator[None]:
        self._shielded = True
        try:
            yield
        finally:
            self._shielded = False

    @property
    def exit_code(self) -> int | None:
        return 128 + self.received if self.received is not None else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._shielded or self.received is not None:
            self.received = self.received or signum
            self.hurry = True
            return
        if self._deferring:
            self._pending = signum
            return
        self._raise(signum)

    def _raise(self, signum: int) -> None:
        self.received = signum
        raise Interrupted(signum)
