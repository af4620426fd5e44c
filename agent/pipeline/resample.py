"""Any device or file format -> the agent's one format, 16 kHz mono int16, block by block.

Streaming, because capture delivers small blocks and a resampler that restarted at every
block would click at every block boundary. soxr's "HQ" quality: transparent for speech,
and on x86 still thousands of times real time for 48 kHz -> 16 kHz in 30 ms blocks, so
the agent's whole-pipeline budget (>= 500x real time) is not spent here. "VHQ" costs
1.5x the time and buys nothing a transcriber could hear.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from agent.pipeline.audio import SAMPLE_RATE

if TYPE_CHECKING:
    import soxr

QUALITY = "HQ"
INT16_MIN = np.iinfo(np.int16).min
INT16_MAX = np.iinfo(np.int16).max


class Resampler:
    """Mixes ``channels`` down to mono and converts ``in_rate`` to 16 kHz, keeping state.

    When the input already is 16 kHz mono, blocks pass through untouched (bit exact), so
    a device that offers 16 kHz costs nothing and loses nothing.
    """

    def __init__(self, in_rate: int, channels: int) -> None:
        if in_rate <= 0:
            raise ValueError(f"in_rate must be > 0 (got {in_rate})")
        if channels <= 0:
            raise ValueError(f"channels must be > 0 (got {channels})")
        self.in_rate = in_rate
        self.channels = channels
        self._stream = None if in_rate == SAMPLE_RATE else _soxr_stream(in_rate)
        self._weights = np.full(channels, 1 / channels, dtype=np.float32)
        self._flushed = False

    @property
    def passthrough(self) -> bool:
        return self._stream is None and self.channels == 1

    def process(self, block: np.ndarray) -> np.ndarray:
        """int16 frames (x channels) in; the 16 kHz mono int16 samples ready so far out.

        The output length varies from block to block (the filter's delay); the total over a
        stream, flush() included, is the input duration at 16 kHz.
        """
        if self._flushed:
            raise RuntimeError("Resampler.process() after flush()")
        frames = self._frames(block)
        if self.passthrough:
            return frames.reshape(-1)
        mono = self._downmix(frames)
        if self._stream is None:
            return _to_int16(mono)
        return _to_int16(self._stream.resample_chunk(mono))

    def flush(self) -> np.ndarray:
        """The samples still inside the filter at the end of the stream; call once, last."""
        if self._flushed:
            return np.zeros(0, dtype=np.int16)
        self._flushed = True
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return _to_int16(tail)

    def _frames(self, block: np.ndarray) -> np.ndarray:
        if block.dtype != np.int16:
            raise TypeError(f"Resampler takes int16 samples (got {block.dtype})")
        if block.ndim == 1 and self.channels == 1:
            return block.reshape(-1, 1)
        if block.ndim == 2 and block.shape[1] == self.channels:
            return block
        raise ValueError(
            f"Resampler for {self.channels} channel(s) got a block of shape {block.shape}"
        )

    def _downmix(self, frames: np.ndarray) -> np.ndarray:
        """The channels' mean, kept in float32 so no precision is lost before resampling.

        As a product with equal weights: numpy's mean along a short axis is ten times slower.
        """
        if self.channels == 1:
            return frames[:, 0].astype(np.float32)
        return frames.astype(np.float32) @ self._weights


def _to_int16(samples: np.ndarray) -> np.ndarray:
    """Round to nearest and clip: the resampler's ringing may overshoot full scale."""
    return np.clip(np.rint(samples), INT16_MIN, INT16_MAX).astype(np.int16)


def _soxr_stream(in_rate: int) -> soxr.ResampleStream:
    """Imported here: most microphones offer 16 kHz, and the agent need not hold soxr."""
    import soxr

    return soxr.ResampleStream(in_rate, SAMPLE_RATE, 1, dtype="float32", quality=QUALITY)
