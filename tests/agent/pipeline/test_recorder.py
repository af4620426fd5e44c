"""The recorder with real parts: FileSource -> Segmenter -> FLAC/Opus -> seal -> spool."""

import threading

import numpy as np
import pytest

from agent.pipeline.audio import AudioInputError
from agent.pipeline.capture import MicrophoneSource
from agent.pipeline.filesource import FileSource
from agent.pipeline.recorder import Recorder, RecorderError, RecorderListener
from agent.pipeline.seal import SealingKeyError
from agent.settings import AgentSettings, AudioSettings
from agent.spool import Spool
from protocol.envelope import generate_private_key, open_chunk, public_key_to_text
from runtime.codec import decode
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder, write_asound_conf
from tests.support.eventually import eventually
from tests.support.speech import make_session

KEY = generate_private_key()
GIB = 1024**3


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """40 s of synthetic room audio: utterances, pauses, noise, knocks."""
    return make_session(tmp_path_factory.mktemp("speech") / "session.wav", 40, 20, seed=11)


def settings_for(tmp_path, **overrides) -> AgentSettings:
    values = dict(
        device_id="room-3",
        state_dir=tmp_path / "state",
        gateway_public_key=public_key_to_text(KEY.public_key()),
    )
    return AgentSettings(**(values | overrides))


class Events(RecorderListener):
    def __init__(self):
        self.log = []

    def session_started(self, event):
        self.log.append(("started", event.session_id, event.resumed))

    def chunk_spooled(self, event):
        self.log.append(("chunk", event.seq, event.duration_s))

    def session_closed(self, event, manifest):
        self.log.append(("closed", event.session_id, event.reason, manifest))

    def state_changed(self, snapshot):
        self.log.append(("state", snapshot.state))

    def kinds(self):
        return [entry[0] for entry in self.log]


class GatedFile(FileSource):
    """A FileSource that stops delivering (as if frozen by a power cut) after ``blocks``."""

    def __init__(self, path, blocks):
        super().__init__(path)
        self.left = blocks
        self.frozen = threading.Event()

    def read(self, timeout=None):
        if self.left == 0:
            self.frozen.set()
            threading.Event().wait()  # never returns: this thread is "dead"
        self.left -= 1
        return super().read(timeout)


def spooled_chunks(spool):
    return [(c, open_chunk(spool.read(c.session_id, c.seq), KEY)) for c in spool.pending()]


def test_records_a_session_into_the_spool(tmp_path, speech):
    settings = settings_for(tmp_path)
    events = Events()
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: FileSource(speech.path))
        recorder.add_listener(events)
        assert recorder.state.state == "idle"
        session = recorder.start()
        assert recorder.wait(30)
        snapshot = recorder.state
        assert (snapshot.state, snapshot.reason, snapshot.session_id) == (
            "closed",
            "stopped",
            session,
        )
        assert snapshot.capture.samples == speech.samples
        chunks = spooled_chunks(spool)
        assert len(chunks) == snapshot.chunks >= len(speech.spans) - 1
        previous_end = 0.0
        for pending, opened in chunks:
            header = opened.header
            assert (header.device_id, header.session_id) == ("room-3", session)
            assert header.codec == "flac"
            audio = decode(opened.audio)
            assert len(audio.pcm) / 16_000 == pytest.approx(header.duration_s, abs=0.001)
            assert header.start_s >= previous_end - 0.001, "chunks never overlap"
            previous_end = header.start_s + header.duration_s
            assert pending.duration_s == header.duration_s
        kept = sum(p.duration_s for p, _ in chunks)
        assert snapshot.speech_s == pytest.approx(kept, abs=0.01)
        assert speech.speech_s * 0.9 < kept < speech.duration_s * 0.8
        manifest = spool.manifest(session)
    assert events.kinds()[:3] == ["state", "started", "chunk"]
    assert [e[1] for e in events.log if e[0] == "state"] == ["recording", "closing", "closed"]
    assert [e[1] for e in events.log if e[0] == "chunk"] == list(range(len(chunks)))
    closed = [e for e in events.log if e[0] == "closed"]
    assert closed == [("closed", session, "stopped", manifest)]
    assert [c.seq for c in manifest.chunks] == list(range(len(chunks)))


