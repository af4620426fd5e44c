"""`room-agent run`: the room device's service. Records when commanded, uploads what it
recorded, reports over MQTT, until SIGTERM or SIGINT.

Wiring, in data-flow order: the recorder writes sealed chunks into the spool; its events
wake the uplink (so chunks leave during the session) and go out on MQTT; the uplink drains
the spool to the gateway; the control link turns MQTT commands into recorder starts and
stops. Without ``link.gateway_url`` chunks stay in the spool (record only); without
``mqtt.broker_url`` there are no commands; an unreachable broker or gateway is retried in
the background and never stops a recording.

Restart mid-session (power cut, crash, update): the gateway still considers the session
running, and the clinician is still in the room, so the interrupted session is resumed at
once (same session id, seq and timeline continue) before commands are taken: a stop the
gateway sent meanwhile arrives through the persistent MQTT session and ends it. If the
microphone cannot be opened, the session stays interrupted: a start for it resumes it, a
stop closes it.

Before it records, the agent checks that the key it seals to is the gateway's and that
its microphone is there (agent/link/key_check.py, agent/pipeline/presence.py): a wrong
key refuses every start (sealing_key_mismatch), a missing microphone is in the state and
heartbeat. SIGHUP (`systemctl reload room-agent`) re-reads the credentials (a rotation)
and checks key and microphone again; a token or password the gateway or broker refuses
is re-read by itself (agent/link/credentials.py).

SIGTERM/SIGINT mid-session (a service stop: update, reboot): the session is *suspended*,
not closed: capture ends, what was captured is spooled, and the session stays open and
resumable, so the restarted service continues it instead of splitting one therapy session
in two. Commands arriving during shutdown are answered "shutting_down". Exit status 0.

systemd: READY=1 once running; WATCHDOG=1 only while the spool is usable and the recorder,
uplink and control threads are alive (see Health).
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx

from agent.diagnostics.status_file import STATUS_FILE
from agent.diagnostics.status_writer import StatusWriter, build_snapshot
from agent.feedback.cues import CuePlayer
from agent.feedback.hooks import Hooks
from agent.feedback.hub import FeedbackHub, build_indicators
from agent.feedback.indicator import Indicators
from agent.link.applied import AppliedCommands
from agent.link.control import ControlLink
from agent.link.credentials import DeviceCredentials
from agent.link.device_status import DeviceStatus
from agent.link.diagnosis import install_log_ring
from agent.link.key_check import SealingKeyWatch
from agent.link.uplink import Uplink, make_client
from agent.periodic import PeriodicCheck
from agent.pipeline.audio import AudioInputError, AudioSource
from agent.pipeline.presence import MicrophonePresence
from agent.pipeline.recorder import Recorder, RecorderError, RecorderListener
from agent.pipeline.seal import SealingKeyError, gateway_key
from agent.privacy import PrivacySwitch
from agent.settings import AgentSettings, LinkSettings, MqttSettings
from agent.spool import Spool, SpoolError
from agent.ticker import Ticker
from protocol.manifest import SessionManifest
from protocol.messages import ChunkSpooled, DeviceReason, SessionClosed
from runtime import systemd
from runtime.cli import Fatal
from runtime.mqtt import tls_context
from runtime.version import VERSION

log = logging.getLogger("agent")

SUSPEND_WAIT_S = 10.0
IDLE_CHECK_S = 5.0  # how often the main loop looks at health without a watchdog


class UplinkWaker(RecorderListener):
    """A spooled chunk or a closed session is work for the uplink: now, not at a poll."""

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink

    def chunk_spooled(self, event: ChunkSpooled) -> None:
        self.uplink.wake()

    def session_closed(self, event: SessionClosed, manifest: SessionManifest) -> None:
        self.uplink.wake()


class Health:
    """What the watchdog vouches for: a hung agent is restarted by systemd, a merely
    unlucky one (no broker, no gateway, an unplugged microphone being reopened) is not."""

    def __init__(
        self,
        spool: Spool,
        recorder: Recorder,
        uplink: Uplink | None,
        control: ControlLink | None,
    ) -> None:
        self.spool = spool
        self.recorder = recorder
        self.uplink = uplink
        self.control = control

    def problem(self) -> DeviceReason | None:
        """None when healthy, else a code for the log. A spool deleted under the agent is
        recreated here too (agent/spool/restore.py), so an idle agent recovers by itself."""
        try:
            self.spool.recover()
            os.statvfs(self.spool.directory)
        except (OSError, SpoolError):
            return DeviceReason.SPOOL_UNUSABLE
        if not os.access(self.spool.directory, os.W_OK):
            return DeviceReason.SPOOL_READ_ONLY
        if self.recorder.state.state == "recording" and self.recorder.wait(0):
            return DeviceReason.RECORDER_THREAD_GONE
        if self.uplink is not None and not self.uplink.alive():
            return DeviceReason.UPLINK_THREAD_GONE
        if self.control is not None and not self.control.alive():
            return DeviceReason.CONTROL_THREAD_GONE
        return None


def run_agent(settings: AgentSettings, reload: Callable[[], AgentSettings] | None = None) -> None:
    """The service's life: set up (Fatal on what a person must fix), run, shut down.
    ``reload`` loads the settings again (for the credentials, after a rotation)."""
    _configure_logging(settings.log_level)
    # Everything a person must fix is found before the spool is touched.
    try:
        sealing_key = gateway_key(settings.gateway_public_key)
    except SealingKeyError as exc:
        raise Fatal(str(exc)) from None
    link_client = _uplink_client(settings.link) if settings.link.gateway_url else None
    if settings.mqtt.broker_url:
        _check_mqtt(settings.mqtt)
    try:
        spool = Spool.open(settings.spool_dir, settings.spool)
    except SpoolError as exc:
        raise Fatal(str(exc)) from None
    with spool:
        recorder = Recorder(settings, spool, lambda: _microphone(settings))
        presence = MicrophonePresence(
            settings.audio, busy=lambda: recorder.state.state in ("recording", "closing")
        )
        if recorder.interrupted_session is None:
            # Not before a resume: opening the microphone says it sooner, and a look would
            # only delay the session's first audio.
            presence.check_now()
        uplink = key = None
        if link_client is not None:
            uplink = Uplink(settings.link, settings.device_id, spool, link_client)
            recorder.add_listener(UplinkWaker(uplink))
            key = SealingKeyWatch(
                link_client, settings.device_id, sealing_key, settings.link.backoff_max_s
            )
            key.check_now()  # before any session is resumed or started
            uplink.on_wrong_key.append(key.recheck)
        status = DeviceStatus(settings.device_id, recorder, spool, uplink, key, presence)
        privacy = PrivacySwitch(settings.state_dir, settings.privacy.do_not_record)
        privacy.recorder = recorder
        status.privacy = privacy
        control = None
        if settings.mqtt.broker_url:
            mqtt = settings.mqtt
            applied = AppliedCommands(settings.state_dir)
            control = ControlLink(
                mqtt, settings.device_id, recorder, status, mqtt.password, applied, privacy
            )
            control.log_ring = install_log_ring()
            recorder.add_listener(control)
            privacy.on_change.append(lambda engaged: control.publish_state())
        credentials = _credentials(settings, reload, uplink, control)
        health = Health(spool, recorder, uplink, control)
        snapshots = _status_writer(settings, status, control, health)
        for watcher in (presence, key):
            if watcher is not None:
                watcher.on_change.append(snapshots.poke)
                if control is not None:
                    watcher.on_change.append(control.publish_state)

        def hangup() -> None:
            credentials.reread("SIGHUP", force=True)
            presence.recheck()
            if key is not None:
                key.recheck()

        watchers: list[PeriodicCheck] = [presence] if key is None else [presence, key]
        hub = _feedback(settings, recorder, control, status, privacy)
        with _button(settings, hub):
            _serve(
                recorder, status, control, health, settings, snapshots, watchers, hangup,
                privacy, hub,
            )  # fmt: skip


def _credentials(
    settings: AgentSettings,
    reload: Callable[[], AgentSettings] | None,
    uplink: Uplink | None,
    control: ControlLink | None,
) -> DeviceCredentials:
    """Re-read on SIGHUP and on a refusal; a new token or password goes where it is used."""
    credentials = DeviceCredentials(settings, reload or (lambda: settings))
    if uplink is not None:
        credentials.on_token.append(uplink.use_token)
        uplink.on_unauthorized.append(lambda: credentials.reread("the gateway refused the token"))
    if control is not None:
        credentials.on_password.append(control.use_password)
        control.on_refused_credentials.append(
            lambda: credentials.reread("the broker refused the password")
        )
    return credentials


def _serve(
    recorder: Recorder,
    status: DeviceStatus,
    control: ControlLink | None,
    health: Health,
    settings: AgentSettings,
    snapshots: StatusWriter,
    watchers: list[PeriodicCheck],
    hangup: Callable[[], None],
    privacy: PrivacySwitch,
    hub: FeedbackHub,
) -> None:
    stop = threading.Event()
    uplink = status.uplink
    ticker = Ticker()
    ticker.add("privacy", privacy.poll)
    ticker.add("feedback", hub.look)
    with _stop_on_signals(stop, hangup):
        hub.start()
        snapshots.start()
        for watcher in watchers:
            watcher.start()
        if uplink is not None:
            uplink.start()
        _resume(recorder, status)
        privacy.start()
        ticker.start()
        if control is not None:
            control.start()
        log.info(
            "room-agent %s running: device %s, uplink %s, control %s",
            VERSION,
            settings.device_id,
            "on" if uplink else "off (record only)",
            "on" if control else "off",
        )
        systemd.notify("READY=1")
        _watch(stop, health)
        log.info("room-agent: stopping")
        systemd.notify("STOPPING=1")
        if control is not None:
            control.refuse_commands()
        ticker.stop()  # the privacy switch no longer pauses or resumes
        recorder.suspend(SUSPEND_WAIT_S)
        snapshots.stop()  # its last word: the recorder's final state, all parts still up
        for watcher in watchers:
            watcher.stop()
        if control is not None:
            control.stop()
        if uplink is not None:
            uplink.stop()
        hub.stop()
    log.info("room-agent: stopped")


def _feedback(
    settings: AgentSettings,
    recorder: Recorder,
    control: ControlLink | None,
    status: DeviceStatus,
    privacy: PrivacySwitch,
) -> FeedbackHub:
    """The room's feedback (agent/feedback/): indicators, cues and hooks, all optional."""
    hub = FeedbackHub(
        settings,
        recorder,
        Indicators(build_indicators(settings)),
        CuePlayer(settings.feedback.cues),
        Hooks(settings.feedback.hooks, settings.device_id, settings.feedback.hook_timeout_s),
        privacy,
    )
    recorder.add_listener(hub)
    privacy.on_change.append(hub.privacy_changed)
    hub.watch(status.reason)
    if control is not None:
        control.on_connection.append(hub.connection)
        control.on_notification.append(hub.notified)
    return hub


