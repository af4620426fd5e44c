"""Judging what `room-agent status` found: each item ok, skipped, or a problem with its fix.

The fixes are what a technician types or does next, in the device's own terms: the setting
to change, the command to run (on the device or on the gateway), who to call. The same
findings are `room-agent doctor`'s checklist. Codes, ids and numbers only.
"""

from __future__ import annotations

from typing import Literal, assert_never

from pydantic import BaseModel

from agent.diagnostics.observations import AgentView, SpoolView
from agent.diagnostics.probes import BrokerProbe, GatewayProbe, public_url
from agent.diagnostics.status_file import REFRESH_S
from agent.settings import AgentSettings
from protocol.messages import ChunkRefusal, DeviceReason

# The snapshot is rewritten at least every REFRESH_S: three missed rewrites mean a hung agent.
STALE_SNAPSHOT_S = 3 * REFRESH_S
# Spool use at which a technician should act: at 100% the agent stops recording (it never
# deletes unsent audio), and what is left may be a single day of sessions.
SPOOL_FULL_SHARE = 0.8
# A chunk normally leaves within seconds of being spooled; after this long, it is stuck.
BACKLOG_STUCK_S = 15 * 60
GATEWAY_FAILS = "the gateway fails: ask its operator (room-gateway logs and /readyz)"
RESTART = "sudo systemctl restart room-agent (its log: journalctl -u room-agent -n 50)"

Verdict = Literal["ok", "problem", "skipped"]


class Finding(BaseModel):
    """One checklist item: what was found and, for a problem, what to do about it."""

    item: str
    verdict: Verdict
    summary: str
    fix: str | None = None


def judge(
    settings: AgentSettings,
    agent: AgentView,
    broker: BrokerProbe | None,
    gateway: GatewayProbe | None,
    spool: SpoolView,
) -> list[Finding]:
    """One finding per item, in the order a technician works through them."""
    return [
        judge_agent(settings, agent),
        judge_microphone(settings, agent),
        judge_broker(settings, broker, agent),
        judge_gateway(settings, gateway),
        judge_sealing_key(settings, gateway, agent),
        judge_spool(spool, agent),
        judge_quarantine(spool),
        judge_errors(settings, agent),
    ]


START_SERVICE = "sudo systemctl enable --now room-agent"


def judge_agent(settings: AgentSettings, agent: AgentView) -> Finding:
    snap = agent.snapshot
    start = f"start it: {START_SERVICE} (its log: journalctl -u room-agent)"
    if agent.error is not None:
        return Finding(
            item="agent",
            verdict="problem",
            summary=f"unknown: {agent.error}",
            fix="run it as root or the room-agent user (sudo room-agent --config ... status)",
        )
    if snap is None and agent.running:
        return Finding(
            item="agent",
            verdict="problem",
            summary=f"running, pid {agent.pid}, but its status file cannot be read",
            fix="check that the room-agent user can write state_dir and that the disk is not"
            " full (df -h); the agent's log names the problem (journalctl -u room-agent)",
        )
    if snap is None:
        return Finding(item="agent", verdict="problem", summary="not running", fix=start)
    if not agent.running:
        summary = f"not running (last seen {ago(agent.snapshot_age_s)} ago as pid {snap.pid})"
        return Finding(item="agent", verdict="problem", summary=summary, fix=start)
    doing = snap.recorder + (f" session {snap.session_id}" if snap.session_id else "")
    summary = f"running, pid {snap.pid}, {doing}; status {ago(agent.snapshot_age_s)} old"
    if (agent.snapshot_age_s or 0) > STALE_SNAPSHOT_S:
        return Finding(
            item="agent",
            verdict="problem",
            summary=f"{summary}: not updating it (hung?)",
            fix=f"restart it: {RESTART}",
        )
    if snap.health is not None:
        return Finding(
            item="agent",
            verdict="problem",
            summary=f"{summary}; unhealthy: {snap.health}",
            fix=_health_fix(snap.health, settings),
        )
    return Finding(item="agent", verdict="ok", summary=summary)


def _health_fix(code: str, settings: AgentSettings) -> str:
    try:
        return reason_fix(DeviceReason(code), settings)
    except ValueError:  # a code from another version of the agent
        return (
            f"a part of the agent stopped ({code}); systemd's watchdog restarts it, or: {RESTART}"
        )