def test_chunk_audio_is_the_input_audio(tmp_path, speech):
    """FLAC is lossless: each chunk is exactly the input samples at its offset."""
    import soundfile

    original, _ = soundfile.read(speech.path, dtype="int16")
    settings = settings_for(tmp_path)
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: FileSource(speech.path))
        recorder.start()
        recorder.wait(30)
        for _, opened in spooled_chunks(spool):
            start = round(opened.header.start_s * 16_000)
            pcm = decode(opened.audio).pcm
            assert np.array_equal(pcm, original[start : start + len(pcm)])


def test_opus_codec(tmp_path, speech):
    settings = settings_for(tmp_path, audio=AudioSettings(codec="opus", opus_bitrate_kbps=16))
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: FileSource(speech.path))
        recorder.start()
        recorder.wait(30)
        chunks = spooled_chunks(spool)
        assert chunks and all(o.header.codec == "opus" for _, o in chunks)
        assert all(o.audio[:4] == b"OggS" for _, o in chunks)
        audio_s = sum(p.duration_s for p, _ in chunks)
        kbps = sum(len(o.audio) for _, o in chunks) * 8 / audio_s / 1000
        assert 8 < kbps < 26


def test_stop_and_max_audio(tmp_path, speech):
    settings = settings_for(tmp_path)
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: FileSource(speech.path))
        recorder.start(max_audio_s=12.5)
        recorder.wait(30)
        assert recorder.state.capture.samples == 12.5 * 16_000
        assert max(c.start_s + c.duration_s for c in spool.pending()) <= 12.5

        realtime = Recorder(settings, spool, lambda: FileSource(speech.path, realtime=True))
        session = realtime.start("live-1")
        with pytest.raises(RecorderError, match="already recording"):
            realtime.start("live-2")
        snapshot = realtime.stop(timeout=10)
        assert (snapshot.state, snapshot.reason, snapshot.session_id) == (
            "closed",
            "stopped",
            session,
        )
        assert snapshot.capture.samples < 16_000 * 5
        assert spool.session("live-1").closed


def test_interrupted_session_is_resumed(tmp_path, speech):
    settings = settings_for(tmp_path)
    spool = Spool(settings.spool_dir, GIB, 0)
    gated = GatedFile(speech.path, blocks=60)  # 15 s of audio, then "power cut"
    first = Recorder(settings, spool, lambda: gated)
    session = first.start("therapy-1")
    assert gated.frozen.wait(30)
    before = spool.session(session)
    assert before.chunks >= 1 and not before.closed
    spool.close()  # the process is gone: its lock with it

    events = Events()
    with Spool(settings.spool_dir, GIB, 0) as spool:
        second = Recorder(settings, spool, lambda: FileSource(speech.path))
        second.add_listener(events)
        assert second.interrupted_session == session
        assert second.start() == session
        second.wait(30)
        assert second.state.resumed
        info = spool.session(session)
        assert info.closed and info.reason == "stopped"
        seqs = [c.seq for c in spool.pending()]
        assert seqs == list(range(len(seqs))) and len(seqs) > before.chunks
        resumed = [c for c in spool.pending() if c.seq >= before.next_seq]
        assert resumed[0].start_s >= before.end_s, "the timeline continues after the cut"
    assert events.log[1] == ("started", session, True)
    assert next(e[1] for e in events.log if e[0] == "chunk") == before.next_seq


def test_new_session_closes_the_interrupted_one(tmp_path, speech):
    settings = settings_for(tmp_path)
    spool = Spool(settings.spool_dir, GIB, 0)
    gated = GatedFile(speech.path, blocks=60)
    Recorder(settings, spool, lambda: gated).start("therapy-1")
    assert gated.frozen.wait(30)
    spool.create_session("stray", "room-3")  # open, but not the recorder's session
    spool.close()

    events = Events()
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: FileSource(speech.path))
        assert spool.session("stray").reason == "interrupted"
        recorder.add_listener(events)
        manifest = recorder.close_interrupted()
        assert manifest.session_id == "therapy-1" and manifest.reason == "interrupted"
        assert recorder.interrupted_session is None
        assert recorder.start("therapy-2") == "therapy-2"
        recorder.wait(30)
        assert spool.session("therapy-1").chunks == len(manifest.chunks) >= 1
    assert events.log[0][:3] == ("closed", "therapy-1", "interrupted")


