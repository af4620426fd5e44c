"""Durable jobs: every outbound step is a row, run by a worker with backoff."""

from __future__ import annotations

from typing import Literal

JobState = Literal["queued", "running", "done", "failed"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed")
