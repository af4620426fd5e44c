"""How chunk audio is encoded and decoded: 16 kHz mono int16 as FLAC or Ogg Opus.

Both programs use it (the agent encodes, the gateway decodes and re-encodes); the format
itself (the envelope's ``codec``) is in protocol/, the file descriptor work and numpy and
soundfile are here, outside the pure protocol package. Encoding and decoding go through a
memfd rather than soundfile's BytesIO support: BytesIO needs cffi callbacks, which need
writable+executable memory, which the hardened units forbid (MemoryDenyWriteExecute=yes).
A memfd is an ordinary file descriptor backed by memory; libsndfile reads it directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import soundfile

from protocol.envelope import Codec

SAMPLE_RATE = 16_000
_FORMATS = {"flac": ("FLAC", "PCM_16"), "opus": ("OGG", "OPUS")}
CONTENT_TYPES = {"flac": "audio/flac", "opus": "audio/ogg"}


class CodecError(ValueError):
    """Audio bytes that libsndfile cannot decode."""


@dataclass(frozen=True)
class DecodedAudio:
    pcm: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate


def opus_compression_level(bitrate_kbps: int) -> float:
    """libsndfile takes a compression level, not a bitrate: ~6 + 250 x (1 - level) kbit/s."""
    return min(1.0, max(0.0, 1.0 - (bitrate_kbps - 6) / 250))


def encode(pcm: np.ndarray, codec: Codec, opus_bitrate_kbps: int = 24) -> bytes:
    """Encode 16 kHz mono int16 samples."""
    with _memfd("encode") as fd:
        encode_into(fd, [pcm], codec, opus_bitrate_kbps)
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)


def encode_into(
    fd: int, pieces: Iterable[np.ndarray], codec: Codec, opus_bitrate_kbps: int = 24
) -> int:
    """Encode consecutive pieces of 16 kHz mono int16 audio as one file written to ``fd``
    (a regular file, at its start), piece by piece: a session's hour of audio is never
    held twice in memory. Returns the number of samples written."""
    container, subtype = _FORMATS[codec]
    options = {}
    if codec == "opus":
        options["compression_level"] = opus_compression_level(opus_bitrate_kbps)
    samples = 0
    with soundfile.SoundFile(
        fd, "w", SAMPLE_RATE, 1, subtype, format=container, closefd=False, **options
    ) as out:
        for piece in pieces:
            out.write(np.asarray(piece, dtype=np.int16))
            samples += len(piece)
    return samples


def decode(data: bytes) -> DecodedAudio:
    """Decode any libsndfile-readable bytes to int16, mixing down to mono."""
    if not data:
        raise CodecError("no audio data")
    with _memfd("decode") as fd:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            with soundfile.SoundFile(fd, closefd=False) as source:
                pcm = source.read(dtype="int16", always_2d=True)
                rate = source.samplerate
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            reason = getattr(exc, "error_string", "unreadable")
            raise CodecError(f"not decodable audio ({reason})") from None
    mono = pcm[:, 0] if pcm.shape[1] == 1 else pcm.mean(axis=1).round().astype(np.int16)
    return DecodedAudio(mono, rate)


@contextmanager
def _memfd(name: str) -> Iterator[int]:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)
