"""Stage timers: CPU and wall seconds by stage, exported as counters named by stage only."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.stages import Stages


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
