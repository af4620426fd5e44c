"""One way for a test to wait for something to become true, instead of a hand-written loop.

A test never sleeps and then asserts that something did *not* happen: it waits for a
sentinel that must come after it (see testing-notes), with this helper.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    condition: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``condition`` until it returns something truthy, and return that; after
    ``timeout`` seconds fail, naming ``what`` and the last value (or exception) seen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (AssertionError, OSError) as exc:  # not yet: an assert, or a server not up
            value, last = None, repr(exc)
        else:
            last = repr(value)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"not within {timeout} s: {what or repr(condition)} (last: {last})"
            )
        time.sleep(interval)
