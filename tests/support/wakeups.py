"""How often a thread of this process has slept and been woken (Linux counts them), for
tests of the agent's wake-up budget: on a Pi-class core each costs more than its work."""

from __future__ import annotations

import threading
from pathlib import Path


def voluntary_switches(native_id: int | None = None) -> int:
    """Of the thread ``native_id`` (threading's native_id), by default the calling one."""
    tid = threading.get_native_id() if native_id is None else native_id
    status = Path(f"/proc/self/task/{tid}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])
