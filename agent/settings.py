"""The agent's settings: the ``[agent]`` table of the TOML file, then ``ROOM_AGENT_*``.

Every key is documented, with its default and unit, in config.example.toml; a test keeps
the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from runtime.settings import FileSettings, default_state_dir, load_settings

CONFIG_ENV = "ROOM_AGENT_CONFIG"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class AudioSettings(BaseModel):
    """Capture, voice activity detection and encoding."""

    model_config = ConfigDict(extra="forbid")

    device: str = "default"
    device_rate: int = Field(default=0, ge=0, le=384_000)
    channels: int = Field(default=1, ge=1, le=32)
    block_ms: int = Field(default=30, ge=10, le=500)
    queue_max_s: float = Field(default=10.0, gt=0, le=600)
    vad_mode: int = Field(default=3, ge=0, le=3)
    pre_roll_ms: int = Field(default=300, ge=0, le=5000)
    hangover_ms: int = Field(default=600, ge=0, le=10_000)
    min_speech_ms: int = Field(default=120, ge=0, le=10_000)
    max_chunk_s: float = Field(default=10.0, ge=1, le=600)
    noise_margin_db: float = Field(default=4.0, ge=0, le=40)
    noise_window_s: float = Field(default=6.0, ge=0.5, le=120)
    codec: Literal["flac", "opus"] = "flac"
    opus_bitrate_kbps: int = Field(default=24, ge=6, le=256)


class SpoolSettings(BaseModel):
    """The durable on-disk queue of sealed chunks waiting for the gateway."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(default=2 * 1024**3, ge=1024**2)
    min_free_bytes: int = Field(default=256 * 1024**2, ge=0)


class AgentSettings(FileSettings):
    model_config = SettingsConfigDict(
        env_prefix="ROOM_AGENT_", env_nested_delimiter="__", extra="forbid"
    )

    device_id: str = Field(
        default="room-1",
        pattern=DEVICE_ID_PATTERN,
        description="1-64 letters, digits, '-' or '_', starting with a letter or digit",
    )
    state_dir: Path = Field(default_factory=lambda: default_state_dir("room-agent"))
    gateway_public_key: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    audio: AudioSettings = AudioSettings()
    spool: SpoolSettings = SpoolSettings()

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"


def load_agent_settings(path: Path | None = None) -> AgentSettings:
    """``--config`` wins over ``ROOM_AGENT_CONFIG``; with neither, defaults and env only."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    return load_settings(AgentSettings, "agent", path)
