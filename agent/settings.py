"""The agent's settings: the ``[agent]`` table of the TOML file, then ``ROOM_AGENT_*``.

Every key is documented, with its default and unit, in config.example.toml; a test keeps
the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from agent import CONFIG_ENV
from runtime.mqtt import BrokerSettings
from runtime.secrets import resolve_secret
from runtime.settings import FileSettings, default_state_dir, load_settings

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# The names systemd/room-agent.service gives its LoadCredential= entries.
INGEST_TOKEN_CREDENTIAL = "ingest-token"
MQTT_PASSWORD_CREDENTIAL = "mqtt-password"


class AudioSettings(BaseModel):
    """Capture, voice activity detection and encoding."""

    model_config = ConfigDict(extra="forbid")

    device: str = "default"
    device_rate: int = Field(default=0, ge=0, le=384_000)
    channels: int = Field(default=1, ge=1, le=32)
    block_ms: int = Field(default=240, ge=10, le=500)
    queue_max_s: float = Field(default=10.0, gt=0, le=600)
    trim: Literal["conservative", "balanced", "off"] = "conservative"
    vad_mode: int | None = Field(default=None, ge=0, le=3)
    pre_roll_ms: int | None = Field(default=None, ge=0, le=5000)
    hangover_ms: int | None = Field(default=None, ge=0, le=10_000)
    min_speech_ms: int = Field(default=120, ge=0, le=10_000)
    max_chunk_s: float = Field(default=10.0, ge=1, le=600)
    noise_margin_db: float = Field(default=4.0, ge=0, le=40)
    noise_window_s: float = Field(default=6.0, ge=0.5, le=120)
    codec: Literal["flac", "opus"] = "flac"
    opus_bitrate_kbps: int = Field(default=24, ge=6, le=256)
    presence_check_s: float = Field(default=30.0, ge=0.1, le=3600)

    @property
    def trim_preset(self) -> TrimPreset:
        """What ``trim`` means, with vad_mode / pre_roll_ms / hangover_ms where they are set."""
        preset = TRIM_PRESETS[self.trim]
        return TrimPreset(
            vad_mode=preset.vad_mode if self.vad_mode is None else self.vad_mode,
            pre_roll_ms=preset.pre_roll_ms if self.pre_roll_ms is None else self.pre_roll_ms,
            hangover_ms=preset.hangover_ms if self.hangover_ms is None else self.hangover_ms,
            keep_all=preset.keep_all,
            second_look=preset.second_look,
        )


class TrimPreset(BaseModel):
    """How hard the segmenter trims: the trade between bytes kept and speech risked.

    conservative: webrtcvad mode 2, 800 ms hangover, and a second look (mode 0) at held,
      strong energy that mode 2 rejected. Recall first: on the recorded-voice
      corpus it keeps >= 99.9% of speech time down to -50 dBFS and 5 dB SNR, a quiet
      talker next to a loud one included, and removes ~92% of far silence.
    balanced: webrtcvad mode 3, 600 ms hangover: a few percent fewer bytes, and on that
      corpus it drops some short utterances of a quiet talker right after a loud one.
    off: segment only, keep every sample (chunks of max_chunk_s): most bytes, no risk.
    """

    model_config = ConfigDict(frozen=True)

    vad_mode: int
    pre_roll_ms: int
    hangover_ms: int
    keep_all: bool = False
    second_look: bool = False  # webrtcvad mode 0 may open a region of held, strong energy


TRIM_PRESETS: dict[str, TrimPreset] = {
    "conservative": TrimPreset(vad_mode=2, pre_roll_ms=300, hangover_ms=800, second_look=True),
    "balanced": TrimPreset(vad_mode=3, pre_roll_ms=300, hangover_ms=600),
    "off": TrimPreset(vad_mode=2, pre_roll_ms=300, hangover_ms=800, keep_all=True),
}


class SpoolSettings(BaseModel):
    """The durable on-disk queue of sealed chunks waiting for the gateway."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(default=2 * 1024**3, ge=1024**2)
    min_free_bytes: int = Field(default=256 * 1024**2, ge=0)


