"""CPU seconds a process tree used, from /proc: the benchmarks' "who paid for it".

On a shared machine wall-clock rates move with the neighbours' load; CPU seconds per unit of
work (a chunk, a session) by process (gateway, simulator, broker, database, the benchmark's
own client) do much less, and say whose share is whose.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system seconds) of a live process; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (children that already exited and
    were reaped are counted in their parent's cutime, which this includes too)."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)], used[int(entry.name)] = stat
    total, todo = 0.0, [pid]
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    while todo:
        current = todo.pop()
        total += used.get(current, 0.0) + _reaped_s(current)
        todo.extend(children.get(current, []))
    return total


def _reaped_s(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / _TICK


def own_cpu_s() -> float:
    """This process's CPU seconds (all threads)."""
    times = os.times()
    return times.user + times.system


def process_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` alone (all its threads; not its children)."""
    stat = _stat(pid)
    return stat[1] if stat is not None else 0.0


class CpuMeter:
    """CPU seconds each named process tree used between ``start`` and ``stop``; for the
    names in ``alone`` also the process without its children, as "<name> alone" (the
    gateway's own process beside its ingest workers)."""

    def __init__(self, pids: dict[str, int | None], alone: tuple[str, ...] = ()) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.alone = {f"{name} alone": self.pids[name] for name in alone if name in self.pids}
        self._before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._before = {name: tree_cpu_s(pid) for name, pid in self.pids.items()}
        self._before |= {name: process_cpu_s(pid) for name, pid in self.alone.items()}
        self._before["client"] = own_cpu_s()
        return self

    def stop(self) -> dict[str, float]:
        self.used = {name: tree_cpu_s(pid) - self._before[name] for name, pid in self.pids.items()}
        for name, pid in self.alone.items():
            self.used[name] = process_cpu_s(pid) - self._before[name]
        self.used["client"] = own_cpu_s() - self._before["client"]
        return self.used


def reference_cpu_ms(rounds: int = 3) -> float:
    """CPU-ms this machine takes, now, for a fixed piece of Python work of the kind a
    server does (JSON, hashing, dicts, formatting): the yardstick beside CPU-ms per unit
    of work, so that figures from machines (or moments of a shared one) of other speeds
    compare as ratios. The least of ``rounds`` runs, each in this thread."""
    import hashlib
    import json
    import time

    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        for n in range(4000):
            record = {"session_id": f"ses_{n:08d}", "room": "room-1", "seq": n, "ok": True}
            text = json.dumps(record)
            hashlib.sha256(text.encode()).hexdigest()
            json.loads(text)["seq"]
        best = min(best, (time.thread_time() - started) * 1000)
    return best
