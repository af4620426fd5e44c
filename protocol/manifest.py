"""A session's manifest: the complete list of chunks the device sealed for it.

The device sends it when the session is closed; the gateway assembles the session only
when it holds every chunk listed here, byte for byte (``sha256`` is of the sealed bytes,
so a re-upload of the same spool file is recognised as the same chunk).
"""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.ids import DeviceId, SessionId, Sha256Hex

CloseReason = Literal["stopped", "interrupted", "spool_full", "device_lost", "error"]


class ManifestChunk(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=0)
    sha256: Sha256Hex
    bytes: int = Field(gt=0)
    start_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)


class PausedInterval(BaseModel):
    """A stretch of the session with the microphone closed: times only, no audio.

    ``offset_s`` is where in the session's audio the pause falls (the audio timeline does
    not advance while paused); ``started_at``/``ended_at`` are the device's clock.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    offset_s: float = Field(ge=0)
    started_at: datetime
    ended_at: datetime


class SessionManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: DeviceId
    session_id: SessionId
    reason: CloseReason = "stopped"
    chunks: list[ManifestChunk] = Field(default_factory=list)
    paused: list[PausedInterval] = Field(default_factory=list)

    @property
    def speech_s(self) -> float:
        return sum(chunk.duration_s for chunk in self.chunks)
