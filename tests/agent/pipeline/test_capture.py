"""Live capture through real PortAudio, fed by the ALSA file plugin (tests/support/alsa.py).

PortAudio runs in this process: it re-reads ALSA_CONFIG_PATH at every new session once the
previous one is terminated, so each test brings its own ALSA config.
"""

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyaudio
import pytest

from agent.pipeline.audio import AudioInputError
from agent.pipeline.capture import (
    InputDevice,
    MicrophoneSource,
    ReopenPolicy,
    _Block,
    _DeviceStream,
    choose_device,
    choose_rate,
    list_input_devices,
)
from agent.settings import AudioSettings
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder, write_asound_conf, write_raw
from tests.support.eventually import eventually
from tests.support.wakeups import voluntary_switches

BLOCK = PERIOD_FRAMES  # 240 ms at 16 kHz, the default audio.block_ms


@pytest.fixture
def testmic(tmp_path, monkeypatch):
    """A 16 kHz mono `testmic` reading the FIFO tmp_path/mic.fifo; returns the FIFO path."""
    fifo = tmp_path / "mic.fifo"
    monkeypatch.setenv(
        "ALSA_CONFIG_PATH", write_asound_conf(tmp_path / "asound.conf", fifo)["ALSA_CONFIG_PATH"]
    )
    return fifo


def noise(samples: int, seed: int) -> np.ndarray:
    signal = np.random.default_rng(seed).integers(-32768, 32768, samples, dtype=np.int16)
    signal[0] = 12345  # so the start can be found after leading silence
    return signal


def read_samples(source: MicrophoneSource, count: int, timeout: float = 10.0) -> np.ndarray:
    parts, total = [], 0
    deadline = time.monotonic() + timeout
    while total < count and time.monotonic() < deadline:
        block = source.read(timeout=0.2)
        assert block is not None, "a live source never ends by itself"
        parts.append(block)
        total += len(block)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


def after_silence(captured: np.ndarray) -> np.ndarray:
    """What follows the silence the microphone delivered before the test played anything."""
    start = int(np.flatnonzero(captured)[0])
    assert start % BLOCK == 0, "silence comes in whole periods"
    assert not captured[:start].any()
    return captured[start:]


def wait_for_log(caplog, text: str, timeout: float) -> None:
    eventually(
        lambda: any(text in record.getMessage() for record in caplog.records),
        timeout,
        what=f"a log line with {text!r}",
    )


# -- devices --------------------------------------------------------------------------------


def test_lists_the_configured_devices_and_rereads_a_new_config(tmp_path, monkeypatch):
    raw = write_raw(tmp_path / "mic.raw", np.zeros(1600, dtype=np.int16))
    first = write_asound_conf(tmp_path / "one.conf", raw)
    second = write_asound_conf(tmp_path / "two.conf", raw, name="roommic", only_rate=48_000)
    monkeypatch.setenv("ALSA_CONFIG_PATH", first["ALSA_CONFIG_PATH"])
    assert [(d.name, d.default_rate) for d in list_input_devices()] == [
        ("testmic", 44_100),
        ("default", 44_100),
    ]
    monkeypatch.setenv("ALSA_CONFIG_PATH", second["ALSA_CONFIG_PATH"])
    assert [(d.name, d.default_rate) for d in list_input_devices()] == [
        ("roommic", 48_000),
        ("default", 48_000),
    ]


def test_a_device_whose_input_is_gone_is_not_an_input_device(tmp_path, monkeypatch):
    conf = write_asound_conf(tmp_path / "asound.conf", tmp_path / "absent.raw")
    monkeypatch.setenv("ALSA_CONFIG_PATH", conf["ALSA_CONFIG_PATH"])
    assert list_input_devices() == []


