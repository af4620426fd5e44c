"""The recorder: one session at a time, source -> segmenter -> encode -> seal -> spool.

States: idle -> recording -> closing -> closed; ``closed`` is idle with the outcome of the
last session (its reason and counts) kept for status, and a new start leaves it.

A power cut must not end a therapy session's recording for good, so the session being
recorded is written to ``<state_dir>/recorder.json`` (atomically) before any audio is
taken, and cleared once the session is closed in the spool. A session named there and
still open in the spool is *interrupted*: the next start resumes it, continuing the seq
after the highest ever used and the timeline after its last chunk. Any other open session
in the spool is closed as "interrupted" so its manifest can go to the gateway. suspend()
leaves the same situation on purpose (recording -> idle, the session open and resumable):
what a service stop mid-session does.

Pause: while paused the microphone is closed to the session: every block captured after
the pause is dropped as it is read (a live source is read late: what it captured before
the pause is kept, and what it captured before the resume stays out, though read after
it), before VAD, encoding and the spool; the speech chunk in
progress is finished at the pause, the audio timeline does not advance, and the paused
stretch (times and its offset in the audio, nothing else) is journalled for the manifest.
A session paused when the service stopped or the power went is resumed paused.

When the spool is full the session is closed with reason "spool_full": what is spooled is
kept, nothing is deleted to make room. Listeners hear of every step (for MQTT); they run on
the recorder thread and a failing listener never stops a recording.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Concatenate, ParamSpec, TypedDict, Unpack

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.pipeline.audio import (
    SAMPLE_RATE,
    AudioInputError,
    AudioSource,
    CaptureStats,
    TimedSource,
    WakeableSource,
)
from agent.pipeline.seal import ChunkSealer, gateway_key
from agent.pipeline.vad import Segmenter, SpeechChunk
from agent.settings import AgentSettings
from agent.spool import Spool, SpoolError, SpoolFull, read_regular, unreadable
from protocol.ids import ID_DESCRIPTION, ID_PATTERN, SessionId
from protocol.manifest import CloseReason, SessionManifest
from protocol.messages import (
    ChunkSpooled,
    DeviceReason,
    PauseSource,
    RecorderState,
    SessionClosed,
    SessionPaused,
    SessionResumed,
    SessionStarted,
    now,
)
from runtime.files import write_atomically

log = logging.getLogger(__name__)

STATE_FILE = "recorder.json"
# Seqs the state file reserves at a time (one write per SEQ_BLOCK chunks): if the spool is
# lost but the state file survives, the resumed session continues past every seq it may
# have used, so the gateway never gets a second chunk under one seq (409 for ever).
SEQ_BLOCK = 64
# How soon a stop is seen; above capture.LOOK_EVERY_S, or the reader wakes for nothing.
READ_TIMEOUT_S = 1.0
SESSION_ID = re.compile(ID_PATTERN)

SourceFactory = Callable[[], AudioSource]


class RecorderError(Exception):
    """A start or stop the recorder refuses; one line, ids only."""


class RecorderSnapshot(BaseModel):
    """What status and MQTT report about the recorder."""

    state: RecorderState = "idle"
    session_id: str | None = None
    resumed: bool = False
    reason: CloseReason | None = None
    last_error: DeviceReason | None = None
    detail: str | None = None
    chunks: int = 0
    speech_s: float = 0.0
    unspooled_s: float = 0.0
    paused: bool = False
    capture: CaptureStats = CaptureStats()


class RecorderListener:
    """Receives the recorder's events on its thread; override what you need, return fast."""

    def session_started(self, event: SessionStarted) -> None:
        pass

    def chunk_spooled(self, event: ChunkSpooled) -> None:
        pass

    def session_closed(self, event: SessionClosed, manifest: SessionManifest) -> None:
        pass

    def session_paused(self, event: SessionPaused) -> None:
        pass

    def session_resumed(self, event: SessionResumed) -> None:
        pass

    def state_changed(self, snapshot: RecorderSnapshot) -> None:
        pass


