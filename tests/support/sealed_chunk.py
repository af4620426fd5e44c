"""A small chunk sealed as a device seals it, for tests of the keys that must open it."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from protocol.envelope import ChunkHeader, seal_chunk

AUDIO = b"flac bytes"


def sealed_chunk(recipient: X25519PublicKey) -> bytes:
    """``AUDIO`` sealed to ``recipient`` (device room-1, session ses_1, seq 0)."""
    header = ChunkHeader(
        device_id="room-1",
        session_id="ses_1",
        seq=0,
        codec="flac",
        start_s=0,
        duration_s=1,
        sha256=hashlib.sha256(AUDIO).hexdigest(),
    )
    return seal_chunk(header, AUDIO, recipient)
