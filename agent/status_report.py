"""`room-agent status`: is this device doing its job, and if not, what to do about it.

Put together from three sources, none of which disturbs the running agent:

- what the agent process knows, from its snapshot (state_dir/status.json, see
  agent/status_file.py): whether it runs (the snapshot's pid is alive and is a
  ``room-agent run``), MQTT connected, last heartbeat, uplink failures, recorder state and
  last error, watchdog health, last notification;
- the spool, read-only (Spool.inspect): backlog per session, quota use, free disk, the age
  of the oldest unacknowledged chunk, quarantined files;
- the network, probed from here (agent/probes.py): the broker and the gateway, each with
  the device's own credentials.

Each item is then judged (agent/findings.py) into ok, skipped, or a problem with its fix.
Ids, codes and numbers only: no secret is printed.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from agent.findings import Finding, ago, human_bytes, judge
from agent.probes import BrokerProbe, GatewayProbe, probe_broker, probe_gateway
from agent.settings import AgentSettings
from agent.spool import QuarantineEntry, Spool
from agent.spool.layout import CHUNK_NAME, LOCK, SESSIONS
from agent.status_file import STATUS_FILE, StatusSnapshot, UplinkSnapshot, read_snapshot


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


class StatusReport(BaseModel):
    """Everything `room-agent status --json` prints."""

    device_id: str
    config: str | None
    checked_at: datetime
    healthy: bool
    agent: AgentView
    broker: BrokerProbe | None  # None: no broker configured
    gateway: GatewayProbe | None  # None: no gateway configured
    spool: SpoolView
    findings: list[Finding]


def gather(settings: AgentSettings, config: Path | None) -> StatusReport:
    """Read the snapshot and the spool, probe the broker and gateway, judge it all."""
    agent = agent_view(settings.state_dir / STATUS_FILE, settings.spool_dir / LOCK)
    broker = None
    if settings.mqtt.broker_url:
        broker = probe_broker(settings.mqtt, settings.device_id)
    gateway = None
    if settings.link.gateway_url:
        gateway = probe_gateway(settings.link, settings.device_id)
    spool = spool_view(settings)
    findings = judge(settings, agent, broker, gateway, spool)
    return StatusReport(
        device_id=settings.device_id,
        config=str(config) if config else None,
        checked_at=datetime.now(UTC),
        healthy=all(f.verdict != "problem" for f in findings),
        agent=agent,
        broker=broker,
        gateway=gateway,
        spool=spool,
        findings=findings,
    )


# -- gathering


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
        snapshot_age_s=_age(now, snapshot.written_at),
        last_heartbeat_age_s=_age(now, heartbeat) if heartbeat else None,
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
        text = lock.read_text().strip()
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
        view.oldest_pending_age_s = _oldest_chunk_age(directory)
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
    return view


def _free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def _oldest_chunk_age(directory: Path) -> float | None:
    """Chunk files stay until the gateway acknowledges them: the oldest one's age is how
    long the gateway has not taken this device's audio."""
    times = [
        path.stat().st_mtime
        for path in (directory / SESSIONS).glob("*/*.chunk")
        if CHUNK_NAME.match(path.name)
    ]
    return round(time.time() - min(times), 1) if times else None


def _age(now: datetime, then: datetime) -> float:
    return round(max(0.0, (now - then).total_seconds()), 1)


# -- showing


def format_status(report: StatusReport) -> str:
    """A compact aligned block of facts, then the problems with their fixes."""
    said = {finding.item: finding.summary for finding in report.findings}
    snap = report.agent.snapshot if report.agent.running else None
    config = f" ({report.config})" if report.config else ""
    rows = [("device", report.device_id + config), ("agent", said["agent"])]
    if snap is not None and (snap.session_id or snap.overruns or snap.dropped_s):
        rows.append(("recorder", _recorder_line(snap)))
    rows += [("broker", said["broker"]), ("gateway", said["gateway"])]
    if snap is not None and snap.uplink is not None:
        rows.append(("uplink", _uplink_line(snap.uplink)))
    rows.append(("spool", said["spool"]))
    for backlog in report.spool.sessions:
        state = "closed" if backlog.closed else "open"
        size = human_bytes(backlog.pending_bytes)
        rows.append(("", f"{backlog.session_id}: {state}, {backlog.pending} chunks, {size}"))
    rows += [("quarantine", said["quarantine"]), ("last error", said["last error"])]
    if snap is not None and snap.last_notification is not None:
        note = snap.last_notification
        when = ago(_age(report.checked_at, note.at))
        rows.append(("notified", f"{note.type}, session {note.session_id}, {when} ago"))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {text}" for label, text in rows]
    problems = [f for f in report.findings if f.verdict == "problem"]
    if problems:
        lines += ["", f"{len(problems)} problem(s):"]
        for finding in problems:
            lines += [f"  {finding.item}: {finding.summary}", f"    fix: {finding.fix}"]
    return "\n".join(lines)


def _recorder_line(snap: StatusSnapshot) -> str:
    line = snap.recorder + (f", session {snap.session_id}" if snap.session_id else "")
    if snap.overruns or snap.dropped_s:
        line += f"; {snap.overruns} overruns, {snap.dropped_s:g} s dropped"
    return line


def _uplink_line(up: UplinkSnapshot) -> str:
    line = (
        f"{up.chunks_sent} chunks ({human_bytes(up.bytes_sent)}) sent,"
        f" {up.sessions_delivered} sessions delivered"
    )
    if up.failures:
        line += f"; {up.failures} failed attempts ({up.reason})"
    if up.held or up.set_aside:
        line += f"; {up.held} held, {up.set_aside} set aside"
    return line
