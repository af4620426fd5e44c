"""The one polling helper: returns the value once true, fails naming what it waited for."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.support.eventually import eventually, eventually_async


def test_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert eventually(lambda: next(counter) >= 3 and "ready", interval=0) == "ready"


def test_an_assertion_inside_means_not_yet() -> None:
    tries = itertools.count()

    def check() -> int:
        n = next(tries)
        assert n >= 2, "too early"
        return n

    assert eventually(check, interval=0) == 2


def test_times_out_naming_what_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"the manifest .*last: 0"):
        eventually(lambda: 0, timeout=0.05, interval=0.01, what="the manifest")


def test_the_async_variant_awaits_and_lets_the_loop_run() -> None:
    async def main() -> str:
        ready = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, ready.set)  # only if the loop runs

        async def check() -> str | None:
            return "ready" if ready.is_set() else None

        tries = itertools.count()

        def sync_check() -> int:
            n = next(tries)
            assert n >= 2, "too early"
            return n

        assert await eventually_async(sync_check, interval=0) == 2
        return await eventually_async(check, timeout=5, interval=0.01)

    assert asyncio.run(main()) == "ready"


def test_the_async_variant_times_out_naming_what_and_the_last_value() -> None:
    async def never() -> int:
        return 0

    with pytest.raises(AssertionError, match=r"the lease .*last: 0"):
        asyncio.run(eventually_async(never, timeout=0.05, interval=0.01, what="the lease"))