def test_key_must_be_usable_before_anything_is_recorded(tmp_path, speech):
    for key, message in [(None, "not set"), ("bm90IGEga2V5", "32 bytes"), ("***", "base64")]:
        settings = settings_for(tmp_path, gateway_public_key=key)
        with Spool(settings.spool_dir, GIB, 0) as spool:
            with pytest.raises(SealingKeyError, match=message):
                Recorder(settings, spool, lambda: FileSource(speech.path))
            assert spool.sessions() == []


def test_failed_source_creates_no_session(tmp_path):
    settings = settings_for(tmp_path)
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: FileSource(tmp_path / "missing.wav"))
        with pytest.raises(AudioInputError, match="no such file"):
            recorder.start()
        with pytest.raises(RecorderError, match="session id"):
            recorder.start("bad id!")
        assert spool.sessions() == [] and recorder.state.state == "idle"
        assert recorder.interrupted_session is None


def test_failing_listener_does_not_stop_recording(tmp_path, speech):
    class Broken(RecorderListener):
        def chunk_spooled(self, event):
            raise RuntimeError("listener bug")

    settings = settings_for(tmp_path)
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: FileSource(speech.path))
        recorder.add_listener(Broken())
        recorder.start()
        recorder.wait(30)
        assert recorder.state.reason == "stopped" and recorder.state.chunks >= 3


def test_power_cut_before_the_spool_session_existed(tmp_path, speech):
    """The state file is written first: a cut right after it still records under that id."""
    settings = settings_for(tmp_path)
    settings.state_dir.mkdir()
    state_file = settings.state_dir / "recorder.json"
    state_file.write_text('{"session_id": "therapy-9", "at": "2026-01-01T00:00:00Z"}')
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: FileSource(speech.path))
        assert recorder.interrupted_session == "therapy-9"
        assert recorder.start() == "therapy-9"
        recorder.wait(30)
        assert not recorder.state.resumed
        assert spool.session("therapy-9").reason == "stopped"


def test_unreadable_state_file_means_nothing_to_resume(tmp_path, speech):
    settings = settings_for(tmp_path)
    settings.state_dir.mkdir()
    (settings.state_dir / "recorder.json").write_bytes(b"\x00\x00{torn")
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: FileSource(speech.path))
        assert recorder.interrupted_session is None
        session = recorder.start()
        recorder.wait(30)
        assert spool.session(session).reason == "stopped"


def test_two_overlapping_starts_record_one_session(tmp_path, speech):
    """A start checks and claims the recorder in one step: a second start while the first
    is still opening the microphone is refused, never a second session beside it."""
    settings = settings_for(tmp_path)
    opening = threading.Event()
    release = threading.Event()
    calls = 0

    def slow_microphone():
        nonlocal calls
        calls += 1
        if calls == 1:
            opening.set()
            release.wait(10)
        return FileSource(speech.path)

    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, slow_microphone)
        first: list[str] = []
        starter = threading.Thread(target=lambda: first.append(recorder.start()))
        starter.start()
        assert opening.wait(10)
        try:
            with pytest.raises(RecorderError, match="start"):
                recorder.start()
        finally:
            release.set()
            starter.join(10)
        assert recorder.wait(30)
        assert [s.session_id for s in spool.sessions()] == first


class StopMidSpeech(FileSource):
    """A microphone whose stop arrives while speech is still in the pipeline: on block
    ``stop_at`` the stop is requested, and ``queued`` more blocks (what PortAudio had already
    captured into its queue) are still handed out after ``close()``."""

    def __init__(self, path, recorder_box, stop_at, queued):
        super().__init__(path)
        self.recorder_box = recorder_box
        self.stop_at = stop_at
        self.backlog: list = []
        self.queued = queued
        self.delivered = 0

    def read(self, timeout=None):
        if self._closed:
            return self.backlog.pop(0) if self.backlog else None
        block = super().read(timeout)
        self.delivered += 1
        if self.delivered == self.stop_at:
            self.backlog = [FileSource.read(self, timeout) for _ in range(self.queued)]
            self.recorder_box[0].request_stop()
        return block


