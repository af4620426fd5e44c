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


class CpuMeter:
    """CPU seconds each named process tree used between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self._before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._before = {name: tree_cpu_s(pid) for name, pid in self.pids.items()}
        self._before["client"] = own_cpu_s()
        return self

    def stop(self) -> dict[str, float]:
        self.used = {name: tree_cpu_s(pid) - self._before[name] for name, pid in self.pids.items()}
        self.used["client"] = own_cpu_s() - self._before["client"]
        return self.used
