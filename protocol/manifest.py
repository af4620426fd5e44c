"""A session's manifest: the complete list of chunks the device sealed for it.

The device sends it when the session is closed; the gateway assembles the session only
when it holds every chunk listed here, byte for byte (``sha256`` is of the sealed bytes,
so a re-upload of the same spool file is recognised as the same chunk).

What a manifest may say is bounded: seqs unique and in ascending order, finite times
within a session's possible length; the gateway also checks each listed chunk's size and
times against the header of the chunk it holds. Anything else is
refused (422) with the rule it breaks: a seq listed three times must never triple audio.
"""

from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.ids import DeviceId, SessionId, Sha256Hex

CloseReason = Literal["stopped", "interrupted", "spool_full", "device_lost", "error"]
MAX_SEQ = 10_000_000  # the ingest path's bound too
MAX_SESSION_S = 7 * 86_400.0  # no session lasts a week
MAX_CHUNK_S = 3_600.0
MAX_CHUNK_BYTES = 1 << 30
MAX_CHUNKS = 100_000
MAX_PAUSES = 10_000


class ManifestChunk(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    seq: int = Field(ge=0, le=MAX_SEQ)
    sha256: Sha256Hex
    bytes: int = Field(gt=0, le=MAX_CHUNK_BYTES)
    start_s: float = Field(ge=0, le=MAX_SESSION_S)
    duration_s: float = Field(gt=0, le=MAX_CHUNK_S)


class PausedInterval(BaseModel):
    """A stretch of the session with the microphone closed: times only, no audio.

    ``offset_s`` is where in the session's audio the pause falls (the audio timeline does
    not advance while paused); ``started_at``/``ended_at`` are the device's clock.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    offset_s: float = Field(ge=0, le=MAX_SESSION_S)
    started_at: datetime
    ended_at: datetime


class SessionManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: DeviceId
    session_id: SessionId
    reason: CloseReason = "stopped"
    chunks: list[ManifestChunk] = Field(default_factory=list, max_length=MAX_CHUNKS)
    paused: list[PausedInterval] = Field(default_factory=list, max_length=MAX_PAUSES)
    records_lost_below: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SEQ,
        description="the device lost its records of this session's seqs below this (its"
        " spool was lost before a restart; the session went on above it): the gateway"
        " completes the manifest with the chunks it holds there, as they are",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        below = self.records_lost_below
        if below is not None and self.chunks and self.chunks[0].seq < below:
            raise ValueError(
                f"chunk seq {self.chunks[0].seq} is below records_lost_below ({below})"
            )
        for before, after in zip(self.chunks, self.chunks[1:], strict=False):
            if after.seq <= before.seq:
                raise ValueError(
                    f"chunk seqs must be unique and ascending (seq {after.seq} after {before.seq})"
                )
        return self

    @property
    def speech_s(self) -> float:
        return sum(chunk.duration_s for chunk in self.chunks)
