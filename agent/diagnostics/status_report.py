"""`room-agent status`: is this device doing its job, and if not, what to do about it.

Put together from three sources, none of which disturbs the running agent:

- what the agent process knows, from its snapshot (state_dir/status.json, see
  agent/diagnostics/status_file.py): whether it runs (the snapshot's pid is alive and is a
  ``room-agent run``), MQTT connected, last heartbeat, uplink failures, recorder state and
  last error, watchdog health, last notification;
- the spool, read-only (Spool.inspect): backlog per session, quota use, free disk, the age
  of the oldest unacknowledged chunk, quarantined files;
- the network, probed from here (agent/diagnostics/probes.py): the broker and the gateway,
  each with the device's own credentials.

Each item is then judged (agent/diagnostics/findings.py) into ok, skipped, or a problem
with its fix. Ids, codes and numbers only: no secret is printed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from pydantic import BaseModel

from agent.diagnostics.findings import Finding, ago, human_bytes, judge, refusal_line
from agent.diagnostics.observations import AgentView, SpoolView, age_s, agent_view, spool_view
from agent.diagnostics.probes import BrokerProbe, GatewayProbe, probe_broker, probe_gateway
from agent.diagnostics.status_file import STATUS_FILE, StatusSnapshot, UplinkSnapshot
from agent.settings import AgentSettings
from agent.spool import lock_file
from protocol.envelope import EnvelopeError, public_key_from_text


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
    agent = agent_view(settings.state_dir / STATUS_FILE, lock_file(settings.spool_dir))
    broker = None
    if settings.mqtt.broker_url:
        broker = probe_broker(settings.mqtt, settings.device_id)
    gateway = None
    if settings.link.gateway_url:
        gateway = probe_gateway(settings.link, settings.device_id, _sealing_key(settings))
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


def _sealing_key(settings: AgentSettings) -> X25519PublicKey | None:
    if not settings.gateway_public_key:
        return None
    try:
        return public_key_from_text(settings.gateway_public_key)
    except EnvelopeError:
        return None  # config validate (and doctor's config item) says why


# -- showing


def format_status(report: StatusReport) -> str:
    """A compact aligned block of facts, then the problems with their fixes."""
    said = {finding.item: finding.summary for finding in report.findings}
    snap = report.agent.snapshot if report.agent.running else None
    config = f" ({report.config})" if report.config else ""
    rows = [("device", report.device_id + config), ("agent", said["agent"])]
    if snap is not None and (snap.session_id or snap.overruns or snap.dropped_s):
        rows.append(("recorder", _recorder_line(snap)))
    rows += [
        ("microphone", said["microphone"]),
        ("broker", said["broker"]),
        ("gateway", said["gateway"]),
        ("sealing key", said["sealing key"]),
    ]
    if snap is not None and snap.uplink is not None:
        rows.append(("uplink", _uplink_line(snap.uplink)))
        if snap.uplink.refused is not None:
            rows.append(("refused", refusal_line(snap.uplink.refused)))
    rows.append(("spool", said["spool"]))
    for backlog in report.spool.sessions:
        state = "closed" if backlog.closed else "open"
        size = human_bytes(backlog.pending_bytes)
        rows.append(("", f"{backlog.session_id}: {state}, {backlog.pending} chunks, {size}"))
    rows += [("quarantine", said["quarantine"]), ("last error", said["last error"])]
    if snap is not None and snap.last_notification is not None:
        note = snap.last_notification
        when = ago(age_s(report.checked_at, note.at))
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