@contextmanager
def _button(settings: AgentSettings, hub: FeedbackHub) -> Iterator[None]:
    gpio = settings.feedback.gpio
    button = None
    if gpio.button_pin is not None:
        try:
            from agent.feedback.gpio import GpioButton

            button = GpioButton(gpio, hub.button)
        except Exception as exc:
            log.error("feedback: the button is not available (%s)", exc)
    try:
        yield
    finally:
        if button is not None:
            button.close()


def _status_writer(
    settings: AgentSettings, status: DeviceStatus, control: ControlLink | None, health: Health
) -> StatusWriter:
    """state_dir/status.json for `room-agent status` (agent/diagnostics/status_file.py):
    rewritten on every recorder change and heartbeat, and whenever anything else it shows
    changed."""
    started = datetime.now(UTC)
    writer = StatusWriter(
        settings.state_dir / STATUS_FILE,
        lambda: build_snapshot(status, control, health.problem, started),
    )
    status.recorder.add_listener(writer)
    status.on_heartbeat.append(writer.poke)
    return writer


def _resume(recorder: Recorder, status: DeviceStatus) -> None:
    session_id = recorder.interrupted_session
    presence = status.microphone_presence
    if session_id is None:
        return
    refusal = status.start_refusal()
    if refusal is not None:
        log.warning("room-agent: session %s not resumed (%s)", session_id, refusal)
        if presence is not None:
            presence.check_now()
        return
    try:
        recorder.start(session_id)
    except (AudioInputError, RecorderError, SpoolError) as exc:
        if presence is not None and isinstance(exc, AudioInputError):
            presence.failed_to_open()
        log.warning(
            "room-agent: session %s not resumed (%s); a start command resumes it, a stop closes it",
            session_id,
            type(exc).__name__,
        )
        return
    log.info("room-agent: session %s resumed after a restart", session_id)