class _SnapshotChange(TypedDict, total=False):
    """What ``Recorder._update`` may change in the snapshot, with its type."""

    state: RecorderState
    session_id: str | None
    resumed: bool
    reason: CloseReason | None
    last_error: DeviceReason | None
    detail: str | None
    chunks: int
    speech_s: float
    unspooled_s: float
    paused: bool
    capture: CaptureStats


_P = ParamSpec("_P")


class _StateFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: SessionId | None
    at: datetime
    paused: bool = False  # resumed paused: a pause must survive a restart
    seq_reserved: int = Field(default=0, ge=0)  # the session never used a seq from here on
    spooled: bool = False  # the session was in the spool when this was written


def new_session_id() -> str:
    return uuid.uuid4().hex


class Recorder:
    def __init__(
        self, settings: AgentSettings, spool: Spool, source_factory: SourceFactory
    ) -> None:
        """Raises SealingKeyError when the gateway key is missing or invalid."""
        self.settings = settings
        self.spool = spool
        self.source_factory = source_factory
        self._starting = threading.Lock()  # held for the whole of a start()
        self.sealer = ChunkSealer(
            settings.device_id,
            gateway_key(settings.gateway_public_key),
            settings.audio.codec,
            settings.audio.opus_bitrate_kbps,
        )
        self.state_path = Path(settings.state_dir) / STATE_FILE
        self._listeners: list[RecorderListener] = []
        self._mutex = threading.Lock()
        self._snapshot = RecorderSnapshot()
        self._stop = threading.Event()
        self._suspending = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: AudioSource | None = None
        # Set while the microphone is closed to the session; checked for every block read.
        self._closed_to_session = threading.Event()
        self._paused_at: datetime | None = None
        # The pause's time.monotonic(): a TimedSource's audio captured by then is kept.
        self._paused_mono = -math.inf
        # Ended pauses, as (paused, resumed) time.monotonic(), that a TimedSource read late
        # may still hand out audio from: none of it is kept.
        self._paused_spans: list[tuple[float, float]] = []
        self._pause_source: PauseSource = "command"
        self._position_s = 0.0  # where in the session's audio capture has got to
        self.interrupted_paused = False
        self._interrupted_paused_at: datetime | None = None
        self._reserved = 0  # see SEQ_BLOCK
        self._records_lost_below: int | None = None  # the interrupted session's, if lost
        self.interrupted_session = self._find_interrupted()

    # -- public API

    def add_listener(self, listener: RecorderListener) -> None:
        self._listeners.append(listener)

    @property
    def state(self) -> RecorderSnapshot:
        with self._mutex:
            snapshot = self._snapshot.model_copy()
        source = self._source
        if source is not None:
            snapshot.capture = dataclasses.replace(source.stats)
        return snapshot

    def start(
        self,
        session_id: str | None = None,
        max_audio_s: float | None = None,
        paused: bool | None = None,
    ) -> str:
        """Start (or resume the interrupted) session and return its id; recording runs on a
        thread. ``max_audio_s`` ends the session after that much captured audio. ``paused``:
        begin with the microphone closed to it (None: as the interrupted session was).

        Raises RecorderError (busy), SpoolFull, AudioInputError (source), SpoolError."""
        # Checking the state and publishing "recording" are far apart (the microphone
        # opens in between): one start at a time, and a second one is refused, not queued.
        if not self._starting.acquire(blocking=False):
            raise RecorderError("another start is in progress")
        try:
            return self._start(session_id, max_audio_s, paused)
        finally:
            self._starting.release()

    def _start(self, session_id: str | None, max_audio_s: float | None, paused: bool | None) -> str:
        with self._mutex:
            if self._snapshot.state in ("recording", "closing"):
                raise RecorderError(f"already recording session {self._snapshot.session_id}")
        if session_id is not None and not SESSION_ID.match(session_id):
            raise RecorderError(f"session id must be {ID_DESCRIPTION}")
        interrupted = self.interrupted_session
        if session_id is None:
            session_id = interrupted or new_session_id()
        resumed = session_id == interrupted and self._in_spool(session_id)
        if paused is None:
            paused = resumed and self.interrupted_paused
        self.spool.check_room(self._largest_chunk_bytes())
        source = self.source_factory()
        lost_below = self._records_lost_below if session_id == interrupted else None
        try:
            if interrupted is not None and session_id != interrupted:
                self.close_interrupted()
            first = self.spool.session(session_id).next_seq if resumed else lost_below or 0
            self._reserved = first + SEQ_BLOCK
            _write_state(self.state_path, session_id, paused, self._reserved, spooled=resumed)
            if not resumed:
                self.spool.create_session(session_id, self.settings.device_id, lost_below)
                _write_state(self.state_path, session_id, paused, self._reserved, spooled=True)
        except BaseException:
            source.close()
            raise
        self._records_lost_below = None
        info = self.spool.session(session_id)
        self.interrupted_session = None
        self._source = source
        self._stop.clear()
        self._suspending.clear()
        self._position_s = info.end_s
        if resumed and self._interrupted_paused_at is not None:
            # Paused when the power went: that stretch ends now, as far as is known.
            self._paused_at = self._interrupted_paused_at
            self._journal_pause(session_id)
        self._interrupted_paused_at = None
        self._paused_spans = []
        if paused:
            self._paused_mono = -math.inf  # begins paused: nothing of this source is kept
            self._closed_to_session.set()
            self._paused_at, self._pause_source = now(), "command"
        else:
            self._closed_to_session.clear()
            self._paused_at = None
        limit = None if max_audio_s is None else int(max_audio_s * SAMPLE_RATE)
        # Made before "recording" is published, started after: whoever sees "recording"
        # (the watchdog's health check) never sees the previous session's finished thread.
        self._thread = threading.Thread(
            target=self._record,
            args=(session_id, source, info.end_s, info.next_seq, limit),
            name=f"recorder-{session_id[:8]}",
            daemon=True,
        )
        self._update(
            state="recording",
            session_id=session_id,
            resumed=resumed,
            reason=None,
            last_error=None,
            detail=None,
            chunks=info.chunks,
            speech_s=info.speech_s,
            unspooled_s=0.0,
            paused=bool(paused),
        )
        self._emit(
            RecorderListener.session_started, SessionStarted(session_id=session_id, resumed=resumed)
        )
        if paused:
            event = SessionPaused(session_id=session_id, offset_s=self._position_s)
            self._emit(RecorderListener.session_paused, event)
        self._thread.start()
        return session_id

    def pause(self, source: PauseSource = "command") -> bool:
        """Close the microphone to the session now: every block captured from here on is
        dropped before VAD (what a TimedSource captured before, read late, is kept). False
        if it already was; RecorderError if not recording."""
        with self._mutex:
            if self._snapshot.state != "recording" or self._snapshot.session_id is None:
                raise RecorderError("not recording")
            if self._closed_to_session.is_set():
                return False
            self._paused_mono = time.monotonic()
            reading = self._source
            if isinstance(reading, TimedSource):  # what it captured before now is kept
                reading.split_at(self._paused_mono)
            self._closed_to_session.set()  # nothing captured after this point is kept
            self._paused_at, self._pause_source = now(), source
            self._snapshot.paused = True
            session_id = self._snapshot.session_id
            at = self._paused_at
        _write_state(self.state_path, session_id, True, self._reserved, spooled=True)
        offset = round(self._position_s, 3)
        self._emit(
            RecorderListener.session_paused,
            SessionPaused(session_id=session_id, source=source, offset_s=offset, at=at),
        )
        self._emit(RecorderListener.state_changed, self.state)
        log.info("recorder: session %s paused (%s)", session_id, source)
        return True

    def resume(self, source: PauseSource = "command") -> bool:
        """Open the microphone to the session again; the paused stretch is journalled.
        False if it was not paused; RecorderError if not recording."""
        with self._mutex:
            if self._snapshot.state != "recording" or self._snapshot.session_id is None:
                raise RecorderError("not recording")
            if not self._closed_to_session.is_set():
                return False
            session_id = self._snapshot.session_id
        self._journal_pause(session_id)
        _write_state(self.state_path, session_id, False, self._reserved, spooled=True)
        with self._mutex:
            resumed = time.monotonic()
            reading = self._source
            if isinstance(reading, TimedSource):  # what it captured while paused stays out
                reading.split_at(resumed)
                self._paused_spans = [*self._paused_spans, (self._paused_mono, resumed)]
            self._paused_at = None
            self._snapshot.paused = False
            self._closed_to_session.clear()
        self._emit(
            RecorderListener.session_resumed, SessionResumed(session_id=session_id, source=source)
        )
        self._emit(RecorderListener.state_changed, self.state)
        log.info("recorder: session %s resumed (%s)", session_id, source)
        return True

    @property
    def paused_by(self) -> PauseSource | None:
        """Who closed the microphone, while it is closed."""
        with self._mutex:
            return self._pause_source if self._closed_to_session.is_set() else None

    def _journal_pause(self, session_id: str) -> None:
        started = self._paused_at
        if started is None:
            return
        try:
            self.spool.record_pause(session_id, round(self._position_s, 3), started, now())
        except (SpoolError, OSError) as exc:
            log.warning("recorder: session %s: paused interval not journalled (%s)",
                        session_id, type(exc).__name__)  # fmt: skip

    def suspend(self, timeout: float | None = None) -> RecorderSnapshot:
        """End capture but keep the session open and named in the state file, so the next
        start (in this process or after a restart) resumes it: a service stop mid-session
        (an update, a reboot) must not split a therapy session in two. What was captured
        is spooled first, as at a stop."""
        self._suspending.set()
        self.request_stop()
        self.wait(timeout)
        return self.state

    def request_stop(self) -> None:
        """Ask the session to end; safe from a signal handler. A live source's read waits
        up to a second for its next look: it is woken, so the stop is acted on now."""
        self._stop.set()
        source = self._source
        if isinstance(source, WakeableSource):
            source.wake()

    def stop(self, timeout: float | None = None) -> RecorderSnapshot:
        """End the session (reason "stopped") and wait until it is closed in the spool."""
        self.request_stop()
        self.wait(timeout)
        return self.state

    def wait(self, timeout: float | None = None) -> bool:
        """True once no session is running."""
        thread = self._thread
        if thread is None:
            return True
        if thread.ident is None:  # made, about to be started by start()
            return False
        thread.join(timeout)
        return not thread.is_alive()

    def close_interrupted(self) -> SessionManifest | None:
        """Close the interrupted session (reason "interrupted") instead of resuming it."""
        session_id = self.interrupted_session
        if session_id is None:
            return None
        manifest = None
        if self._in_spool(session_id):
            manifest = self.spool.close_session(session_id, "interrupted")
        _write_state(self.state_path, None)
        self.interrupted_session = None
        if manifest is not None:
            self._emit_closed(manifest)
        return manifest

    # -- the recording thread

    def _record(
        self,
        session_id: str,
        source: AudioSource,
        offset_s: float,
        next_seq: int,
        limit: int | None,
    ) -> None:
        reason: CloseReason = "stopped"
        error: DeviceReason | None = None
        detail: str | None = None
        segmenter = Segmenter(self.settings.audio)
        taken = 0
        base_s = offset_s  # where the current segmenter's stream starts in the session
        pushed = 0  # samples given to the current segmenter

        def room_left() -> bool:
            return limit is None or taken < limit

        def closed_to_session() -> bool:
            """This audio was captured while paused (or, when unknown, it is read while
            paused)."""
            if not isinstance(source, TimedSource):
                return self._closed_to_session.is_set()
            at = source.captured_at
            if self._closed_to_session.is_set() and at > self._paused_mono:
                return True
            spans = self._paused_spans
            if spans and spans[0][1] < at:  # read past: forget them
                with self._mutex:
                    self._paused_spans = spans = [s for s in self._paused_spans if s[1] >= at]
            return any(paused < at <= resumed for paused, resumed in spans)

        def take(block: np.ndarray) -> None:
            nonlocal taken, next_seq, pushed
            if closed_to_session():
                return  # paused: the block goes no further than this
            if limit is not None:
                block = block[: limit - taken]
            taken += len(block)
            pushed += len(block)
            self._position_s = base_s + pushed / SAMPLE_RATE
            if len(block):
                for chunk in segmenter.push(block):
                    next_seq = self._spool_chunk(session_id, next_seq, base_s, chunk)

        def close_segment() -> None:
            """At a pause: finish the speech in progress; the next audio starts a new
            segment where this one ended (the timeline does not advance while paused)."""
            nonlocal segmenter, base_s, pushed, next_seq
            for chunk in segmenter.flush():
                next_seq = self._spool_chunk(session_id, next_seq, base_s, chunk)
            base_s += pushed / SAMPLE_RATE
            pushed = 0
            segmenter = Segmenter(self.settings.audio)

        try:
            while not self._stop.is_set() and room_left():
                block = source.read(READ_TIMEOUT_S)
                if block is None:
                    break
                if closed_to_session():
                    if pushed:
                        close_segment()
                    continue  # dropped: nothing of it reaches VAD, encode or the spool
                take(block)
            # A stop ends capture, but what the device had already delivered is kept.
            source.close()
            while room_left() and (block := source.read(READ_TIMEOUT_S)) is not None:
                take(block)
            for chunk in segmenter.flush():
                next_seq = self._spool_chunk(session_id, next_seq, base_s, chunk)
        except SpoolFull as exc:
            # Not a warning in the log: the state and the closed event carry the alarm.
            reason, error, detail = "spool_full", DeviceReason.SPOOL_FULL, str(exc)
            log.info("recorder: session %s: %s; recording stopped", session_id, exc)
            self._count_unspooled(segmenter)
        except AudioInputError as exc:
            reason, error, detail = "device_lost", DeviceReason.DEVICE_LOST, str(exc)
            log.info("recorder: session %s: audio input lost", session_id)
        except Exception as exc:
            reason, error, detail = "error", DeviceReason.RECORDER_FAILED, type(exc).__name__
            log.exception("recorder: session %s failed", session_id)
        finally:
            source.close()
        if reason == "stopped" and self._suspending.is_set():
            self._suspend(session_id)
        else:
            self._close(session_id, reason, error, detail)

    def _suspend(self, session_id: str) -> None:
        self._source = None
        self.interrupted_session = session_id
        # Still paused: the state file says so (and since when), and the next start
        # journals that stretch and resumes it paused.
        self.interrupted_paused = self._closed_to_session.is_set()
        self._interrupted_paused_at = self._paused_at if self.interrupted_paused else None
        self._update(state="idle")
        log.info("recorder: session %s suspended; the next start resumes it", session_id)

    def _spool_chunk(self, session_id: str, seq: int, offset_s: float, chunk: SpeechChunk) -> int:
        if not len(chunk.pcm):
            return seq
        if seq >= self._reserved:  # the state file must say so before the seq is used
            self._reserved = seq + SEQ_BLOCK
            paused = self._closed_to_session.is_set()
            _write_state(self.state_path, session_id, paused, self._reserved, spooled=True)
        sealed = self.sealer.seal(session_id, seq, offset_s + chunk.start_s, chunk.pcm)
        try:
            pending = self.spool.append(sealed)
        except SpoolFull:
            with self._mutex:
                self._snapshot.unspooled_s += chunk.duration_s
            raise
        with self._mutex:
            self._snapshot.chunks += 1
            self._snapshot.speech_s = round(self._snapshot.speech_s + pending.duration_s, 3)
        self._emit(
            RecorderListener.chunk_spooled,
            ChunkSpooled(session_id=session_id, seq=seq, duration_s=pending.duration_s),
        )
        return seq + 1

    def _count_unspooled(self, segmenter: Segmenter) -> None:
        """Speech still in the segmenter when the spool filled is not stored: count it."""
        lost = sum(chunk.duration_s for chunk in segmenter.flush())
        with self._mutex:
            self._snapshot.unspooled_s = round(self._snapshot.unspooled_s + lost, 3)

    def _close(
        self,
        session_id: str,
        reason: CloseReason,
        error: DeviceReason | None,
        detail: str | None,
    ) -> None:
        self._update(state="closing", reason=reason, last_error=error, detail=detail)
        if self._closed_to_session.is_set():
            self._journal_pause(session_id)  # closed while paused: the pause ends here
            self._paused_at = None
        try:
            manifest = self.spool.close_session(session_id, reason)
            _write_state(self.state_path, None)
        except (SpoolError, OSError) as exc:
            # The state file still names the session: the next start resumes and closes it.
            log.error("recorder: session %s could not be closed: %s", session_id, exc)
            self._source = None
            self._update(state="closed", last_error=DeviceReason.CLOSE_FAILED)
            return
        capture = dataclasses.replace(self._source.stats) if self._source else CaptureStats()
        self._source = None
        self._update(
            state="closed",
            chunks=len(manifest.chunks),
            speech_s=round(manifest.speech_s, 3),
            capture=capture,
        )
        self._emit_closed(manifest)

    # -- helpers

    def _largest_chunk_bytes(self) -> int:
        """Room a session needs to store at least one chunk: raw PCM bounds FLAC and Opus."""
        return int(self.settings.audio.max_chunk_s * SAMPLE_RATE * 2) + 4096

    def _find_interrupted(self) -> str | None:
        """The session to resume, from the state file (also when the power went before
        its spool session existed); other open sessions are closed."""
        state = _read_state(self.state_path)
        recorded = state.session_id if state is not None else None
        paused = state is not None and state.paused
        self._interrupted_paused_at = state.at if state is not None and paused else None
        self.interrupted_paused = self._interrupted_paused_at is not None
        interrupted = recorded if recorded is not None and not self._in_spool(recorded) else None
        if interrupted is not None and state is not None and state.spooled:
            # It was in the spool, which has lost it: the gateway may hold its chunks up to
            # seq_reserved. It goes on from there, and its manifest says so.
            self._records_lost_below = max(state.seq_reserved, 1)
            log.warning(
                "recorder: session %s is gone from the spool (lost); it resumes at seq %d",
                interrupted,
                self._records_lost_below,
            )
        for info in self.spool.sessions():
            if info.closed:
                continue
            if info.session_id == recorded:
                interrupted = recorded
                continue
            log.warning("recorder: session %s was left open; closing it", info.session_id)
            self._emit_closed(self.spool.close_session(info.session_id, "interrupted"))
        if recorded is not None and interrupted is None:
            _write_state(self.state_path, None)
        return interrupted

    def _in_spool(self, session_id: str) -> bool:
        try:
            self.spool.session(session_id)
        except SpoolError:
            return False
        return True

    def _emit_closed(self, manifest: SessionManifest) -> None:
        event = SessionClosed(
            session_id=manifest.session_id,
            reason=manifest.reason,
            chunks=len(manifest.chunks),
            speech_s=round(manifest.speech_s, 3),
        )
        self._emit(RecorderListener.session_closed, event, manifest)

    def _update(self, **changes: Unpack[_SnapshotChange]) -> None:
        with self._mutex:
            for name, value in changes.items():
                setattr(self._snapshot, name, value)
        if "state" in changes:
            self._emit(RecorderListener.state_changed, self.state)

    def _emit(
        self,
        method: Callable[Concatenate[RecorderListener, _P], None],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> None:
        """``method`` names the event as RecorderListener declares it (a typo fails the
        type check and the import, not only a log line); each listener's own override runs."""
        for listener in list(self._listeners):
            try:
                getattr(listener, method.__name__)(*args, **kwargs)
            except Exception:
                log.exception("recorder: a %s listener failed", method.__name__)


def _read_state(path: Path) -> _StateFile | None:
    """The session to resume, whether it was paused (since ``at``), its seq reservation."""
    try:
        return _StateFile.model_validate_json(read_regular(path))
    except FileNotFoundError:
        return None
    except (ValidationError, OSError) as exc:
        why = "unreadable" if isinstance(exc, ValidationError) else unreadable(exc)
        log.warning("recorder: %s is %s; no session to resume", path.name, why)
        return None


def _write_state(
    path: Path,
    session_id: str | None,
    paused: bool = False,
    seq_reserved: int = 0,
    spooled: bool = False,
) -> None:
    """Atomically: a torn state file would lose which session to resume."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    state = _StateFile(
        session_id=session_id, at=now(), paused=paused, seq_reserved=seq_reserved, spooled=spooled
    )
    data = state.model_dump_json().encode()
    write_atomically(path, data)
