"""What `room-agent status` observes, read without disturbing the running agent: the
agent process (its snapshot file, or the spool lock's holder) and the spool (read-only).

The findings (agent/diagnostics/findings.py) judge these views; the status report
(agent/diagnostics/status_report.py) puts them together with the network probes.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from agent.diagnostics.status_file import StatusSnapshot, read_snapshot
from agent.settings import AgentSettings
from agent.spool import QuarantineEntry, Spool, oldest_chunk_age_s, read_regular


class AgentView(BaseModel):
    running: bool
    error: str | None = None  # why its state could not be read at all
    pid: int | None = None
    snapshot_age_s: float | None = None
    last_heartbeat_age_s: float | None = None
    snapshot: StatusSnapshot | None = None


class SessionBacklog(BaseModel):
    session_id: str
    closed: bool
    pending: int
    pending_bytes: int


class SpoolView(BaseModel):
    directory: str
    error: str | None = None  # why it could not be read
    backlog_chunks: int = 0
    backlog_bytes: int = 0
    sessions: list[SessionBacklog] = []
    quota_bytes: int
    used_share: float = 0.0
    free_bytes: int | None = None
    min_free_bytes: int
    oldest_pending_age_s: float | None = None
    quarantined: list[QuarantineEntry] = []
    # Files this read-only look found torn or corrupt: quarantined at the agent's next start.
    to_quarantine: int = 0
    # Odd entries that cannot even be moved aside: "path: reason", left where they are.
    skipped: list[str] = []


def agent_view(path: Path, spool_lock: Path) -> AgentView:
    """From the status file; without one, whether a ``room-agent run`` holds the spool
    (its pid is in the lock file): running, but unable to write its status."""
    if path.parent.is_dir() and not os.access(path.parent, os.R_OK | os.X_OK):
        return AgentView(running=False, error=f"{path.parent}: permission denied")
    snapshot = read_snapshot(path)
    if snapshot is None:
        holder = _lock_holder(spool_lock)
        running = holder is not None and is_agent_process(holder)
        return AgentView(running=running, pid=holder if running else None)
    now = datetime.now(UTC)
    heartbeat = snapshot.last_heartbeat_at
    return AgentView(
        running=is_agent_process(snapshot.pid),
        pid=snapshot.pid,
        snapshot_age_s=age_s(now, snapshot.written_at),
        last_heartbeat_age_s=age_s(now, heartbeat) if heartbeat else None,
        snapshot=snapshot,
    )


def is_agent_process(pid: int) -> bool:
    """``pid`` is alive and is a ``room-agent ... run`` (a reused pid is something else)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    names = [Path(arg.decode(errors="replace")).name for arg in argv]
    return "room-agent" in names and "run" in names


def _lock_holder(lock: Path) -> int | None:
    try:
        text = read_regular(lock).decode(errors="replace").strip()  # a FIFO must not hang it
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def spool_view(settings: AgentSettings) -> SpoolView:
    directory = settings.spool_dir
    view = SpoolView(
        directory=str(directory),
        quota_bytes=settings.spool.max_bytes,
        min_free_bytes=settings.spool.min_free_bytes,
    )
    if not directory.exists():
        return view
    try:
        report = Spool.inspect(directory)
        view.free_bytes = _free_bytes(directory)
        view.oldest_pending_age_s = oldest_chunk_age_s(directory)
    except OSError as exc:
        view.error = (exc.strerror or type(exc).__name__).lower()
        return view
    view.backlog_chunks = report.usage.chunks
    view.backlog_bytes = report.usage.bytes
    view.used_share = round(report.usage.bytes / settings.spool.max_bytes, 4)
    view.sessions = [
        SessionBacklog(
            session_id=s.session_id,
            closed=s.closed,
            pending=s.pending,
            pending_bytes=s.pending_bytes,
        )
        for s in report.sessions
        if s.pending
    ]
    view.quarantined = report.quarantine
    view.to_quarantine = sum(f.action == "quarantined" and not f.applied for f in report.findings)
    view.skipped = [f"{f.path}: {f.reason}" for f in report.findings if f.action == "skipped"]
    return view


def _free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def age_s(now: datetime, then: datetime) -> float:
    """Seconds from ``then`` to ``now``, never negative (clocks step)."""
    return round(max(0.0, (now - then).total_seconds()), 1)
