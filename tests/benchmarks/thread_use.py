"""Where a live process's CPU time goes, thread by thread.

/proc/<pid>/task/<tid>/schedstat gives each thread's time on a CPU in nanoseconds (utime and
stime are in 10 ms ticks: too coarse for threads that run a few ms a second), and its
status the voluntary context switches: how often it slept and was woken, which costs a
Pi-class core more than most of the work done once awake. Threads are named by py-spy when
it is installed (Python's thread names are not the kernel's); others keep the kernel's name.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThreadUse:
    tid: int
    name: str
    cpu_ms: float
    wakeups: int


Snapshot = dict[int, tuple[int, int]]


def snapshot(pid: int) -> Snapshot:
    """Each live thread's (ns on a CPU, voluntary switches)."""
    found: Snapshot = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            run_ns = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
        switches = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
        found[int(task.name)] = (run_ns, int(switches.group(1)) if switches else 0)
    return found


def thread_names(pid: int) -> dict[int, str]:
    """Python's names of the process's threads, by kernel thread id (py-spy dump)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {}
    done = subprocess.run(
        [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
    )
    return {
        int(tid): name
        for tid, name in re.findall(r'^Thread (\d+) \(\w+\): "([^"]*)"', done.stdout, re.M)
    }


def use_between(pid: int, before: Snapshot, after: Snapshot) -> list[ThreadUse]:
    """Each thread's CPU and wake-ups from ``before`` to ``after``, the busiest first."""
    names = thread_names(pid)
    used = []
    for tid, (run_ns, switches) in after.items():
        run0, switches0 = before.get(tid, (0, 0))
        name = names.get(tid) or _kernel_name(pid, tid)
        used.append(ThreadUse(tid, name, (run_ns - run0) / 1e6, switches - switches0))
    return sorted(used, key=lambda use: use.cpu_ms, reverse=True)


def _kernel_name(pid: int, tid: int) -> str:
    try:
        return "(native) " + Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return "(ended)"