def judge_microphone(settings: AgentSettings, agent: AgentView) -> Finding:
    """What the running agent last found of audio.device (it looks while idle)."""
    snap = agent.snapshot
    wanted = settings.audio.device
    if not agent.running or snap is None or snap.microphone is None:
        return Finding(
            item="microphone",
            verdict="skipped",
            summary="not known (the agent is not running): `room-agent devices` lists them",
        )
    if snap.microphone == "ok":
        return Finding(item="microphone", verdict="ok", summary=f"{wanted!r} there")
    if snap.microphone == "missing":
        return Finding(
            item="microphone",
            verdict="problem",
            summary=f"missing: no input device matches audio.device {wanted!r}",
            fix="plug in the room's microphone (check: arecord -l), or set audio.device to a"
            " part of one of the names `room-agent devices` lists; the agent finds it again"
            f" within {settings.audio.presence_check_s:g} s",
        )
    return Finding(
        item="microphone",
        verdict="problem",
        summary=f"{wanted!r} is there but does not open (busy, or not this format)",
        fix="close other recorders (fuser -v /dev/snd/*); check audio.device_rate and"
        " audio.channels against `room-agent devices`",
    )


def judge_sealing_key(
    settings: AgentSettings, probe: GatewayProbe | None, agent: AgentView
) -> Finding:
    """Is gateway_public_key the gateway's? The gateway's own answer (asked from here with
    the device's token), else what the running agent last found."""
    snap = agent.snapshot if agent.running else None
    found = probe.key if probe is not None else None
    state = found.state if found is not None else (snap.sealing_key if snap else None)
    if probe is None:
        return Finding(item="sealing key", verdict="skipped", summary="no gateway to ask")
    if state is None or state == "unverified":
        why = found.error if found is not None and found.error else "gateway or token not ok"
        return Finding(item="sealing key", verdict="skipped", summary=f"not verified ({why})")
    mine = found.device_fingerprint if found else snap.device_key_fingerprint if snap else None
    theirs = found.gateway_fingerprint if found else snap.gateway_key_fingerprint if snap else None
    if state == "verified":
        return Finding(
            item="sealing key", verdict="ok", summary=f"the gateway's ({_short(theirs)})"
        )
    key = found.gateway_public_key if found is not None else None
    setting = f'agent.gateway_public_key = "{key}"' if key else "agent.gateway_public_key"
    return Finding(
        item="sealing key",
        verdict="problem",
        summary=f"not the gateway's: this device seals to {_short(mine)}, the gateway opens"
        f" {_short(theirs)}; the agent refuses to record",
        fix=f"set {setting} (the key `room-gateway keygen` prints on the gateway), or enroll"
        f" again; then: {RESTART}",
    )


def _short(fingerprint: str | None) -> str:
    """sha256:0123456789ab...: enough to compare by eye."""
    return f"{fingerprint[:19]}..." if fingerprint else "?"


def judge_broker(settings: AgentSettings, probe: BrokerProbe | None, agent: AgentView) -> Finding:
    if probe is None:
        return Finding(
            item="broker",
            verdict="skipped",
            summary="not configured (mqtt.broker_url): no commands",
        )
    where = f"{probe.host}:{probe.port}"
    if not probe.reachable:
        return Finding(
            item="broker",
            verdict="problem",
            summary=f"unreachable at {where} ({probe.error})",
            fix=_unreachable_fix(probe.error, "broker", where, "mqtt"),
        )
    if probe.connect == "refused":
        return Finding(
            item="broker",
            verdict="problem",
            summary=f"{where} refuses this device's credentials ({probe.error})",
            fix=_reprovision(settings.device_id, "the broker"),
        )
    if probe.connect == "no_answer":
        return Finding(
            item="broker",
            verdict="problem",
            summary=f"{where} answers TCP but not MQTT ({probe.error})",
            fix="check mqtt.broker_url: the port, and mqtt:// versus mqtts://",
        )
    proved = "credentials accepted" if probe.connect == "accepted" else "no credentials to try"
    summary = f"{public_url(probe.url)} reachable, {proved}"
    snap = agent.snapshot
    if not agent.running or snap is None:
        return Finding(item="broker", verdict="ok", summary=summary)
    if not snap.mqtt_connected:
        return Finding(
            item="broker",
            verdict="problem",
            summary=f"{summary}, but the agent is not connected",
            fix=f"it retries every {settings.mqtt.reconnect_max_s:g} s at most; if this"
            f" persists: {RESTART}",
        )
    beat = agent.last_heartbeat_age_s
    if beat is not None and beat > 2 * settings.mqtt.heartbeat_s + 10:
        return Finding(
            item="broker",
            verdict="problem",
            summary=f"{summary}; agent connected, but its last heartbeat went {ago(beat)} ago"
            f" (every {settings.mqtt.heartbeat_s:g} s)",
            fix=f"restart it: {RESTART}",
        )
    heard = f"last heartbeat {ago(beat)} ago" if beat is not None else "no heartbeat yet"
    return Finding(item="broker", verdict="ok", summary=f"{summary}; agent connected, {heard}")


