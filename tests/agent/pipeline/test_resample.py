"""Resampler: bit-exact passthrough, correct 16 kHz signals from any rate, streaming state."""

import numpy as np
import pytest

from agent.pipeline.resample import Resampler


def tone(rate: int, seconds: float, hz: float, amplitude: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def stream(resampler: Resampler, samples: np.ndarray, block: int) -> np.ndarray:
    parts = [resampler.process(samples[i : i + block]) for i in range(0, len(samples), block)]
    return np.concatenate([*parts, resampler.flush()])


def peak_hz(samples: np.ndarray, rate: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def test_16k_mono_passes_through_bit_exact():
    samples = np.random.default_rng(1).integers(-32768, 32768, 50_000, dtype=np.int16)
    resampler = Resampler(16_000, 1)
    assert resampler.passthrough
    out = [resampler.process(samples[i : i + n]) for i, n in ((0, 1), (1, 479), (480, 49_520))]
    out.append(resampler.process(samples[:0].reshape(0, 1)))
    out.append(resampler.flush())
    assert all(part.dtype == np.int16 for part in out)
    np.testing.assert_array_equal(np.concatenate(out), samples)


def test_stereo_16k_is_mixed_down_rounded_and_within_range():
    left = np.array([1, -1, 32767, -32768, 100, 3], dtype=np.int16)
    right = np.array([2, -2, 32767, -32768, -100, 4], dtype=np.int16)
    out = stream(Resampler(16_000, 2), np.stack([left, right], axis=1), block=4)
    # Means 1.5, -1.5 and 3.5 round half to even; full scale stays full scale, no wrap.
    np.testing.assert_array_equal(out, [2, -2, 32767, -32768, 0, 4])


@pytest.mark.parametrize(
    ("rate", "channels"), [(48_000, 2), (48_000, 1), (44_100, 2), (22_050, 1), (8_000, 1)]
)
def test_a_tone_keeps_its_frequency_level_and_length(rate, channels):
    mono = tone(rate, 2.0, 1000, 12_000)
    samples = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    out = stream(Resampler(rate, channels), samples, block=round(rate * 0.03))
    assert out.dtype == np.int16
    assert abs(len(out) - 32_000) <= 1
    middle = out[1600:-1600].astype(np.float64)
    assert peak_hz(middle) == pytest.approx(1000, abs=2)
    assert rms(middle) == pytest.approx(12_000 / np.sqrt(2), rel=0.005)


def test_channels_are_averaged_not_summed():
    left = tone(48_000, 1.0, 500, 10_000)
    silent = np.zeros_like(left)
    out = stream(Resampler(48_000, 2), np.stack([left, silent], axis=1), block=1440)
    assert rms(out[800:-800]) == pytest.approx(5_000 / np.sqrt(2), rel=0.01)


def test_frequencies_above_8k_do_not_fold_back_into_speech():
    whistle = tone(48_000, 1.0, 11_000, 16_000)
    out = stream(Resampler(48_000, 1), whistle, block=1440)
    assert rms(out[800:-800]) < 16_000 / np.sqrt(2) * 1e-3  # at least 60 dB down


def test_block_size_does_not_change_the_result():
    samples = np.random.default_rng(2).integers(-8000, 8000, 48_000 * 2, dtype=np.int16)
    in_small_blocks = stream(Resampler(48_000, 1), samples, block=480)
    in_odd_blocks = stream(Resampler(48_000, 1), samples, block=1777)
    assert len(in_small_blocks) == len(in_odd_blocks) == 32_000
    assert np.max(np.abs(in_small_blocks.astype(int) - in_odd_blocks)) <= 1


def test_overshoot_is_clipped_not_wrapped():
    square = np.where(tone(48_000, 0.5, 200, 20_000) >= 0, 32767, -32768).astype(np.int16)
    out = stream(Resampler(48_000, 1), square, block=960)
    reference = square[::3][: len(out)]
    inner = slice(200, -200)
    # Away from the edges the sign always follows the input: a wrapped overshoot would flip it.
    edges = np.abs(np.diff(np.sign(reference.astype(int)), prepend=0)) > 0
    near_edge = np.convolve(edges, np.ones(9), mode="same") > 0
    agree = np.sign(out[inner].astype(int)) == np.sign(reference[inner].astype(int))
    assert np.all(agree | near_edge[inner])
    assert out.max() == 32767 and out.min() == -32768


def test_wrong_input_is_refused_loudly():
    resampler = Resampler(48_000, 2)
    with pytest.raises(TypeError, match="int16"):
        resampler.process(np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="2 channel"):
        resampler.process(np.zeros(10, dtype=np.int16))
    resampler.flush()
    with pytest.raises(RuntimeError, match="after flush"):
        resampler.process(np.zeros((10, 2), dtype=np.int16))
    with pytest.raises(ValueError, match="in_rate"):
        Resampler(0, 1)
