"""FileSource: WAV/FLAC at any rate and channel count in, 16 kHz mono out; bad files refused."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from agent.pipeline.audio import AudioInputError
from agent.pipeline.filesource import FileSource

RATES = (8_000, 16_000, 44_100, 48_000)


def write_tone(path: Path, rate: int, channels: int, seconds: float, subtype="PCM_16") -> Path:
    t = np.arange(round(rate * seconds)) / rate
    mono = np.rint(10_000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    soundfile.write(path, np.stack([mono] * channels, axis=1), rate, subtype=subtype)
    return path


def read_all(source: FileSource) -> list[np.ndarray]:
    blocks = []
    with source:
        while (block := source.read()) is not None:
            blocks.append(block)
    return blocks


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_any_rate_and_channel_count_gives_the_right_duration_at_16k(
    tmp_path, suffix, rate, channels
):
    path = write_tone(tmp_path / f"tone{suffix}", rate, channels, seconds=1.5)
    source = FileSource(path)
    blocks = read_all(source)
    audio = np.concatenate(blocks)
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert abs(len(audio) - 24_000) <= 1
    assert source.stats.samples == len(audio)
    assert source.stats.device_rate == rate
    level = np.sqrt(np.mean(audio[1000:-1000].astype(np.float64) ** 2))
    assert level == pytest.approx(10_000 / np.sqrt(2), rel=0.01)


def test_16k_mono_comes_through_bit_exact(tmp_path):
    samples = np.random.default_rng(3).integers(-32768, 32768, 40_001, dtype=np.int16)
    path = tmp_path / "noise.flac"
    soundfile.write(path, samples, 16_000, subtype="PCM_16")
    blocks = read_all(FileSource(path, block_s=0.03))
    assert {len(b) for b in blocks[:-1]} == {480}
    np.testing.assert_array_equal(np.concatenate(blocks), samples)


@pytest.mark.parametrize("subtype", ["PCM_24", "FLOAT"])
def test_other_sample_formats_are_converted_to_int16(tmp_path, subtype):
    path = write_tone(tmp_path / "deep.wav", 48_000, 1, seconds=0.5, subtype=subtype)
    audio = np.concatenate(read_all(FileSource(path)))
    assert len(audio) == 8_000
    assert np.abs(audio).max() == pytest.approx(10_000, abs=5)


def test_realtime_paces_blocks_to_the_wall_clock(tmp_path):
    path = write_tone(tmp_path / "half.wav", 16_000, 1, seconds=0.6)
    with FileSource(path, block_s=0.1, realtime=True) as source:
        started = time.monotonic()
        first = source.read()
        assert source.read(timeout=0.0).size == 0, "the next block is not due yet"
        total = len(first)
        while (block := source.read()) is not None:
            total += len(block)
        elapsed = time.monotonic() - started
    assert total == 9_600
    assert elapsed >= 0.55


def test_read_after_close_is_the_end(tmp_path):
    source = FileSource(write_tone(tmp_path / "a.wav", 16_000, 1, seconds=1.0))
    assert source.read().size > 0
    source.close()
    assert source.read() is None
    source.close()


def test_bad_block_length_is_refused(tmp_path):
    with pytest.raises(ValueError, match="block_s"):
        FileSource(write_tone(tmp_path / "a.wav", 16_000, 1, 0.1), block_s=0)


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    directory = tmp_path / "folder.wav"
    directory.mkdir()
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(4).bytes(4096))
    text = tmp_path / "notes.flac"
    text.write_text("this is not audio\n" * 50)
    no_frames = tmp_path / "no-frames.wav"
    soundfile.write(no_frames, np.zeros((0, 1), dtype=np.int16), 16_000)
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    return {
        "missing": (tmp_path / "missing.wav", "no such file"),
        "directory": (directory, "is a directory"),
        "empty": (empty, "empty file"),
        "garbage": (garbage, "not an audio file libsndfile can read"),
        "text": (text, "not an audio file libsndfile can read"),
        "no frames": (no_frames, "contains no audio frames"),
        "fifo": (fifo, "not a regular file"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "directory", "empty", "garbage", "text", "no frames", "fifo"]
)
def test_unusable_files_give_one_clear_line_naming_the_file(tmp_path, case):
    path, expected = bad_inputs(tmp_path)[case]
    with pytest.raises(AudioInputError) as info:
        FileSource(path)
    message = str(info.value)
    assert message == f"{path}: {expected}" or message.startswith(f"{path}: {expected}")
    assert "\n" not in message


def test_unreadable_file_is_refused_as_permission_denied(tmp_path):
    """Root reads anything: as root the check runs without the capabilities that allow it."""
    path = write_tone(tmp_path / "locked.wav", 16_000, 1, 0.1)
    path.chmod(0o000)
    no_override = "-dac_override,-dac_read_search"
    as_plain_user = (
        ["setpriv", "--bounding-set", no_override, "--inh-caps", no_override]
        if os.geteuid() == 0
        else []
    )
    code = (
        "import sys\nfrom agent.pipeline.filesource import FileSource\n"
        "from agent.pipeline.audio import AudioInputError\n"
        "try:\n    FileSource(sys.argv[1])\nexcept AudioInputError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [*as_plain_user, sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.strip() == f"{path}: permission denied", result.stderr


def test_corruption_inside_a_flac_is_an_input_error_not_a_crash(tmp_path):
    samples = np.random.default_rng(5).integers(-9000, 9000, 16_000 * 3, dtype=np.int16)
    good = tmp_path / "good.flac"
    soundfile.write(good, samples, 16_000)
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = np.random.default_rng(6).bytes(4000)
    broken = tmp_path / "broken.flac"
    broken.write_bytes(bytes(data))
    with FileSource(broken) as source, pytest.raises(AudioInputError) as info:
        while source.read() is not None:
            pass
    assert str(info.value).startswith(f"{broken}: corrupt audio after ")


def test_segment_cli_reports_a_bad_file_in_one_line(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("not audio")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "room-agent"), "segment", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"room-agent: {path}: not an audio file libsndfile can read (expected WAV or FLAC)"
    ]


def test_reads_under_memory_deny_write_execute(tmp_path):
    """The unit sets MemoryDenyWriteExecute=yes; PR_SET_MDWE applies the same rule."""
    path = tmp_path / "in.flac"
    soundfile.write(path, np.arange(48_000, dtype=np.int16), 48_000)
    code = (
        "import ctypes, sys\n"
        "if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0: sys.exit(77)\n"
        "from agent.pipeline.filesource import FileSource\n"
        f"source = FileSource({str(path)!r})\n"
        "n = 0\n"
        "while (block := source.read()) is not None: n += block.size\n"
        "print(n)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert result.stdout.strip() == "16000", result.stderr