def judge_gateway(settings: AgentSettings, probe: GatewayProbe | None) -> Finding:
    if probe is None:
        return Finding(
            item="gateway",
            verdict="skipped",
            summary="not configured (link.gateway_url): audio stays in the spool",
        )
    if not probe.reachable:
        return Finding(
            item="gateway",
            verdict="problem",
            summary=f"unreachable at {probe.url} ({probe.error})",
            fix=_unreachable_fix(probe.error, "gateway", probe.url, "link"),
        )
    health = f"/healthz {probe.healthz}"
    if probe.token == "refused":
        return Finding(
            item="gateway",
            verdict="problem",
            summary=f"{probe.url} reachable ({health}), but it refuses this device's token",
            fix=_reprovision(settings.device_id, "the gateway"),
        )
    if probe.token == "revoked":
        return Finding(
            item="gateway",
            verdict="problem",
            summary=f"{probe.url}: device {settings.device_id} is revoked there",
            fix=_reprovision(settings.device_id, "the gateway"),
        )
    if probe.token == "forbidden":
        return Finding(
            item="gateway",
            verdict="problem",
            summary=f"{probe.url}: the token is another device's, not {settings.device_id}'s",
            fix=f"check device_id; then {_reprovision(settings.device_id, 'the gateway')}",
        )
    if probe.token == "not_gateway":
        return Finding(
            item="gateway",
            verdict="problem",
            summary=f"{probe.url} answers HTTP {probe.token_status}, but not as the"
            f" room-gateway does ({health})",
            fix=NOT_THE_GATEWAY.format(status=probe.token_status, url=probe.url),
        )
    if probe.token == "unexpected" and (probe.token_status or 0) >= 500:
        return Finding(
            item="gateway",
            verdict="problem",
            summary=f"{probe.url} reachable but failing (HTTP {probe.token_status})",
            fix=GATEWAY_FAILS,
        )
    if probe.token == "unexpected":
        return Finding(
            item="gateway",
            verdict="problem",
            summary=f"{probe.url} answers the ingest path with HTTP {probe.token_status}"
            f" ({health})",
            fix="check link.gateway_url: it must be the room-gateway's address",
        )
    token = "token accepted" if probe.token == "accepted" else "no ingest token to try"
    return Finding(
        item="gateway", verdict="ok", summary=f"{probe.url} reachable ({health}), {token}"
    )


def _unreachable_fix(error: str | None, what: str, where: str, table: str) -> str:
    if error and error.startswith("TLS"):
        return (
            f"the {what}'s certificate is not trusted or not for this name: set {table}.ca_file"
            " to its CA (room-gateway device add writes it) and use the host name in its"
            " certificate"
        )
    if error == "name not resolved":
        return f"check the host name in {table} settings and this device's DNS"
    return f"{what} unreachable at {where}: check network/firewall, and that the {what} runs"


def _reprovision(device_id: str, where: str) -> str:
    return (
        f"{where} refuses this device's credentials: re-provision with `room-gateway device"
        f" add {device_id} --rotate` on the gateway and install the new credential files here"
    )


