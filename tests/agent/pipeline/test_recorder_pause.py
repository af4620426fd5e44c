"""Pause with real parts: a source fed block by block -> Segmenter -> FLAC -> seal -> spool.

While paused, what the microphone delivers goes no further: a distinctive tone played
(over speech, so the VAD would keep it) only while paused is in no chunk, the audio
timeline does not advance, and the manifest lists the paused interval (times only).
"""

from __future__ import annotations

import queue
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from agent.pipeline.audio import CaptureStats
from agent.pipeline.recorder import Recorder, RecorderError, RecorderListener
from agent.settings import AgentSettings
from agent.spool import Spool
from protocol.envelope import generate_private_key, open_chunk, public_key_to_text
from runtime.codec import decode
from tests.support.speech import make_session_pcm
from tests.support.tone import mixed, tone, tone_level

KEY = generate_private_key()
GIB = 1024**3
BLOCK = 1600  # 100 ms
HEARD = 1000.0  # tone amplitude above which it was recorded (it is played at 6000)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    pcm, _ = make_session_pcm(24, 25, seed=5, knocks=False)
    return pcm


class Fed:
    """A microphone the test feeds: each ``play`` is delivered block by block, in order;
    ``drained`` waits until the recorder has read all of it."""

    def __init__(self) -> None:
        self.stats = CaptureStats(device_name="fed", device_rate=16_000)
        self.blocks: queue.Queue[np.ndarray | None] = queue.Queue()
        self.read_all = threading.Condition()
        self.queued = self.taken = 0
        self.closed = False

    def play(self, pcm: np.ndarray) -> None:
        for start in range(0, len(pcm), BLOCK):
            with self.read_all:
                self.queued += 1
            self.blocks.put(pcm[start : start + BLOCK])

    def drained(self, timeout: float = 10.0) -> None:
        with self.read_all:
            assert self.read_all.wait_for(lambda: self.taken >= self.queued, timeout)

    def read(self, timeout=None):
        if self.closed:
            return None
        try:
            block = self.blocks.get(timeout=timeout)
        except queue.Empty:
            return np.zeros(0, dtype=np.int16)
        with self.read_all:
            self.taken += 1
            self.read_all.notify_all()
        return block

    def close(self) -> None:
        self.closed = True


class LateMicrophone(Fed):
    """A live microphone as the agent reads it: late (the reader looks every
    capture.LOOK_EVERY_S) and knowing when each block was captured (a TimedSource)."""

    def __init__(self) -> None:
        super().__init__()
        self.captured_at = 0.0
        self.times: queue.Queue[float] = queue.Queue()
        self.splits: list[float] = []

    def play_captured(self, pcm: np.ndarray, at: float) -> None:
        for _ in range(0, len(pcm), BLOCK):
            self.times.put(at)
        self.play(pcm)

    def split_at(self, at: float) -> None:
        self.splits.append(at)

    def read(self, timeout=None):
        block = super().read(timeout)
        if block is not None and len(block):
            self.captured_at = self.times.get_nowait()
        return block


class Events(RecorderListener):
    def __init__(self) -> None:
        self.log: list[tuple] = []

    def session_paused(self, event) -> None:
        self.log.append(("paused", event.source, event.offset_s, event.at))

    def session_resumed(self, event) -> None:
        self.log.append(("resumed", event.source, event.at))


def settings_for(tmp_path) -> AgentSettings:
    return AgentSettings(
        device_id="room-3",
        state_dir=tmp_path / "state",
        gateway_public_key=public_key_to_text(KEY.public_key()),
    )


def recorded(spool: Spool, session_id: str) -> tuple[np.ndarray, list]:
    chunks = [c for c in spool.pending() if c.session_id == session_id]
    pcm = [decode(open_chunk(spool.read(session_id, c.seq), KEY).audio).pcm for c in chunks]
    return (np.concatenate(pcm) if pcm else np.zeros(0, np.int16)), chunks


