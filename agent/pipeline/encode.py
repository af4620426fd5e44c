"""Encode a speech chunk for the spool: 16 kHz mono int16 samples to FLAC or Ogg Opus bytes.

The codec itself lives in runtime.codec because the gateway decodes what the agent
encodes; it goes through a memfd, not BytesIO, so it also works under the unit's
MemoryDenyWriteExecute=yes. This module is the agent's one entry point to it and rejects
input the pipeline must never produce (wrong dtype, stereo, empty) before it reaches disk.
"""

from __future__ import annotations

import numpy as np

from protocol.envelope import Codec
from runtime.codec import encode


def encode_chunk(pcm: np.ndarray, codec: Codec, opus_bitrate_kbps: int = 24) -> bytes:
    """FLAC (lossless) or Opus at roughly ``opus_bitrate_kbps`` (see opus_compression_level)."""
    if pcm.dtype != np.int16 or pcm.ndim != 1:
        raise ValueError(f"expected 1-D int16 samples, got {pcm.ndim}-D {pcm.dtype}")
    if pcm.size == 0:
        raise ValueError("cannot encode an empty chunk")
    return encode(pcm, codec, opus_bitrate_kbps)