def judge_spool(spool: SpoolView, agent: AgentView) -> Finding:
    if spool.error is not None:
        return Finding(
            item="spool",
            verdict="problem",
            summary=f"{spool.directory}: cannot read ({spool.error})",
            fix="run as root or the room-agent user (sudo -u room-agent room-agent status)",
        )
    share = f"{spool.used_share:.0%} of {human_bytes(spool.quota_bytes)}"
    summary = f"{spool.backlog_chunks} chunks ({human_bytes(spool.backlog_bytes)}) waiting, {share}"
    if spool.free_bytes is not None:
        summary += f", {human_bytes(spool.free_bytes)} free on disk"
    oldest = spool.oldest_pending_age_s
    if oldest is not None:
        summary += f"; oldest {ago(oldest)}"
    unacked = f"the gateway has not acknowledged chunks for {ago(oldest or 0)}"
    low_disk = spool.free_bytes is not None and spool.free_bytes < 2 * spool.min_free_bytes
    if spool.used_share >= SPOOL_FULL_SHARE or low_disk:
        what = f"spool {spool.used_share:.0%} full" if not low_disk else "disk almost full"
        return Finding(
            item="spool",
            verdict="problem",
            summary=summary,
            fix=f"{what}: {unacked}; fix the gateway link (recording stops when full, and"
            " unsent audio is never deleted)",
        )
    if oldest is not None and oldest > BACKLOG_STUCK_S:
        cause = "start the agent" if not agent.running else "fix the gateway link"
        return Finding(item="spool", verdict="problem", summary=summary, fix=f"{unacked}: {cause}")
    return Finding(item="spool", verdict="ok", summary=summary)


def judge_quarantine(spool: SpoolView) -> Finding:
    entries = spool.quarantined
    if not entries and not spool.to_quarantine and not spool.skipped:
        return Finding(item="quarantine", verdict="ok", summary="none")
    reasons = sorted({entry.reason for entry in entries})
    summary = f"{len(entries)} file(s) quarantined"
    if reasons:
        summary += f" ({'; '.join(reasons)[:120]})"
    if spool.to_quarantine:
        summary += f"; {spool.to_quarantine} more found corrupt (moved at the agent's next start)"
    if spool.skipped:
        summary += (
            f"; {len(spool.skipped)} entr(ies) it can neither read nor move, left in place"
            f" ({'; '.join(spool.skipped)[:120]})"
        )
    return Finding(
        item="quarantine",
        verdict="problem",
        summary=summary,
        fix="they may hold sealed audio the gateway never got: list them with `room-agent"
        " spool verify`, then decide what happens to them (the agent never deletes them)",
    )


def judge_errors(settings: AgentSettings, agent: AgentView) -> Finding:
    snap = agent.snapshot
    if not agent.running:
        return Finding(item="last error", verdict="skipped", summary="agent not running")
    if snap is None:
        return Finding(item="last error", verdict="skipped", summary="unknown (no status file)")
    code = snap.last_error
    if code is None:
        return Finding(item="last error", verdict="ok", summary="none")
    refused = snap.uplink.refused if snap.uplink is not None else None
    summary = code
    if refused is not None and refused.code != code:
        summary += f" (gateway: HTTP {refused.status} {refused.code})"
    return Finding(
        item="last error",
        verdict="problem",
        summary=summary,
        fix=error_fix(code, settings, refused),
    )


def refusal_line(refused: ChunkRefusal) -> str:
    what = "manifest" if refused.seq is None else f"chunk {refused.seq}"
    return f"{what} of session {refused.session_id}: HTTP {refused.status} {refused.code}"


NOT_THE_GATEWAY = (
    "HTTP {status} from something that is not the room-gateway (its answer has no gateway"
    " problem code): a proxy or firewall between this device and {url}, or that URL names"
    " another server. This is not a revocation: check link.gateway_url, then ask the"
    " network's operator to let the device through"
)


def error_fix(code: str, settings: AgentSettings, refused: ChunkRefusal | None = None) -> str:
    """What to do about an agent's error code (recorder's first, else the uplink's), with
    the gateway's reason for its latest refusal when there is one."""
    if refused is not None and refused.code == "wrong_key":
        return (
            "the gateway cannot open this device's audio: it is sealed to another key than"
            " the gateway's. Set agent.gateway_public_key to the key `room-gateway keygen`"
            " prints on the gateway (or enroll again), then restart the agent; chunks sealed"
            " to the old key stay in quarantine"
        )
    try:
        reason = DeviceReason(code)
    except ValueError:  # a code from another version of the agent
        return UNKNOWN_FIX
    return reason_fix(reason, settings, refused)


UNKNOWN_FIX = f"see the agent's log: journalctl -u room-agent -n 100 (then: {RESTART})"


