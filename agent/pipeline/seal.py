"""Encode -> seal: turns one chunk of speech into the sealed bytes the spool stores.

This is the only place on the device where a ChunkHeader is made, so the header the
gateway reads always agrees with the audio it decrypts. Audio leaves this module only
encrypted to the gateway's public key; plaintext never reaches the disk.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent.pipeline.audio import SAMPLE_RATE
from agent.pipeline.encode import encode_chunk
from protocol.envelope import ChunkHeader, Codec, EnvelopeError, public_key_from_text, seal_chunk


class SealingKeyError(ValueError):
    """The gateway's public key is missing or unusable; recording must not start."""


def gateway_key(text: str | None) -> X25519PublicKey:
    """The configured gateway key, or a one-line reason why there is none."""
    if not text:
        raise SealingKeyError(
            "agent.gateway_public_key is not set (needed to seal audio; "
            "set it in the config or ROOM_AGENT_GATEWAY_PUBLIC_KEY)"
        )
    try:
        return public_key_from_text(text)
    except EnvelopeError as exc:
        raise SealingKeyError(f"agent.gateway_public_key: {exc}") from None


class ChunkSealer:
    """Encodes and seals the chunks of one device with one codec to one gateway key."""

    def __init__(
        self,
        device_id: str,
        recipient: X25519PublicKey,
        codec: Codec = "flac",
        opus_bitrate_kbps: int = 24,
    ) -> None:
        self.device_id = device_id
        self.recipient = recipient
        self.codec: Codec = codec
        self.opus_bitrate_kbps = opus_bitrate_kbps

    def seal(self, session_id: str, seq: int, start_s: float, pcm: np.ndarray) -> bytes:
        """``start_s`` is the chunk's offset in the session timeline."""
        audio = encode_chunk(pcm, self.codec, self.opus_bitrate_kbps)
        header = ChunkHeader(
            device_id=self.device_id,
            session_id=session_id,
            seq=seq,
            codec=self.codec,
            sample_rate=SAMPLE_RATE,
            start_s=round(start_s, 3),
            duration_s=round(len(pcm) / SAMPLE_RATE, 3),
            sha256=hashlib.sha256(audio).hexdigest(),
        )
        return seal_chunk(header, audio, self.recipient)