def test_devices_command_prints_a_table_and_json(tmp_path):
    raw = write_raw(tmp_path / "mic.raw", np.zeros(1600, dtype=np.int16))
    env = {"PATH": "/usr/bin:/bin", **write_asound_conf(tmp_path / "asound.conf", raw)}
    room_agent = str(Path(sys.executable).parent / "room-agent")
    table = subprocess.run(
        [room_agent, "devices"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["index", "name", "default", "rate", "channels"]
    assert lines[1].split() == ["0", "testmic", "44100", "Hz", "128"]
    assert "jack" not in table.stderr.lower()
    listed = subprocess.run(
        [room_agent, "devices", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(listed.stdout)[0] == {
        "index": 0,
        "name": "testmic",
        "default_rate": 44_100,
        "max_input_channels": 128,
    }


DEVICES = [
    InputDevice(
        index=0,
        name="HDA Intel PCH: ALC257 Analog (hw:0,0)",
        default_rate=44_100,
        max_input_channels=2,
    ),
    InputDevice(
        index=3,
        name="Jabra SPEAK 410 USB: Audio (hw:1,0)",
        default_rate=48_000,
        max_input_channels=1,
    ),
    InputDevice(index=4, name="sysdefault", default_rate=44_100, max_input_channels=32),
    InputDevice(index=5, name="default", default_rate=44_100, max_input_channels=32),
]


@pytest.mark.parametrize(
    ("wanted", "index"),
    # "5" is in the name "ALC257", so the name wins over device index 5; a whole name wins
    # over a part of one ("default" is not "sysdefault").
    [
        ("jabra", 3),
        ("SPEAK 410", 3),
        ("hw:", 0),
        ("default", 5),
        ("sysdef", 4),
        ("3", 3),
        ("4", 3),
        ("5", 0),
    ],
)
def test_device_is_chosen_by_name_first_and_by_index_only_as_fallback(wanted, index):
    assert choose_device(DEVICES, wanted).index == index


def test_no_matching_device_names_the_devices_there_are():
    with pytest.raises(AudioInputError) as info:
        choose_device(DEVICES[:2], "respeaker")
    assert str(info.value) == (
        "no input device matches 'respeaker' (input devices: "
        "'HDA Intel PCH: ALC257 Analog (hw:0,0)', 'Jabra SPEAK 410 USB: Audio (hw:1,0)')"
    )
    with pytest.raises(AudioInputError, match=r"input devices: none"):
        choose_device([], "default")


def test_rate_is_configured_else_16k_else_the_devices_own():
    usb = DEVICES[1]
    assert choose_rate(usb, 0, 1, lambda rate: True) == 16_000
    assert choose_rate(usb, 0, 1, lambda rate: rate == 48_000) == 48_000
    assert choose_rate(usb, 32_000, 1, lambda rate: True) == 32_000
    with pytest.raises(AudioInputError, match="cannot capture 1 channel"):
        choose_rate(usb, 32_000, 1, lambda rate: rate == 48_000)
    with pytest.raises(AudioInputError, match="offers neither 16000 Hz nor its default 48000"):
        choose_rate(usb, 0, 1, lambda rate: False)


# -- capture --------------------------------------------------------------------------------


def test_the_test_feeders_period_is_the_default_capture_block():
    """A feeder period shorter than the agent's ALSA period gives short reads, which the
    file plugin pads with stale samples: every FIFO-fed test would see corrupted audio."""
    assert AudioSettings().block_ms * 16_000 // 1000 == BLOCK


def test_captured_audio_is_bit_exact(testmic):
    signal = noise(16_000 * 2, seed=7)
    with (
        FifoFeeder(testmic, period_frames=BLOCK, speed=4) as feeder,
        MicrophoneSource(AudioSettings(device="TESTMIC")) as source,
    ):
        feeder.play(signal)
        captured = read_samples(source, len(signal) + 16_000)
        stats = source.stats
    assert (stats.device_name, stats.device_rate) == ("testmic", 16_000)
    np.testing.assert_array_equal(after_silence(captured)[: len(signal)], signal)
    assert stats.samples == len(captured)
    assert (stats.dropped_blocks, stats.overruns, stats.reopens) == (0, 0, 0)


def test_a_48k_only_device_is_opened_at_48k_and_resampled(tmp_path, monkeypatch):
    """The device refuses 16 kHz, so the source falls back to the rate the device reports."""
    fifo = tmp_path / "mic.fifo"
    conf = write_asound_conf(tmp_path / "asound.conf", fifo, only_rate=48_000)
    monkeypatch.setenv("ALSA_CONFIG_PATH", conf["ALSA_CONFIG_PATH"])
    t = np.arange(48_000) / 48_000
    tone = np.rint(16_000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    settings = AudioSettings(device="testmic", channels=2, block_ms=20)
    with FifoFeeder(fifo, period_frames=960, rate=48_000, channels=2, speed=4) as feeder:
        with pytest.raises(AudioInputError, match=r"cannot capture 2 channel\(s\) at 16000 Hz"):
            MicrophoneSource(settings.model_copy(update={"device_rate": 16_000}))
        with MicrophoneSource(settings) as source:
            feeder.play(np.stack([tone, tone], axis=1))
            captured = read_samples(source, 16_000 * 2).astype(np.float64)
            stats = source.stats
    assert stats.device_rate == 48_000
    loud = np.flatnonzero(np.abs(captured) > 1000)
    assert (loud[-1] - loud[0]) / 16_000 == pytest.approx(1.0, abs=0.002)
    middle = captured[loud[0] + 800 : loud[-1] - 800]
    level = np.sqrt(np.mean(middle**2))
    assert level == pytest.approx(16_000 / np.sqrt(2), rel=0.005)
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    assert np.argmax(spectrum) * 16_000 / len(middle) == pytest.approx(1000, abs=2)


def test_an_unknown_device_is_refused_with_the_list_of_devices(testmic):
    with FifoFeeder(testmic, period_frames=BLOCK), pytest.raises(AudioInputError) as info:
        MicrophoneSource(AudioSettings(device="respeaker"))
    assert str(info.value) == (
        "no input device matches 'respeaker' (input devices: 'testmic', 'default')"
    )


def test_a_vanished_device_is_reopened_and_the_source_goes_on(testmic, caplog):
    caplog.set_level(logging.INFO, logger="agent.pipeline.capture")
    policy = ReopenPolicy(stall_s=0.5, first_wait_s=0.1, max_wait_s=0.4)
    before, after = noise(8_000, seed=8), noise(8_000, seed=9)
    with (
        FifoFeeder(testmic, period_frames=BLOCK, speed=2) as feeder,
        MicrophoneSource(AudioSettings(device="testmic"), reopen=policy) as source,
    ):
        feeder.play(before)
        first = read_samples(source, 16_000)
        np.testing.assert_array_equal(after_silence(first)[: len(before)], before)

        feeder.unplug()  # no more audio, and the device is gone from the list
        wait_for_log(caplog, "testmic lost (no audio for", timeout=5)
        feeder.close_unplugged()  # lets PortAudio finish closing the dead stream
        wait_for_log(caplog, "no input device matches 'testmic'", timeout=5)
        away = [source.read(timeout=0.1) for _ in range(5)]
        assert all(block is not None and block.size == 0 for block in away)
        assert source.stats.reopens == 0

        feeder.replug()
        feeder.play(after)
        wait_for_log(caplog, "testmic back (reopen 1)", timeout=10)
        resumed = read_samples(source, 2 * 16_000)
        stats = source.stats
    assert stats.reopens == 1
    assert stats.device_name == "testmic"
    np.testing.assert_array_equal(after_silence(resumed)[: len(after)], after)


def test_a_consumer_that_falls_behind_loses_the_newest_blocks_counted_and_logged(testmic, caplog):
    caplog.set_level(logging.WARNING, logger="agent.pipeline.capture")
    signal = noise(67 * BLOCK, seed=10)  # 67 blocks
    block_s = BLOCK / 16_000
    settings = AudioSettings(device="testmic", queue_max_s=10 * block_s)  # room for 10 blocks
    patient = ReopenPolicy(stall_s=30)  # the FIFO runs dry after the signal: not a lost device
    with FifoFeeder(testmic, period_frames=BLOCK, speed=10, idle_silence=False) as feeder:
        feeder.play(signal)  # waits in the FIFO until the device is opened
        with MicrophoneSource(settings, reopen=patient) as source:
            assert feeder.wait_played(timeout=10)

            def all_but_ten_dropped() -> bool:  # the consumer is busy elsewhere meanwhile
                dropped = source.stats.dropped_blocks
                assert dropped >= 57, f"{dropped} dropped"
                return True

            eventually(all_but_ten_dropped, timeout=10, what="57 blocks dropped")
            time.sleep(0.1)
            stats = source.stats
            assert stats.dropped_blocks == 67 - 10
            assert stats.dropped_s == pytest.approx(57 * block_s)
            kept = read_samples(source, 10 * BLOCK)
            assert source.read(timeout=0.2).size == 0
            feeder.idle_silence = True  # a microphone that runs again, so it can be closed
    np.testing.assert_array_equal(kept, signal[: 10 * BLOCK])
    assert any("queue full" in r.getMessage() for r in caplog.records)
    assert any("closed with 0 overrun(s), 57 block(s)" in r.getMessage() for r in caplog.records)


def test_what_was_captured_before_close_is_still_read(testmic):
    signal = noise(16_000, seed=11)
    with FifoFeeder(testmic, period_frames=BLOCK, speed=10, idle_silence=False) as feeder:
        feeder.play(signal)
        source = MicrophoneSource(AudioSettings(device="testmic"), reopen=ReopenPolicy(30))
        assert feeder.wait_played(timeout=10)
        time.sleep(0.2)
        feeder.idle_silence = True
        source.close()
        blocks = []
        while (block := source.read(timeout=1)) is not None:
            blocks.append(block)
    captured = np.concatenate(blocks)
    np.testing.assert_array_equal(captured[: len(signal)], signal)
    assert not captured[len(signal) :].any()


def test_overruns_reported_by_portaudio_are_counted(testmic, caplog):
    """The file plugin's null device never overruns, so PortAudio's flag is handed in here."""
    caplog.set_level(logging.WARNING, logger="agent.pipeline.capture")
    with (
        FifoFeeder(testmic, period_frames=BLOCK),
        MicrophoneSource(AudioSettings(device="testmic")) as source,
    ):
        stream = source._stream
        assert stream is not None
        silence = bytes(2 * BLOCK)
        for status in (pyaudio.paInputOverflow, 0, pyaudio.paInputOverflow):
            stream._on_audio(silence, BLOCK, None, status)
        assert source.stats.overruns == 2
    assert any("input overrun" in r.getMessage() for r in caplog.records)


def test_the_reader_is_woken_less_often_than_blocks_come(testmic):
    """Each wake-up of the recorder's thread costs a Pi-class core more than the block's
    own processing (cold caches): a block must not cost the reader three of them (the
    queue's wake-up, then the GIL the callback still holds, then its mutex) or a poll.
    The reader takes what came meanwhile every LOOK_EVERY_S, and loses none of it."""
    with (
        FifoFeeder(testmic, period_frames=BLOCK),
        MicrophoneSource(AudioSettings(device="testmic")) as source,
    ):
        read_samples(source, 4 * BLOCK)  # the stream is running
        before = voluntary_switches()
        parts: list[np.ndarray] = []
        while sum(map(len, parts)) < 13 * BLOCK:  # 3 s of audio at real time
            block = source.read(timeout=1.0)  # as the recorder reads: stop seen within it
            assert block is not None
            parts.append(block)
        captured = np.concatenate(parts)
        woken = voluntary_switches() - before
        assert (source.stats.dropped_blocks, source.stats.overruns) == (0, 0)
    blocks = len(captured) / BLOCK
    assert len(captured) % BLOCK == 0, "whole blocks"
    assert woken <= blocks / 2, f"{woken} wake-ups for {blocks:.0f} blocks"


@contextmanager
def _quiet_source(testmic: Path) -> Iterator[tuple[MicrophoneSource, _DeviceStream, FifoFeeder]]:
    """A source whose FIFO delivers nothing until the test plays or hands over a block
    itself (the feeder's silence stays off until the end, when the source is closed)."""
    settings = AudioSettings(device="testmic", block_ms=BLOCK * 1000 // 16_000)
    with FifoFeeder(testmic, period_frames=BLOCK, idle_silence=False) as feeder:
        source = MicrophoneSource(settings, reopen=ReopenPolicy(stall_s=30))
        stream = source._stream
        assert stream is not None
        try:
            yield source, stream, feeder
        finally:
            feeder.idle_silence = True  # so the stream can be closed
            source.close()


@contextmanager
def _fed_by_hand(testmic: Path) -> Iterator[tuple[MicrophoneSource, Callable[[int], float]]]:
    """A source whose blocks the test hands over itself, as a device at real time would:
    ``block(value)`` queues a block of ``value`` captured a block's length after the last
    one, and returns the moment it ended."""
    with _quiet_source(testmic) as (source, stream, _):
        clock = [time.monotonic()]

        def block(value: int) -> float:
            started, ended = clock[0], clock[0] + BLOCK / 16_000
            clock[0] = ended
            data = np.full(BLOCK, value, dtype=np.int16).tobytes()
            source._accept(_Block(stream.opening, 16_000, 1, data, started, ended), BLOCK, 0)
            return ended

        yield source, block


def _reads(source: MicrophoneSource, count: int) -> list[tuple[list[int], float]]:
    """``count`` reads, each as its samples and the moment its last one was captured."""
    reads = []
    for _ in range(count):
        samples = source.read(timeout=1)
        assert samples is not None and samples.size, "a read within the second"
        reads.append((samples.tolist(), source.captured_at))
    return reads


def test_a_read_never_joins_audio_captured_before_a_split_with_audio_after(testmic):
    """What a pause relies on (agent/pipeline/audio.TimedSource): each read says when its
    last sample was captured, and a read stops at the pause's moment."""
    with _fed_by_hand(testmic) as (source, block):
        split = block(1)
        source.split_at(split)
        block(2)
        third = block(3)
        reads = _reads(source, 2)
    assert reads == [([1] * BLOCK, split), ([2] * BLOCK + [3] * BLOCK, third)]


def test_a_pause_and_a_resume_not_yet_read_both_split_the_reads(testmic):
    """A pause and its resume within one look (a reader wakes every LOOK_EVERY_S): each
    read stays inside one of before, while paused and after."""
    with _fed_by_hand(testmic) as (source, block):
        source.split_at(block(1))  # paused
        source.split_at(block(2))  # resumed
        block(3)
        reads = _reads(source, 3)
    assert [samples[:1] for samples, _ in reads] == [[1], [2], [3]]


def test_a_split_inside_a_block_cuts_it_at_that_frame(testmic):
    """A pause falls anywhere in a block: keeping or dropping the whole block would keep
    up to a block of what was said while paused, or drop as much said before it."""
    quarter = BLOCK // 4
    with _fed_by_hand(testmic) as (source, block):
        start = block(1)
        source.split_at(start + quarter / 16_000)  # paused a quarter into the next block
        source.split_at(start + 3 * quarter / 16_000)  # and resumed within it
        block(2)
        last = block(3)
        reads = _reads(source, 3)
    assert [(len(samples), sorted(set(samples))) for samples, _ in reads] == [
        (BLOCK + quarter, [1, 2]),
        (2 * quarter, [2]),
        (quarter + BLOCK, [2, 3]),
    ]
    assert [at for _, at in reads] == [
        pytest.approx(start + quarter / 16_000),
        pytest.approx(start + 3 * quarter / 16_000),
        last,
    ]


def test_blocks_delivered_faster_than_real_time_still_split_where_the_moment_falls(testmic):
    """A device can hand blocks over faster than they play (a burst after a stall, or the
    tests' feeder at 8x): a block then spans the time since the last one, not a block's
    length, or a pause would find itself inside the next several blocks and keep a part
    of each, captured after it, as if captured before."""
    with _quiet_source(testmic) as (source, stream, _):
        for value in (1, 2, 3):
            stream._on_audio(np.full(BLOCK, value, dtype=np.int16).tobytes(), BLOCK, None, 0)
            if value == 1:
                source.split_at(stream.last_audio)  # as the first block came
                time.sleep(BLOCK / 16_000 / 4)  # the next comes a quarter block later
        reads = _reads(source, 2)
    assert [samples for samples, _ in reads] == [[1] * BLOCK, [2] * BLOCK + [3] * BLOCK]


def test_the_supervisor_wakes_about_once_a_second_while_the_device_is_well(testmic):
    """The watch for a lost device wakes a thread each time it looks, and each wake-up
    costs a Pi-class core more than the look: about once a second is soon enough (a lost
    device is one silent for ReopenPolicy.stall_s, 2 s)."""
    with (
        FifoFeeder(testmic, period_frames=BLOCK),
        MicrophoneSource(AudioSettings(device="testmic")) as source,
    ):
        read_samples(source, 4 * BLOCK)  # the stream is running
        (supervisor,) = [t for t in threading.enumerate() if t.name == "capture-supervisor"]
        before = voluntary_switches(supervisor.native_id)
        time.sleep(3.0)  # a rate, measured
        woken = voluntary_switches(supervisor.native_id) - before
    assert 2 <= woken <= 4, f"{woken} wake-ups in 3 s"  # still looking, not twice a second


def test_wake_returns_a_waiting_read_at_once(testmic, monkeypatch):
    """A reader waits up to LOOK_EVERY_S for the next look; a stop must not wait for it."""
    monkeypatch.setattr("agent.pipeline.capture.LOOK_EVERY_S", 60.0)
    with _quiet_source(testmic) as (source, _, feeder):
        got: list[np.ndarray | None] = []
        reader = threading.Thread(target=lambda: got.append(source.read()))
        reader.start()
        eventually(lambda: _waiting(reader), timeout=5, what="the reader waiting")
        source.wake()
        reader.join(timeout=10)
        assert not reader.is_alive(), "the read still waits for the next look"
        assert got[0] is not None and got[0].size == 0, "an empty block, not the end"
        feeder.play(np.full(BLOCK, 7, dtype=np.int16))  # and reads go on as before
        assert read_samples(source, BLOCK).tolist() == [7] * BLOCK


def _waiting(thread: threading.Thread) -> bool:
    """The thread sleeps in the kernel (its read waits), as /proc tells."""
    state = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1]
    return state.split()[0] == "S"
