"""`room-gateway demo`: the whole system, end to end, on this machine, in about a minute.

Steps, each shown as it completes (devtools/demo/progress.py):

 1. speech: a fictional two-voice session is synthesised (devtools/demo/conversation.py);
 2. provisioned: a config file, then keygen, broker-config, device add, partner-token create;
 3. processes: mosquitto (from broker-config's files), the Blueprint simulator, the gateway
    (SQLite in the state dir) and the room agent, whose microphone is the ALSA file plugin
    reading a FIFO that this process feeds in real time;
 4. room online: the device's retained MQTT state reached the gateway;
 5. clinician and client: ensured in Blueprint through the partner API;
 6. recording: a session started through the partner API; the device confirmed the start;
 7. chunks uploaded: the speech plays into the microphone; sealed chunks reach the gateway
    during the session;
 8. stopped .. 13. device notified: stop, assembly, upload to Blueprint, transcript, note,
    and the device told over MQTT;

then the progress note, the timeline with durations, and the privacy check (no name on
MQTT or in a log). Exit 0. A step that does not complete in time ends the demo with the
step's name and the last lines of the relevant logs (exit 1); Ctrl-C or SIGTERM stops
everything, agent first, and exits 130 or 143. The state directory is removed at the end
unless ``--keep``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from devtools.demo import privacy, report
from devtools.demo.conversation import Conversation, build_conversation
from devtools.demo.microphone import PERIOD_FRAMES, FifoFeeder
from devtools.demo.partner import CLIENT_ID, CLINICIAN_ID, NAMES, Partner, PartnerError
from devtools.demo.privacy import MqttProbe
from devtools.demo.processes import ChildExited, http_up, port_open, wait_until
from devtools.demo.progress import Progress
from devtools.demo.signals import Interrupted, Signals
from devtools.demo.speech import SAMPLE_RATE, SpeechError
from devtools.demo.stack import Layout, Ports, Stack, StackError

STOP_TIMEOUTS_S = {"agent": 15.0, "gateway": 10.0, "simulator": 5.0, "mosquitto": 5.0}
STARTUP_S = 30.0
STEP_S = 30.0
BLUEPRINT_S = 60.0
LOG_LINES = 12


@dataclass(frozen=True)
class DemoOptions:
    tty: bool
    keep: bool = False


class StepFailed(Exception):
    """A step did not complete; ``logs`` names the processes whose logs explain it."""

    def __init__(self, step: str, reason: str, logs: tuple[str, ...]) -> None:
        super().__init__(reason)
        self.step = step
        self.logs = logs


class SessionFailed(Exception):
    """The gateway marked the session failed; the message is its reason (ids only)."""


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run the demo; returns the exit status (0, 1 failed step, 130/143 interrupted)."""
    root = Path(tempfile.mkdtemp(prefix="room-demo-"))
    progress = Progress(out, options.tty)
    signals = Signals().install()
    demo = Demo(Layout(root), progress, signals)
    status = 0
    try:
        progress.echo(
            f"room-gateway demo: state in {root} ({'kept' if options.keep else 'removed'}"
            " at the end); Ctrl-C stops everything"
        )
        demo.run()
    except Interrupted as exc:
        during = f" during step '{progress.current}'" if progress.current else ""
        progress.close()
        progress.echo(
            f"interrupted ({exc}){during}: stopping the agent, gateway, simulator, broker"
        )
        status = exc.exit_code
    except StepFailed as exc:
        progress.failed(str(exc).splitlines()[0] if str(exc) else "failed")
        demo.explain(exc)
        status = 1
    finally:
        with signals.shielded():
            stopped = demo.shutdown()
            progress.close()
            if not options.keep:
                shutil.rmtree(root, ignore_errors=True)
            where = f"state kept in {root}" if options.keep else "state directory removed"
            progress.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}; {where}")
        signals.restore()
    return signals.exit_code or status


