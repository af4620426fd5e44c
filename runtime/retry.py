"""Retrying for the programs' threads: waits a thread's stop flag can cut short."""

from __future__ import annotations

import threading
from collections.abc import Callable


def sleeper(stop: threading.Event) -> Callable[[float], None]:
    """tenacity's ``sleep``: waits ``seconds`` unless ``stop`` is set first, so a thread
    retrying a lost device or broker shuts down at once instead of after its backoff."""

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return sleep
