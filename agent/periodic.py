"""A check the running agent repeats on a thread of its own (is the gateway's key ours, is
the microphone there): every ``interval()`` seconds, at once on ``recheck()`` (SIGHUP, a
refusal that says something changed), and stopped with the agent. Who shows the verdict
(the device state, the status file) subscribes to ``on_change``."""

from __future__ import annotations

import threading
from collections.abc import Callable


class PeriodicCheck:
    name = "check"

    def __init__(self) -> None:
        self.on_change: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def interval(self) -> float:
        raise NotImplementedError

    def run_check(self) -> None:
        """One check, on the thread; records its verdict itself."""
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def recheck(self) -> None:
        """Check again now. Never blocks."""
        self._wake.set()

    def changed(self) -> None:
        for hook in self.on_change:
            hook()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.interval())
            self._wake.clear()
            if self._stopping.is_set():
                return
            self.run_check()
