"""Audio content types and the audio errors.

Session audio itself lives encrypted in the store (audio_vault.py), never in a file; files
are written through runtime.files.
"""

from __future__ import annotations

CONTENT_TYPES = {"audio/flac": ".flac", "audio/x-flac": ".flac", "audio/ogg": ".ogg"}


class AudioRejected(Exception):
    """The audio cannot be used (empty, too large); the message says which."""


class AudioTooLarge(AudioRejected):
    pass
