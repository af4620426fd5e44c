"""The one polling helper: returns the value once true, fails naming what it waited for."""

from __future__ import annotations

import itertools

import pytest

from tests.support.eventually import eventually


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