def test_nothing_heard_while_paused_reaches_the_spool(tmp_path, speech) -> None:
    settings = settings_for(tmp_path)
    mic, events = Fed(), Events()
    first, middle, last = speech[: 8 * 16000], speech[8 * 16000 : 16 * 16000], speech[16 * 16000 :]
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: mic)
        recorder.add_listener(events)
        recorder.start("paused-1")
        mic.play(first)
        mic.drained()
        before = datetime.now(UTC)
        assert recorder.pause("button") is True
        assert recorder.pause("command") is False, "already paused"
        assert recorder.state.paused
        mic.play(mixed(middle, tone(8)))  # only while paused
        mic.drained()
        assert recorder.resume("button") is True
        after = datetime.now(UTC)
        mic.play(last)
        mic.drained()
        manifest_state = recorder.stop(10)
        assert manifest_state.state == "closed" and not manifest_state.paused
        manifest = spool.manifest("paused-1")
        pcm, chunks = recorded(spool, "paused-1")

    assert len(chunks) >= 2, "speech before and after the pause is recorded"
    assert tone_level(pcm) < HEARD, "the tone played while paused was recorded"
    [interval] = manifest.paused
    assert before <= interval.started_at <= interval.ended_at <= after
    assert interval.offset_s == pytest.approx(8.0, abs=0.11)
    # The audio timeline does not advance while paused: no chunk starts in the 8 s gap.
    assert max(c.start_s + c.duration_s for c in manifest.chunks) <= 16.0 + 0.5
    assert [e[:2] for e in events.log] == [("paused", "button"), ("resumed", "button")]
    assert events.log[0][2] == pytest.approx(8.0, abs=0.11)


def test_what_the_microphone_captured_before_the_pause_is_kept_though_read_after(
    tmp_path, speech
) -> None:
    """The live source is read every half second: a pause must not drop the words that
    were captured before it but not read yet; what is captured after it stays out."""
    settings = settings_for(tmp_path)
    mic = LateMicrophone()
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: mic)
        recorder.start("late-1")
        captured_before = time.monotonic()
        assert recorder.pause("button") is True
        mic.play_captured(speech[: 8 * 16000], at=captured_before)  # read after the pause
        mic.play_captured(mixed(speech[8 * 16000 : 16 * 16000], tone(8)), at=time.monotonic())
        mic.drained()
        assert recorder.resume("button") is True
        recorder.stop(10)
        pcm, chunks = recorded(spool, "late-1")
    assert chunks, "the speech captured before the pause is recorded"
    assert len(pcm) >= 4 * 16000
    assert tone_level(pcm) < HEARD, "what was captured after the pause was recorded"
    assert mic.splits and mic.splits[0] >= captured_before, "the source is told of the pause"


def test_what_the_microphone_captured_while_paused_stays_out_though_read_after_the_resume(
    tmp_path, speech
) -> None:
    """The other end of the pause: a live source read late hands out, after the resume,
    audio it captured while paused; none of it is kept, what follows the resume is."""
    settings = settings_for(tmp_path)
    mic = LateMicrophone()
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: mic)
        recorder.start("late-2")
        mic.play_captured(speech[: 8 * 16000], at=time.monotonic())
        mic.drained()
        assert recorder.pause("button") is True
        captured_paused = time.monotonic()
        assert recorder.resume("button") is True
        # Read only now, after the resume: captured while paused.
        mic.play_captured(mixed(speech[8 * 16000 : 16 * 16000], tone(8)), at=captured_paused)
        mic.play_captured(speech[16 * 16000 :], at=time.monotonic())
        mic.drained()
        recorder.stop(10)
        pcm, _ = recorded(spool, "late-2")
    assert tone_level(pcm) < HEARD, "what was captured while paused was recorded"
    assert len(pcm) >= 10 * 16000, "the speech before the pause and after the resume is kept"
    assert len(mic.splits) == 2 and mic.splits[1] >= captured_paused, "told of the resume"


def test_the_same_tone_unpaused_is_recorded(tmp_path, speech) -> None:
    """The control: the detector and the VAD do see the tone when nothing stops it."""
    settings = settings_for(tmp_path)
    mic = Fed()
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: mic)
        recorder.start("control-1")
        mic.play(mixed(speech[: 8 * 16000], tone(8)))
        mic.drained()
        recorder.stop(10)
        pcm, _ = recorded(spool, "control-1")
    assert tone_level(pcm) > HEARD


def test_a_session_paused_at_a_restart_resumes_paused(tmp_path, speech) -> None:
    settings = settings_for(tmp_path)
    mic = Fed()
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: mic)
        recorder.start("paused-2", paused=True)
        assert recorder.state.paused and recorder.paused_by == "command"
        recorder.suspend(10)  # a service stop while paused
    mic = Fed()
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: mic)
        assert recorder.interrupted_session == "paused-2"
        recorder.start()
        assert recorder.state.paused, "a pause survives the restart"
        mic.play(mixed(speech[: 4 * 16000], tone(4)))
        mic.drained()
        recorder.resume()
        mic.play(speech[4 * 16000 : 12 * 16000])
        mic.drained()
        recorder.stop(10)
        pcm, chunks = recorded(spool, "paused-2")
        manifest = spool.manifest("paused-2")
    assert chunks and tone_level(pcm) < HEARD
    assert len(manifest.paused) == 2, "before the restart, and after it until the resume"
    with pytest.raises(RecorderError):
        recorder.pause()
