"""One thread for the running agent's once-a-second looks: the privacy flag file, the
device's own problems for the room's indicator.

Each look costs a few microseconds; the wake-up that runs it costs a Pi-class core far
more (a woken thread runs on cold caches and takes the GIL), so the looks share one
thread and one wake-up a second instead of a thread each. A look that fails is logged
and the others still run: a broken indicator must not stop the privacy switch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.periodic import PeriodicCheck

log = logging.getLogger(__name__)

TICK_S = 1.0  # how soon a look sees a change (`room-agent privacy on`, a full spool)


class Ticker(PeriodicCheck):
    name = "ticker"

    def __init__(self, period_s: float = TICK_S) -> None:
        super().__init__()
        self.period_s = period_s
        self._looks: list[tuple[str, Callable[[], None]]] = []

    @property
    def native_id(self) -> int | None:
        """The thread's id while it runs (tests count its wake-ups)."""
        return self._thread.native_id if self._thread is not None else None

    def add(self, what: str, look: Callable[[], None]) -> None:
        """Run ``look`` every tick, from the next start (``what`` names it in the log)."""
        self._looks.append((what, look))

    def interval(self) -> float:
        return self.period_s

    def run_check(self) -> None:
        for what, look in self._looks:
            try:
                look()
            except Exception:  # one look's bug must not stop the others
                log.exception("ticker: the %s look failed", what)
