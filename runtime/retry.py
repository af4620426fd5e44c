"""Retrying, once for both programs: one backoff with jitter, one log line, and retrying for
threads that a stop flag cuts short.

The backoff is exponential from ``base_s`` with a random extra of up to ``base_s``, and
the whole wait is capped at ``max_s``: the jitter keeps many devices (or jobs) that failed
together from coming back in step, and the cap is a promise to the operator (a broker back
after an hour is used within ``max_s``). The job queue needs only the number (backoff_s);
the loops built on tenacity take wait_backoff, log_retry and, in a thread, thread_retrying.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

import tenacity


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """The wait after failed attempt number ``attempt`` (1 is the first failure)."""
    try:
        exponential = base_s * 2.0 ** (max(attempt, 1) - 1)
    except OverflowError:
        return max_s
    return min(exponential + random.uniform(0, base_s), max_s)


def wait_backoff(base_s: float, max_s: float) -> Callable[[tenacity.RetryCallState], float]:
    """backoff_s as tenacity's ``wait``."""

    def wait(state: tenacity.RetryCallState) -> float:
        return backoff_s(state.attempt_number, base_s, max_s)

    return wait


def log_retry(
    logger: logging.Logger, what: str, every: int = 1
) -> Callable[[tenacity.RetryCallState], None]:
    """tenacity's ``before_sleep``: ``WHAT: ERROR; attempt N failed, retrying in S s``, for
    the first failure and then every ``every``-th (a device or broker can be away for
    hours: a line a minute says it is still being tried without filling the journal)."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        attempt = state.attempt_number
        if attempt != 1 and attempt % every != 0:
            return
        error = state.outcome.exception() if state.outcome is not None else None
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning("%s: %s; attempt %d failed, retrying in %.3f s", what, error, attempt, sleep)

    return before_sleep


def thread_retrying(
    stop: threading.Event,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    wait: Callable[[tenacity.RetryCallState], float],
    *,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> tenacity.Retrying:
    """Retry ``retry_on`` until it succeeds or ``stop`` is set; a wait ends the moment
    ``stop`` is set (``sleep`` replaces the wait when something else may also end it), so
    a thread retrying a lost device or broker shuts down at once, not after its backoff.
    The last error is raised when stopped."""

    def wait_for_stop(seconds: float) -> None:
        stop.wait(seconds)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=wait,
        stop=lambda _state: stop.is_set(),
        sleep=sleep or wait_for_stop,
        before_sleep=before_sleep,
        reraise=True,
    )