class LinkSettings(BaseModel):
    """The HTTPS audio path to the gateway; an empty gateway_url means record only."""

    model_config = ConfigDict(extra="forbid")

    gateway_url: str = Field(
        default="",
        pattern=r"^(https?://[^\s/?#]+(/[^\s?#]*)?)?$",
        description="an http:// or https:// URL, or empty",
    )
    ingest_token: SecretStr | None = None
    ingest_token_file: Path | None = None
    ca_file: Path | None = None
    upload_concurrency: int = Field(default=4, ge=1, le=32)
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    backoff_base_s: float = Field(default=0.5, gt=0, le=60)
    backoff_max_s: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _resolve_token(self) -> LinkSettings:
        self.ingest_token = resolve_secret(
            self.ingest_token,
            "ingest_token" in self.model_fields_set,
            self.ingest_token_file,
            INGEST_TOKEN_CREDENTIAL,
            "ingest_token",
        )
        return self


class MqttSettings(BrokerSettings):
    """The MQTT control plane; an empty broker_url means no control plane.

    The MQTT user name is the device id; the broker's ACL confines it to rooms/<id>/#.
    """

    password_credential: ClassVar[str] = MQTT_PASSWORD_CREDENTIAL

    heartbeat_s: float = Field(default=60.0, ge=0.1, le=3600)


class PrivacySettings(BaseModel):
    """The room's "do not record" mode: while it is on, starts are refused (and a session
    being recorded is paused). ``do_not_record`` keeps it on for good (a room that must
    never record); ``room-agent privacy on|off`` and a button switch it at run time."""

    model_config = ConfigDict(extra="forbid")

    do_not_record: bool = False


FeedbackEvent = Literal[
    "recording_started",
    "paused",
    "resumed",
    "stopped",
    "notes_ready",
    "failed",
    "problem",
    "offline",
    "online",
    "do_not_record_on",
    "do_not_record_off",
]
ButtonAction = Literal["pause_resume", "stop", "do_not_record", "none"]


class GpioSettings(BaseModel):
    """LEDs and a button on GPIO pins (gpiozero; BCM numbers). Empty: none."""

    model_config = ConfigDict(extra="forbid")

    led_pins: list[int] = Field(default=[], description="LEDs showing the state")
    button_pin: int | None = None
    button_pull_up: bool = True  # a button to ground (the usual wiring)
    bounce_s: float = Field(default=0.05, ge=0, le=1, description="contact bounce ignored")
    long_press_s: float = Field(default=2.0, gt=0, le=30)
    short_press: ButtonAction = "pause_resume"
    long_press: ButtonAction = "stop"


class Apa102Settings(BaseModel):
    """The APA102 LED ring of ReSpeaker 2-/4-mic HATs, on SPI. Empty device: none."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(default="", description="e.g. /dev/spidev0.0 (2-mic), /dev/spidev0.1")
    leds: int = Field(default=3, ge=1, le=255, description="3 on the 2-mic HAT, 12 on the 4-mic")
    brightness: int = Field(default=8, ge=0, le=31)


class CueSettings(BaseModel):
    """Short sounds on start, pause, resume and stop through the output device."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    device: str = "default"
    volume: float = Field(default=0.5, ge=0, le=1)
    directory: Path | None = Field(
        default=None, description="start.wav, pause.wav, resume.wav, stop.wav; default: shipped"
    )


class FeedbackSettings(BaseModel):
    """What people in the room see and hear: none of it is required."""

    model_config = ConfigDict(extra="forbid")

    sysfs_leds: list[str] = Field(
        default=[], description="names under sysfs_root, e.g. led0 (the Pi's ACT)"
    )
    sysfs_root: Path = Field(default="/sys/class/leds", validate_default=True)
    gpio: GpioSettings = GpioSettings()
    apa102: Apa102Settings = Apa102Settings()
    cues: CueSettings = CueSettings()
    notes_ready_s: float = Field(default=300.0, ge=0, le=86_400, description="shown this long")
    hooks: dict[FeedbackEvent, str] = Field(
        default={}, description="a command per event (no shell), ids in its env"
    )
    hook_timeout_s: float = Field(default=10.0, gt=0, le=300)


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
    # Factories: the secrets are resolved when the settings are loaded, not at import.
    link: LinkSettings = Field(default_factory=LinkSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    privacy: PrivacySettings = PrivacySettings()
    feedback: FeedbackSettings = FeedbackSettings()

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"


def load_agent_settings(path: Path | None = None) -> AgentSettings:
    """``--config`` wins over ``ROOM_AGENT_CONFIG``; with neither, defaults and env only."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    return load_settings(AgentSettings, "agent", path)
