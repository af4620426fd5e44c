"""Stage timers: CPU and wall seconds by stage, exported as counters named by stage only."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.jobs import queue as jobs
from gateway.jobs.queue import Job
from gateway.jobs.worker import Worker
from gateway.settings import JobSettings
from gateway.stages import Stages
from gateway.store import Database
from tests.support.eventually import eventually_async


def _value(registry: CollectorRegistry, name: str, stage: str) -> float:
    value = registry.get_sample_value(name, {"stage": stage})
    assert value is not None, (name, stage)
    return value


def test_a_busy_stage_counts_its_cpu_and_a_waiting_one_only_its_wall() -> None:
    registry = CollectorRegistry()
    stages = Stages(registry)
    with stages.stage("busy"):
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            pass
    with stages.stage("sleepy"):
        time.sleep(0.02)
    with stages.waited("awaited"):
        time.sleep(0.01)
    assert _value(registry, "gateway_stage_count_total", "busy") == 1
    assert _value(registry, "gateway_stage_cpu_seconds_total", "busy") >= 0.02
    assert _value(registry, "gateway_stage_seconds_total", "sleepy") >= 0.02
    assert _value(registry, "gateway_stage_cpu_seconds_total", "sleepy") < 0.01
    assert _value(registry, "gateway_stage_cpu_seconds_total", "awaited") == 0
    assert _value(registry, "gateway_stage_seconds_total", "awaited") >= 0.01


def test_a_timed_function_records_the_thread_it_runs_on_and_passes_errors_through() -> None:
    registry = CollectorRegistry()
    stages = Stages(registry)

    def spin(seconds: float) -> str:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        return "done"

    timed = stages.timed("spin", spin)
    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(timed(0.02)))
    thread.start()
    thread.join()
    assert results == ["done"]
    assert _value(registry, "gateway_stage_cpu_seconds_total", "spin") >= 0.02

    def fails() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        stages.timed("fails", fails)()
    assert _value(registry, "gateway_stage_count_total", "fails") == 1
    assert b'stage="fails"' in generate_latest(registry)


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_job_counts_the_cpu_of_its_own_steps_not_its_neighbours(tmp_path: Path) -> None:
    """A job awaits (Blueprint, the store), so its stage is recorded around awaits: the
    CPU of its own steps on the event loop, none of the tasks that ran while it waited."""
    registry = CollectorRegistry()
    stages = Stages(registry)

    async def steps(_: Job) -> None:
        for _step in range(4):  # 4 x 10 ms of its own CPU, between awaits
            _spin(0.01)
            await asyncio.sleep(0.005)

    async def neighbour(stop: asyncio.Event) -> None:
        while not stop.is_set():  # busy while the job waits
            _spin(0.005)
            await asyncio.sleep(0)

    def recorded() -> float | None:
        return registry.get_sample_value("gateway_stage_count_total", {"stage": "job.steps"})

    async def main(db: Database) -> None:
        with db.transaction() as conn:
            jobs.enqueue(conn, "steps", {}, max_attempts=1)
        worker = Worker(db, {"steps": steps}, JobSettings(poll_interval_s=0.05), stages=stages)
        stop = asyncio.Event()
        busy = asyncio.create_task(neighbour(stop))
        worker.start()
        try:
            await eventually_async(recorded, timeout=5, what="the job ran")
        finally:
            stop.set()
            await busy
            await worker.stop()

    db = Database.open(tmp_path / "gateway.db")
    try:
        asyncio.run(main(db))
    finally:
        db.close()
    cpu = _value(registry, "gateway_stage_cpu_seconds_total", "job.steps")
    wall = _value(registry, "gateway_stage_seconds_total", "job.steps")
    assert 0.04 <= cpu < 0.06, cpu  # its own 40 ms, not the neighbour's
    assert wall > cpu + 0.02  # it waited too: its sleeps, and the neighbour's turns