class Demo:
    def __init__(self, layout: Layout, progress: Progress, signals: Signals) -> None:
        self.layout = layout
        self.progress = progress
        self.signals = signals
        self.stack: Stack | None = None
        self.partner: Partner | None = None
        self.feeder: FifoFeeder | None = None
        self.probe: MqttProbe | None = None
        self.conversation: Conversation | None = None

    # --- the steps ----------------------------------------------------------------------------

    def run(self) -> None:
        self.speech()
        self.provision()
        self.processes()
        self.room_online()
        self.people()
        session_id = self.recording()
        self.speak(session_id)
        self.stop(session_id)
        self.follow(session_id)
        self.results(session_id)
        self.privacy_check()

    def speech(self) -> None:
        with self.step("speech", "synthesising a fictional session (espeak-ng)", ()):
            self.conversation = conversation = build_conversation()
            self.progress.done(
                f"{conversation.duration_s:.1f} s fictional session: {conversation.turns} turns"
                f" in two espeak-ng voices, {conversation.speech_s:.1f} s of speech"
            )

    def provision(self) -> None:
        with self.step("provisioned", "keygen, broker-config, device add", ()):
            stack = self.stack = Stack(self.layout, Ports.pick())
            stack.write_config()
            token = stack.provision()
            self.partner = Partner(stack.gateway_url, token)
            self.progress.done(
                f"{self.layout.config.name}, then room-gateway keygen, broker-config,"
                f" device add {stack.room}, partner-token create"
            )

    def processes(self) -> None:
        stack = self._stack()
        names = ("mosquitto", "simulator", "gateway", "agent")
        with self.step("processes", "starting mosquitto, simulator, gateway", names):
            with self.signals.deferred():
                stack.start_services()
            wait_until(
                self._alive_and(lambda: port_open(stack.ports.broker)), STARTUP_S, "mosquitto"
            )
            # a replica's user (stack.py): as `gateway` it would knock the relay off
            probe = MqttProbe(stack.broker_url, "gateway-probe", stack.gateway_password())
            self.probe = probe.start()
            wait_until(self._alive_and(self.probe.subscribed.is_set), STARTUP_S, "MQTT probe")
            sim_up = self._alive_and(lambda: http_up(f"{stack.simulator_url}/_sim/state"))
            wait_until(sim_up, STARTUP_S, "simulator")
            gateway_up = self._alive_and(lambda: http_up(f"{stack.gateway_url}/readyz"))
            wait_until(gateway_up, STARTUP_S, "gateway")
            self.progress.update("starting the room agent")
            self.feeder = FifoFeeder(self.layout.fifo, period_frames=PERIOD_FRAMES)
            with self.signals.deferred():
                stack.start_agent()
            ports = {"mosquitto": stack.ports.broker, "simulator": stack.ports.simulator,
                     "gateway": stack.ports.gateway}  # fmt: skip
            self.progress.done(
                ", ".join(
                    f"{child.name} pid={child.pid}"
                    + (f" port={ports[child.name]}" if child.name in ports else "")
                    for child in stack.children
                )
            )

    def room_online(self) -> None:
        stack, partner = self._stack(), self._partner()
        with self.step("room online", f"waiting for {stack.room}'s device", ("agent", "gateway")):

            def online() -> dict[str, Any] | None:
                room = self._poll(lambda: partner.room(stack.room))
                return room if room and room.get("online") else None

            room = wait_until(online, STARTUP_S, f"{stack.room} online")
            self.progress.done(
                f"{stack.room}: the device is connected ({room['recorder']}),"
                f" broker {stack.broker_url}"
            )

    def people(self) -> None:
        partner = self._partner()
        with self.step("clinician and client", "PUT through the partner API", ("gateway",)):
            partner.ensure_people()

            def ensured() -> tuple[dict[str, Any], dict[str, Any]] | None:
                pair = self._poll(lambda: (partner.clinician(), partner.client()))
                if pair and all(record["state"] == "ensured" for record in pair):
                    return pair
                return None

            clinician, client = wait_until(ensured, STEP_S, "clinician and client in Blueprint")
            self.progress.done(
                f"{CLINICIAN_ID} -> Blueprint {clinician['blueprint_id']},"
                f" {CLIENT_ID} -> Blueprint {client['blueprint_id']}"
            )

    def recording(self) -> str:
        stack, partner = self._stack(), self._partner()
        with self.step("recording", "POST /v1/sessions", ("gateway", "agent")):
            session_id = partner.start_session(stack.room)["session_id"]
            self.progress.update(f"session {session_id}: waiting for the device to confirm")
            self._wait_steps(session_id, "start_confirmed", STEP_S)
            self.progress.done(f"session {session_id}: started, the device confirmed over MQTT")
            return session_id

    def speak(self, session_id: str) -> None:
        conversation, feeder, partner = self._conversation(), self._feeder(), self._partner()
        with self.step("chunks uploaded", "playing the speech into the microphone", ("agent",)):
            start = feeder.frames_played
            feeder.play(conversation.pcm)
            total = len(conversation.pcm)
            seen = {"chunks": 0}

            def played() -> bool:
                self._check_children()
                done = feeder.frames_played - start
                session = self._poll(lambda: partner.session(session_id))
                audio = (session or {}).get("audio") or {}
                chunks = audio.get("chunks_received", 0)
                if chunks > seen["chunks"]:
                    seen["chunks"] = chunks
                    speech = audio["speech_s"]
                    self.progress.note(f"chunk {chunks} at the gateway ({speech:.1f} s of speech)")
                seconds = min(done, len(conversation.pcm)) / SAMPLE_RATE
                self.progress.update(
                    f"{seconds:4.1f}/{conversation.duration_s:.1f} s played, {chunks} chunks"
                    " at the gateway",
                    min(1.0, done / total),
                )
                return done >= total

            wait_until(played, conversation.duration_s + STEP_S, "the speech played", 0.1)
            audio = partner.session(session_id).get("audio") or {}
            self.progress.done(
                f"{conversation.duration_s:.1f} s played in real time;"
                f" {audio.get('chunks_received', 0)} sealed chunks reached the gateway during"
                f" the session ({audio.get('speech_s', 0.0):.1f} s of speech kept by VAD)"
            )

    def stop(self, session_id: str) -> None:
        partner = self._partner()
        with self.step("stopped", "POST /v1/sessions/{id}/stop", ("gateway", "agent")):
            partner.stop_session(session_id)
            session = self._wait_steps(session_id, "device_closed", STEP_S)
            closed = _detail(session, "device_closed")
            self.progress.done(f"the device closed the session: {closed}")

    def follow(self, session_id: str) -> None:
        """Assembly, upload, Blueprint's processing and the notifications, step by step."""
        with self.step("assembled", "waiting for the last chunks", ("gateway", "agent")):
            session = self._wait_steps(session_id, "audio_ready", STEP_S)
            audio = session.get("audio") or {}
            self.progress.done(
                f"{audio.get('manifest_chunks')} chunks -> one FLAC file"
                f" ({audio.get('speech_s', 0.0):.1f} s)"
            )
        with self.step("uploaded to Blueprint", "uploading", ("gateway", "simulator")):
            session = self._wait_steps(session_id, "audio_uploaded", BLUEPRINT_S)
            self.progress.done(f"Blueprint session {session['blueprint']['session_id']}")
        with self.step("transcript ready", "Blueprint is transcribing", ("simulator", "gateway")):
            self._wait_steps(session_id, "transcript_fetched", BLUEPRINT_S)
            self.progress.done("webhook transcript_ready received (signed), transcript fetched")
        with self.step("note ready", "Blueprint is writing the note", ("simulator", "gateway")):
            self._wait_steps(session_id, "notes_ready", BLUEPRINT_S)
            self.progress.done("webhook progress_note_generated received, note fetched")
        with self.step("device notified", "notifying the room", ("gateway", "agent")):
            self._wait_steps(session_id, "device_notified", STEP_S, detail="notes_ready")
            topic = f"rooms/{self._stack().room}/notify"
            probe = self._probe()
            wait_until(lambda: probe.seen(topic, b"notes_ready"), STEP_S, f"notes_ready on {topic}")
            self.progress.done(f"{topic}: notes_ready (session id only)")

    def results(self, session_id: str) -> None:
        partner = self._partner()
        self.progress.echo()
        for line in report.note_lines(partner.artifacts(session_id)):
            self.progress.echo(line)
        self.progress.echo()
        for line in report.timeline_lines(partner.session(session_id)):
            self.progress.echo(line)
        self.progress.echo()

    def privacy_check(self) -> None:
        stack, probe = self._stack(), self._probe()
        with self.step("privacy", "searching MQTT traffic and logs", ()):
            found = privacy.check(NAMES, probe.messages, stack.logs())
            if found.leaks:
                raise StepFailed("privacy", "; ".join(found.leaks), ())
            self.progress.done(
                f"{found.messages} MQTT messages and {found.logs} logs searched:"
                " no clinician or client name in any"
            )

    # --- failure and shutdown -----------------------------------------------------------------

    def explain(self, failure: StepFailed) -> None:
        """Which step failed and why, then the last lines of the logs that tell more."""
        self.progress.echo(f"demo failed at step '{failure.step}': {failure}")
        stack = self.stack
        for name in failure.logs:
            child = stack.child(name) if stack is not None else None
            if child is None:
                continue
            state = "running" if child.alive() else f"exited {child.returncode}"
            self.progress.echo(f"--- {child.log_path.name} ({name} {state}), last lines:")
            for line in child.tail(LOG_LINES):
                self.progress.echo(f"    {line}")
        self.progress.echo("(room-gateway demo --keep keeps the state directory and all logs)")

    def shutdown(self) -> list[str]:
        """The agent first (it closes its capture and spool), then the rest in reverse start
        order; the FIFO is fed until the agent is gone (a capture blocked on it could not
        close). Returns what was stopped."""
        stopped = []
        stack = self.stack
        children = list(reversed(stack.children)) if stack is not None else []
        for child in children:
            if child.name == "mosquitto" and self.probe is not None:
                self.probe.stop()
            if child.proc is not None:
                child.stop(STOP_TIMEOUTS_S.get(child.name, 5.0), lambda: self.signals.hurry)
                stopped.append(f"{child.name} (pid {child.pid})")
        if self.feeder is not None:
            self.feeder.stop()
        if self.partner is not None:
            self.partner.close()
        return stopped

    # --- helpers --------------------------------------------------------------------------------

    @contextmanager
    def step(self, name: str, doing: str, logs: tuple[str, ...]) -> Iterator[None]:
        """A step: shown while it runs; any expected failure becomes StepFailed(name)."""
        self.progress.begin(name, doing)
        try:
            yield
        except StepFailed:
            raise
        except ChildExited as exc:
            raise StepFailed(name, str(exc), (exc.child.name, *logs)) from None
        except (TimeoutError, StackError, PartnerError, SpeechError, SessionFailed) as exc:
            raise StepFailed(name, str(exc) or type(exc).__name__, logs) from None

    def _wait_steps(
        self, session_id: str, step: str, timeout: float, detail: str | None = None
    ) -> dict[str, Any]:
        """Poll the session until its timeline has ``step`` (with ``detail``, if given);
        fail fast if the session failed."""
        partner = self._partner()

        def reached() -> dict[str, Any] | None:
            session = self._poll(lambda: partner.session(session_id))
            if session is None:
                return None
            if session["state"] == "failed":
                raise SessionFailed(f"session failed: {session.get('error')}")
            entries = session["timeline"]
            if any(e["step"] == step and detail in (None, e["detail"]) for e in entries):
                return session
            return None

        what = f"{step}{f' ({detail})' if detail else ''} in the session's timeline"
        return wait_until(reached, timeout, what)

    def _poll(self, call: Callable[[], Any]) -> Any:
        """One poll of the partner API; None (try again) when the gateway is not answering,
        but a dead child ends the wait at once."""
        self._check_children()
        try:
            return call()
        except PartnerError:
            return None

    def _alive_and(self, condition: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            self._check_children()
            return condition()

        return check

    def _check_children(self) -> None:
        if self.stack is not None:
            for child in self.stack.children:
                child.check()

    def _stack(self) -> Stack:
        assert self.stack is not None
        return self.stack

    def _partner(self) -> Partner:
        assert self.partner is not None
        return self.partner

    def _feeder(self) -> FifoFeeder:
        assert self.feeder is not None
        return self.feeder

    def _probe(self) -> MqttProbe:
        assert self.probe is not None
        return self.probe

    def _conversation(self) -> Conversation:
        assert self.conversation is not None
        return self.conversation


def _detail(session: dict[str, Any], step: str) -> str:
    entry = next((e for e in session["timeline"] if e["step"] == step), None)
    return (entry or {}).get("detail") or step
