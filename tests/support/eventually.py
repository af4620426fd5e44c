"""One way for a test to wait for something to become true, instead of a hand-written loop.

A test never sleeps and then asserts that something did *not* happen: it waits for a
sentinel that must come after it (see testing-notes), with this helper.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


NOT_YET = (AssertionError, OSError)  # an assert in the condition, or a server not up


class _Tries:
    """What both waits share: the deadline, the last value or exception seen, and the
    failure that names them."""

    def __init__(self, condition: Callable[[], Any], timeout: float, what: str) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout, self.what = timeout, what or repr(condition)
        self.last = "nothing yet"

    def seen(self, value: Any) -> Any:
        self.last = repr(value)
        return value

    def over(self) -> bool:
        return time.monotonic() >= self.deadline

    def failure(self) -> AssertionError:
        return AssertionError(f"not within {self.timeout} s: {self.what} (last: {self.last})")


def eventually(
    condition: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``condition`` until it returns something truthy, and return that; after
    ``timeout`` seconds fail, naming ``what`` and the last value (or exception) seen."""
    tries = _Tries(condition, timeout, what)
    while True:
        try:
            value = tries.seen(condition())
        except NOT_YET as exc:
            tries.seen(exc)
            value = None
        if value:
            return value
        if tries.over():
            raise tries.failure()
        time.sleep(interval)


@overload
async def eventually_async(
    condition: Callable[[], Awaitable[T | None]],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    what: str = ...,
) -> T: ...
@overload
async def eventually_async(
    condition: Callable[[], T | None],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    what: str = ...,
) -> T: ...
async def eventually_async(
    condition: Callable[[], Any],
    timeout: float = 10.0,  # noqa: ASYNC109 (the same signature as eventually's)
    interval: float = 0.05,
    what: str = "",
) -> Any:
    """``eventually`` for an ``async def`` test: the same, but it sleeps with asyncio (the
    event loop runs meanwhile), and ``condition`` may return an awaitable, awaited."""
    tries = _Tries(condition, timeout, what)
    while True:
        try:
            value = condition()
            value = tries.seen(await value if inspect.isawaitable(value) else value)
        except NOT_YET as exc:
            tries.seen(exc)
            value = None
        if value:
            return value
        if tries.over():
            raise tries.failure()
        await asyncio.sleep(interval)
