"""Where a chunk's and a session's time goes: CPU and wall seconds by stage, as counters.

A stage is a stretch of code that runs on one thread without awaiting (a store function
inside its transaction, the seal's opening on a worker thread, the header check on the
event loop), so ``time.thread_time`` over it is that stage's CPU and nobody else's; a
stage that awaits (a Blueprint call, the body arriving) is recorded with wall time only.
Wall much larger than CPU means the stage waited: for the disk (fsync), the database, the
network, or the GIL. Three counters, labelled by the stage's name only (a fixed set: no
ids, nothing of a person), so ``rate()`` gives CPU-ms per call; the benchmarks read them.
Cost: two clock reads and three counter increments per stage (a few microseconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Generator, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from prometheus_client import CollectorRegistry, Counter

P = ParamSpec("P")
T = TypeVar("T")


class Stages:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._count = Counter(
            "gateway_stage_count", "Times a stage ran, by stage", ["stage"], registry=registry
        )
        self._cpu = Counter(
            "gateway_stage_cpu_seconds",
            "CPU seconds of the thread running a stage (0 for stages that await), by stage",
            ["stage"],
            registry=registry,
        )
        self._wall = Counter(
            "gateway_stage_seconds", "Wall seconds spent in a stage, by stage", ["stage"],
            registry=registry,
        )  # fmt: skip
        self._children: dict[str, tuple[Counter, Counter, Counter]] = {}

    def record(self, stage: str, cpu_s: float, wall_s: float) -> None:
        children = self._children.get(stage)
        if children is None:
            children = (self._count.labels(stage), self._cpu.labels(stage),
                        self._wall.labels(stage))  # fmt: skip
            self._children[stage] = children
        count, cpu, wall = children
        count.inc()
        if cpu_s > 0:
            cpu.inc(cpu_s)
        wall.inc(max(0.0, wall_s))

    def stage(self, name: str) -> _Stage:
        """Time a block that does not await (its CPU is this thread's)."""
        return _Stage(self, name)

    @contextmanager
    def waited(self, name: str) -> Iterator[None]:
        """Time a block that awaits: wall only (the loop thread runs others meanwhile)."""
        wall = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, 0.0, time.perf_counter() - wall)

    async def awaited(self, name: str, work: Coroutine[Any, Any, T]) -> T:
        """Await ``work`` as stage ``name``: its wall time, and the CPU of its own steps on
        the event loop (what runs between two of its awaits runs on the loop's thread
        alone, so ``thread_time`` over each step is its CPU and no other task's). What it
        hands to other threads (the store's) or to other tasks is not in it."""
        meter = _CpuMeter(work)
        wall = time.perf_counter()
        try:
            return await meter
        finally:
            self.record(name, meter.cpu_s, time.perf_counter() - wall)

    def timed(self, name: str, fn: Callable[P, T]) -> Callable[P, T]:
        """``fn`` recording itself as stage ``name`` wherever it runs (a worker thread)."""

        def run(*args: P.args, **kwargs: P.kwargs) -> T:
            with self.stage(name):
                return fn(*args, **kwargs)

        return run


class StageLog:
    """Stages timed where the counters are not (an ingest worker process): kept as a
    list of (name, CPU seconds, wall seconds), which the gateway's ``Stages.record``s."""

    def __init__(self) -> None:
        self.timed: list[tuple[str, float, float]] = []

    def record(self, stage: str, cpu_s: float, wall_s: float) -> None:
        self.timed.append((stage, cpu_s, wall_s))

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    """``Stages.stage``'s timer: a plain context manager, not a generator one, because it
    runs several times on every chunk (a generator's set-up costs more than the timing)."""

    __slots__ = ("_cpu", "_name", "_stages", "_wall")

    def __init__(self, stages: Stages | StageLog, name: str) -> None:
        self._stages, self._name = stages, name
        self._wall = self._cpu = 0.0

    def __enter__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def __exit__(self, *exc: object) -> None:
        self._stages.record(
            self._name, time.thread_time() - self._cpu, time.perf_counter() - self._wall
        )


class _CpuMeter:
    """Drives a coroutine step by step for its task, adding up the CPU of each step."""

    def __init__(self, work: Coroutine[Any, Any, T]) -> None:
        self._work = work
        self.cpu_s = 0.0

    def __await__(self) -> Generator[Any, Any, Any]:
        work = self._work
        send: Any = None
        thrown: BaseException | None = None
        while True:
            started = time.thread_time()
            try:
                step = work.send(send) if thrown is None else work.throw(thrown)
            except StopIteration as finished:
                return finished.value
            finally:
                self.cpu_s += time.thread_time() - started
            send, thrown = None, None
            try:
                send = yield step
            except GeneratorExit:
                work.close()
                raise
            except BaseException as exc:  # cancellation, for one: passed on to the work
                thrown = exc


UNTIMED = Stages(CollectorRegistry())
"""For parts built without metrics (admin commands, tests): counts into a registry nobody
reads."""