def _watch(stop: threading.Event, health: Health) -> None:
    """Until a signal: ping the watchdog while healthy; log a problem once when it starts."""
    interval = systemd.watchdog_interval_s() or IDLE_CHECK_S
    reported: str | None = None
    while not stop.wait(interval):
        problem = health.problem()
        if problem is None:
            systemd.notify("WATCHDOG=1")
        elif problem != reported:
            log.error("room-agent: unhealthy (%s); the watchdog is no longer pinged", problem)
        reported = problem


def _microphone(settings: AgentSettings) -> AudioSource:
    from agent.pipeline.capture import MicrophoneSource

    return MicrophoneSource(settings.audio)


def _uplink_client(settings: LinkSettings) -> httpx.Client:
    token = settings.ingest_token
    if token is None:
        raise Fatal(
            "agent.link.ingest_token is not set (needed with agent.link.gateway_url; give it "
            "as ingest_token_file, ROOM_AGENT_LINK__INGEST_TOKEN or the credential ingest-token)"
        )
    try:
        return make_client(settings, token)
    except (OSError, ssl.SSLError) as exc:
        raise Fatal(f"agent.link.ca_file: {settings.ca_file}: {_why(exc)}") from None


def _check_mqtt(mqtt: MqttSettings) -> None:
    if mqtt.password is None and mqtt.client_cert_file is None:
        raise Fatal(
            "agent.mqtt.password is not set (give it as password_file, "
            "ROOM_AGENT_MQTT__PASSWORD or the credential mqtt-password; or use a client "
            "certificate)"
        )
    if not mqtt.broker_url.startswith("mqtts://"):
        return
    try:
        tls_context(mqtt)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(
            str(path)
            for path in (mqtt.ca_file, mqtt.client_cert_file, mqtt.client_key_file)
            if path is not None
        )
        raise Fatal(f"agent.mqtt TLS files ({files or 'system CA'}): {_why(exc)}") from None


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__


@contextmanager
def _stop_on_signals(stop: threading.Event, hangup: Callable[[], None]) -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        stop.set()

    def on_hangup(signum: int, frame: object) -> None:
        # Reading files and asking the gateway: not in a signal handler.
        threading.Thread(target=hangup, name="sighup", daemon=True).start()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _configure_logging(level: str) -> None:
    """One line per event on stderr (journald adds the time); ids only, never content."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
