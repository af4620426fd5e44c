"""One interface for every indicator: show a room state; drivers are small and optional."""

from __future__ import annotations

import logging
from typing import Protocol

from agent.feedback.states import RoomState

log = logging.getLogger(__name__)


class Indicator(Protocol):
    name: str

    def show(self, state: RoomState) -> None:
        """Show ``state`` now (return fast: it is called on the agent's threads)."""

    def close(self) -> None:
        """Turn off and let go of the hardware."""


class Indicators:
    """Every configured indicator as one: a failing driver is logged, never raised."""

    def __init__(self, drivers: list[Indicator]) -> None:
        self.drivers = drivers
        self.state: RoomState | None = None

    def show(self, state: RoomState) -> None:
        self.state = state
        for driver in self.drivers:
            try:
                driver.show(state)
            except Exception as exc:
                log.warning("feedback: %s: %s not shown (%s)", driver.name, state,
                            type(exc).__name__)  # fmt: skip

    def close(self) -> None:
        for driver in self.drivers:
            try:
                driver.close()
            except Exception as exc:
                log.warning("feedback: %s not closed (%s)", driver.name, type(exc).__name__)