class FirstBlocks(FileSource):
    def __init__(self, path, blocks):
        super().__init__(path)
        self.left = blocks

    def read(self, timeout=None):
        if self.left == 0:
            return None
        self.left -= 1
        return super().read(timeout)


def session_audio(spool, session_id):
    chunks = sorted((c for c in spool.pending() if c.session_id == session_id), key=lambda c: c.seq)
    return [
        (round(c.start_s, 3), decode(open_chunk(spool.read(c.session_id, c.seq), KEY).audio).pcm)
        for c in chunks
    ]


# The cut ((stop_at + 3) blocks of 0.25 s) falls inside the 1st, 2nd and 3rd utterance.
@pytest.mark.parametrize("stop_at", [8, 23, 120])
def test_no_word_is_lost_at_a_stop(tmp_path, speech, stop_at):
    """Speech up to the stop (blocks still queued in capture, the VAD's hangover, the
    segment in progress) is all in the spooled chunks, exactly as if the audio had ended
    there."""
    queued = 3
    settings = settings_for(tmp_path)
    with Spool(settings.spool_dir, GIB, 0) as spool:
        box: list = []
        stopped = Recorder(
            settings, spool, lambda: StopMidSpeech(speech.path, box, stop_at, queued)
        )
        box.append(stopped)
        stopped.start("stopped-1")
        assert stopped.wait(30)
        reference = Recorder(settings, spool, lambda: FirstBlocks(speech.path, stop_at + queued))
        reference.start("reference-1")
        assert reference.wait(30)
        expected = session_audio(spool, "reference-1")
        got = session_audio(spool, "stopped-1")
    cut_s = (stop_at + queued) * 0.25
    assert expected, "the reference heard no speech"
    assert [start for start, _ in got] == [start for start, _ in expected]
    for (_, pcm), (_, want) in zip(got, expected, strict=True):
        assert np.array_equal(pcm, want)
    # the stop fell inside speech: the reference's last chunk runs on to the cut
    last_start, last_pcm = expected[-1]
    assert last_start + len(last_pcm) / 16_000 == pytest.approx(cut_s, abs=0.01)


def test_a_stop_is_acted_on_at_once_not_at_the_microphones_next_look(tmp_path, monkeypatch):
    """The live microphone is read about once a second (capture.LOOK_EVERY_S, and the
    recorder's read time-out): a stop that waited for the read to return added up to that
    to every session's stop -> notes (the demo: 0.2-1.1 s of its stop -> all audio)."""
    fifo = tmp_path / "mic.fifo"
    monkeypatch.setenv(
        "ALSA_CONFIG_PATH", write_asound_conf(tmp_path / "asound.conf", fifo)["ALSA_CONFIG_PATH"]
    )
    # Neither the next look nor the recorder's read time-out comes within the test.
    monkeypatch.setattr("agent.pipeline.capture.LOOK_EVERY_S", 60.0)
    monkeypatch.setattr("agent.pipeline.recorder.READ_TIMEOUT_S", 60.0)
    settings = settings_for(tmp_path, audio=AudioSettings(device="testmic"))
    with FifoFeeder(fifo, period_frames=PERIOD_FRAMES), Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: MicrophoneSource(settings.audio))
        recorder.start("stopped-at-once")
        assert recorder.state.state == "recording"

        def reader_waits_for_its_look() -> bool:  # blocks come, and nobody takes them
            source = recorder._source
            return isinstance(source, MicrophoneSource) and len(source._blocks) >= 2

        eventually(reader_waits_for_its_look, timeout=10, what="blocks waiting for a read")
        recorder.request_stop()
        assert recorder.wait(20), "the stop waited for the microphone's next look"
        assert recorder.state.state == "closed"
        assert [s.session_id for s in spool.sessions()] == ["stopped-at-once"]
