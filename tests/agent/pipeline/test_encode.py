"""encode_chunk: decoded with soundfile (independently of runtime.codec.decode)."""

import io

import numpy as np
import pytest
import soundfile

from agent.pipeline.encode import encode_chunk

RATE = 16_000


def speechlike(seconds: float, seed: int = 7) -> np.ndarray:
    """A 150 Hz voiced tone with harmonics and a syllable-rate envelope, plus a little noise."""
    t = np.arange(int(RATE * seconds)) / RATE
    voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.05
    return (voiced * envelope * 6000 + noise * 6000).astype(np.int16)


def read_back(data: bytes) -> tuple[np.ndarray, int, str]:
    with soundfile.SoundFile(io.BytesIO(data)) as sf:
        return sf.read(dtype="int16"), sf.samplerate, sf.format


def test_flac_is_bit_exact():
    pcm = speechlike(3.0)
    data = encode_chunk(pcm, "flac", 24)
    decoded, rate, fmt = read_back(data)
    assert (fmt, rate) == ("FLAC", RATE)
    assert np.array_equal(decoded, pcm)
    assert len(data) < pcm.nbytes * 0.8, "FLAC should compress speech-like audio"


@pytest.mark.parametrize("kbps", [12, 24, 64])
def test_opus_length_level_and_bitrate(kbps):
    seconds = 5.0
    pcm = speechlike(seconds)
    data = encode_chunk(pcm, "opus", kbps)
    decoded, rate, fmt = read_back(data)
    assert (fmt, rate) == ("OGG", RATE)
    assert len(decoded) / RATE == pytest.approx(seconds, abs=0.03)
    rms_in = np.sqrt(np.mean(pcm.astype(float) ** 2))
    rms_out = np.sqrt(np.mean(decoded.astype(float) ** 2))
    assert rms_out == pytest.approx(rms_in, rel=0.2)
    achieved_kbps = len(data) * 8 / seconds / 1000
    assert achieved_kbps == pytest.approx(kbps, rel=0.35)


def test_opus_bitrate_follows_setting():
    pcm = speechlike(4.0)
    sizes = [len(encode_chunk(pcm, "opus", kbps)) for kbps in (8, 24, 96)]
    assert sizes == sorted(sizes) and sizes[0] * 3 < sizes[2]


@pytest.mark.parametrize(
    "pcm, message",
    [
        (np.zeros(100, dtype=np.float32), "int16"),
        (np.zeros((100, 2), dtype=np.int16), "1-D"),
        (np.zeros(0, dtype=np.int16), "empty"),
    ],
)
def test_rejects_what_the_pipeline_never_makes(pcm, message):
    with pytest.raises(ValueError, match=message):
        encode_chunk(pcm, "flac", 24)
