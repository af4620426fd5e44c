"""runtime.retry: one backoff, one log line, retrying a stop flag cuts short."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from runtime.retry import backoff_s, log_retry, thread_retrying, wait_backoff
from tests.support.eventually import eventually


def test_the_backoff_doubles_with_at_most_one_base_of_jitter_and_is_capped() -> None:
    for attempt, low in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)]:
        waits = [backoff_s(attempt, 1.0, 60.0) for _ in range(200)]
        assert all(low <= wait <= low + 1.0 for wait in waits)
        assert len(set(waits)) > 1, "jittered"
    assert all(backoff_s(n, 1.0, 60.0) == 60.0 for n in (7, 50, 5000))


def test_a_retry_is_logged_first_and_then_every_nth_time(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 6:
            raise ConnectionError(f"refused {calls}")
        return "done"

    log = logging.getLogger("test.retry")
    retrying = thread_retrying(
        threading.Event(),
        ConnectionError,
        lambda _state: 0.0,
        before_sleep=log_retry(log, "thing: not there", every=2),
    )
    with caplog.at_level(logging.WARNING, "test.retry"):
        assert retrying(flaky) == "done"
    assert [r.getMessage() for r in caplog.records] == [
        "thing: not there: refused 1; attempt 1 failed, retrying in 0.000 s",
        "thing: not there: refused 2; attempt 2 failed, retrying in 0.000 s",
        "thing: not there: refused 4; attempt 4 failed, retrying in 0.000 s",
    ]


def test_stopping_cuts_a_long_wait_short_and_raises_the_last_error() -> None:
    stop = threading.Event()
    attempts: list[float] = []

    def never() -> None:
        attempts.append(time.monotonic())
        raise ConnectionError("still down")

    retrying = thread_retrying(stop, ConnectionError, wait_backoff(600.0, 600.0))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            retrying(never)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    eventually(lambda: attempts, what="the first attempt")
    stopped_at = time.monotonic()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive(), "a 600 s wait was not cut short"
    assert time.monotonic() - stopped_at < 2
    assert [type(e) for e in errors] == [ConnectionError]