def reason_fix(
    reason: DeviceReason, settings: AgentSettings, refused: ChunkRefusal | None = None
) -> str:
    """The fix for each device reason code: every code has its own (a test holds it)."""
    url = public_url(settings.link.gateway_url)
    device = settings.device_id
    spool_broken = (
        "the spool directory is not usable: check the disk (df -h, dmesg) and that the"
        f" room-agent user owns state_dir; then {RESTART}"
    )
    thread_gone = "a part of the agent stopped ({}); systemd's watchdog restarts it, or: {}"
    chunk_refused = (
        "the gateway would not take {}: `room-agent spool verify` names the session;"
        " give its id to the gateway's operator"
    )
    match reason:
        case DeviceReason.SPOOL_ENTRY_SKIPPED:
            return (
                "the spool holds an entry the agent can neither read nor move aside (left in"
                " place and ignored): `room-agent spool verify` names it; move it away by hand"
            )
        case DeviceReason.SPOOL_LOST:
            return (
                "the spool (or part of it) disappeared while the agent ran or before it"
                " started: audio not yet delivered then is lost (the journal says which);"
                " recording goes on. Check the disk (dmesg, df -h) and who deletes files there"
            )
        case DeviceReason.SPOOL_FULL:
            return "recording stopped: the spool is full; the gateway must take the backlog first"
        case DeviceReason.DEVICE_LOST:
            return "the microphone went away mid-session: check its USB cable (room-agent devices)"
        case DeviceReason.RECORDER_FAILED:
            return (
                "the recorder failed unexpectedly (a bug): the agent's log has the error"
                f" (journalctl -u room-agent -n 100); report it, then: {RESTART}"
            )
        case DeviceReason.CLOSE_FAILED:
            return (
                "a session could not be closed in the spool (the disk?): check df -h and"
                f" dmesg, then {RESTART}; the next start closes it"
            )
        case DeviceReason.SEALING_KEY_MISMATCH:
            return (
                "this device seals to another key than the gateway's, so it refuses to record:"
                " set agent.gateway_public_key to the key `room-gateway keygen` prints on the"
                f" gateway (see the sealing key item), then: {RESTART}"
            )
        case DeviceReason.MICROPHONE_MISSING | DeviceReason.MICROPHONE_UNAVAILABLE:
            state = reason.value.removeprefix("microphone_")
            return (
                f"the microphone audio.device {settings.audio.device!r} names is {state}:"
                " plug it in or correct audio.device (room-agent devices lists the names)"
            )
        case DeviceReason.BROKER_NOT_AUTHORIZED:
            return _reprovision(device, "the broker")
        case DeviceReason.UNAUTHORIZED:
            return _reprovision(device, "the gateway")
        case DeviceReason.DEVICE_REVOKED:
            return (
                f"the gateway revoked device {device}; if that was a mistake:"
                f" {_reprovision(device, 'the gateway')}"
            )
        case DeviceReason.NOT_THE_GATEWAY:
            status = str(refused.status) if refused is not None else "401/403"
            return NOT_THE_GATEWAY.format(status=status, url=url)
        case DeviceReason.GATEWAY_UNREACHABLE:
            return f"check network/firewall to {url}"
        case DeviceReason.GATEWAY_ERROR:
            return GATEWAY_FAILS
        case DeviceReason.GATEWAY_REFUSED:
            return (
                f"the gateway at {url} answers with an HTTP status the device does not"
                " expect: check that link.gateway_url names the room-gateway, and that both"
                " run the same version"
            )
        case DeviceReason.BAD_RECEIPT:
            return (
                "the gateway's receipts are not for what the device sent (a proxy rewriting"
                f" answers, or another server at {url}): check link.gateway_url"
            )
        case DeviceReason.CHUNK_CONFLICT:
            return chunk_refused.format("a chunk: it has another with the same number")
        case DeviceReason.CHUNK_TOO_LARGE:
            return chunk_refused.format("a chunk: too large for its limits")
        case DeviceReason.CHUNK_FOREIGN:
            return chunk_refused.format("a chunk: its session belongs to another device")
        case DeviceReason.CHUNK_REJECTED:
            return chunk_refused.format("a chunk: it cannot use it (set aside)")
        case DeviceReason.CHUNK_CORRUPT:
            return (
                "a chunk in the spool is damaged and was set aside (quarantine): check the"
                " disk (dmesg); `room-agent spool verify` lists it"
            )
        case DeviceReason.MANIFEST_REFUSED:
            return chunk_refused.format("a session's manifest")
        case DeviceReason.SPOOL_UNUSABLE | DeviceReason.SPOOL_READ_ONLY:
            return spool_broken
        case (
            DeviceReason.RECORDER_THREAD_GONE
            | DeviceReason.UPLINK_THREAD_GONE
            | DeviceReason.CONTROL_THREAD_GONE
        ):
            return thread_gone.format(reason.value, RESTART)
    assert_never(reason)


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
