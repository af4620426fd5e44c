"""The gateway's settings: the ``[gateway]`` table of the TOML file, then ``ROOM_GATEWAY_*``.

Every key is documented, with its default and unit, in config.example.toml; a test keeps
the two in step. The Blueprint defaults are the embedded simulator's, so ``room-gateway
serve`` runs out of the box for the demo; a real deployment sets all four.

Secrets (Blueprint api key and client secret, the partner callback secret) are SecretStr
so they never show in a repr, a log line or an error. Each may be given directly (file or
environment), as ``*_file`` (a path to read), or as a systemd credential
(``LoadCredential=NAME:...`` puts it in ``$CREDENTIALS_DIRECTORY/NAME``), so a unit never
needs them in its config file or environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from gateway import CONFIG_ENV as CONFIG_ENV
from gateway.blueprint.defaults import (
    DEFAULT_API_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PORT,
)
from gateway.blueprint.environment import environment_id
from gateway.store.location import (
    Location,
    PostgresLocation,
    SqliteLocation,
    UrlError,
    parse_url,
)
from runtime.mqtt import BrokerSettings as BrokerConnection
from runtime.secrets import read_secret_file, resolve_secret
from runtime.settings import FileSettings, default_state_dir, load_settings

# A replica's name R: its MQTT user (and client id) is gateway-R.
REPLICA_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"

# The names systemd/room-gateway.service gives its LoadCredential= entries.
API_KEY_CREDENTIAL = "blueprint-api-key"
CLIENT_SECRET_CREDENTIAL = "blueprint-client-secret"
CALLBACK_SECRET_CREDENTIAL = "partner-callback-secret"
MQTT_PASSWORD_CREDENTIAL = "gateway-mqtt-password"
DATABASE_PASSWORD_CREDENTIAL = "gateway-database-password"
MQTT_PASSWORD_FILE = "mqtt-password"  # in state_dir, written by `room-gateway broker-config`
GATEWAY_CLIENT_ID_PATTERN = r"^(gateway(-[A-Za-z0-9_-]{1,55})?)?$"
KiB = 1024
MiB = 1024 * KiB


class HttpSettings(BaseModel):
    """The listener for the partner API, Blueprint's webhooks and (later) room devices."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=1 * MiB, ge=1 * KiB)
    webhook_max_body_bytes: int = Field(default=256 * KiB, ge=1 * KiB)
    audio_max_bytes: int = Field(default=500 * MiB, ge=1 * KiB)
    # Longer than a load balancer keeps an idle connection to reuse it (HAProxy: 5 s), so the
    # gateway never closes one just as the balancer sends a request on it (a 502).
    keep_alive_s: float = Field(default=75.0, gt=0, le=3600)
    # Slow and idle clients (gateway/listener/): config.example.toml says what each does.
    header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    body_idle_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    body_timeout_s: float = Field(default=600.0, gt=0, le=86_400)
    max_connections: int = Field(default=4096, ge=16, le=1_000_000)
    access_log: bool = False


class BlueprintSettings(BaseModel):
    """Where Blueprint is and the partner credentials; defaults: the embedded simulator."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(
        default=f"http://127.0.0.1:{DEFAULT_PORT}",
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="an http:// or https:// URL",
    )
    api_key: SecretStr = SecretStr(DEFAULT_API_KEY)
    api_key_file: Path | None = None
    client_id: str = Field(default=DEFAULT_CLIENT_ID, min_length=1)
    client_secret: SecretStr = SecretStr(DEFAULT_CLIENT_SECRET)
    client_secret_file: Path | None = None
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_attempts: int = Field(default=5, ge=1, le=20)
    backoff_base_s: float = Field(default=0.5, ge=0, le=60)
    backoff_max_s: float = Field(default=30.0, ge=0, le=3600)
    artifact_origins: list[str] = Field(default_factory=list)
    # When the note's webhook does not come (Blueprint gave up delivering it while we were
    # down): ask for the note this long after the upload, then every poll_interval_s,
    # poll_attempts times in all; then the session fails with the reason.
    poll_after_s: float = Field(default=900.0, ge=0, le=7 * 86_400)
    poll_interval_s: float = Field(default=300.0, gt=0, le=86_400)
    poll_attempts: int = Field(default=24, ge=1, le=10_000)
    record_updates: bool = Field(
        default=True,
        description="send a PUT's changed names to Blueprint (PATCH of the record, an"
        " assumed endpoint); false: changes stay local and the answer says so",
    )

    @property
    def environment(self) -> str:
        """The Blueprint environment (base URL + client id) cached ids belong to."""
        return environment_id(self.base_url, self.client_id)

    @model_validator(mode="after")
    def _resolve_secrets(self) -> Self:
        given = self.model_fields_set
        self.api_key = resolve_secret(
            self.api_key, "api_key" in given, self.api_key_file, API_KEY_CREDENTIAL, "api_key"
        )
        self.client_secret = resolve_secret(
            self.client_secret,
            "client_secret" in given,
            self.client_secret_file,
            CLIENT_SECRET_CREDENTIAL,
            "client_secret",
        )
        return self


class JobSettings(BaseModel):
    """The durable job queue: every call to Blueprint or to the partner is a job."""

    model_config = ConfigDict(extra="forbid")

    # Jobs mostly await Blueprint, the broker or the store, so many at once cost little;
    # at 4, the notify of one session queued ~0.2-0.5 s behind others' uploads at 5/s.
    concurrency: int = Field(default=32, ge=1, le=64)
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    max_attempts: int = Field(default=10, ge=1, le=1000)
    backoff_base_s: float = Field(default=5.0, ge=0, le=3600)
    backoff_max_s: float = Field(default=900.0, ge=0, le=86_400)
    # A running job is leased to its replica for this long, renewed every third of it; a
    # replica's jobs are taken over by another this long after it died.
    lease_s: float = Field(default=30.0, ge=0.3, le=3600)


class PartnerSettings(BaseModel):
    """The partner application: its API tokens and its optional notes-ready callback."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[SecretStr] = Field(default_factory=list)
    callback_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/?#]+(/[^\s#]*)?$",
        description="an http:// or https:// URL",
    )
    callback_secret: SecretStr | None = None
    callback_secret_file: Path | None = None
    callback_timeout_s: float = Field(default=10.0, gt=0, le=300)
    ensure_wait_s: float = Field(default=10.0, ge=0, le=120)

    @model_validator(mode="after")
    def _resolve_secrets(self) -> Self:
        self.callback_secret = resolve_secret(
            self.callback_secret,
            "callback_secret" in self.model_fields_set,
            self.callback_secret_file,
            CALLBACK_SECRET_CREDENTIAL,
            "callback_secret",
        )
        if self.callback_url is not None and self.callback_secret is None:
            raise ValueError("callback_url needs callback_secret (or callback_secret_file)")
        return self


class TestingSettings(BaseModel):
    """Switches for tests and demos only; all off in production."""

    model_config = ConfigDict(extra="forbid")

    audio_endpoint: bool = False


class MqttSettings(BrokerConnection):
    """The gateway's own connection to the broker (the relay); empty broker_url: no relay.

    The password may be given directly, as ``password_file``, as the systemd credential
    ``gateway-mqtt-password``, and otherwise is read from ``state_dir/mqtt-password``, where
    ``room-gateway broker-config`` writes it.
    """

    password_credential: ClassVar[str] = MQTT_PASSWORD_CREDENTIAL

    username: str = Field(default="gateway", min_length=1, max_length=64)
    # Empty: the MQTT user's name (broker-config's mosquitto forces that anyway). The ids
    # gateway and gateway-* are the gateway's (devices may not use them).
    client_id: str = Field(
        default="",
        pattern=GATEWAY_CLIENT_ID_PATTERN,
        description="empty (the user name), gateway, or gateway-<name>",
    )
    session_expiry_s: int = Field(default=86_400, ge=0, le=7 * 86_400)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    publish_timeout_s: float = Field(default=10.0, gt=0, le=300)
    command_expiry_s: int = Field(default=120, ge=1, le=86_400)
    # None: shared when the store is PostgreSQL (replicas split the rooms' messages).
    shared_subscription: bool | None = None


class IngestSettings(BaseModel):
    """Room devices' audio: sealed chunks in, one file per session out."""

    model_config = ConfigDict(extra="forbid")

    max_chunk_bytes: int = Field(default=16 * MiB, ge=1 * KiB)
    codec: Literal["flac", "opus"] = "flac"
    opus_bitrate_kbps: int = Field(default=24, ge=6, le=256)
    retention_s: float = Field(default=86_400.0, ge=0, le=365 * 86_400)
    # Sessions no partner started (kept, never uploaded) one device may have here at once.
    max_unclaimed_sessions: int = Field(default=20, ge=1, le=100_000)
    # Processes that open chunks (seal, audio check) beside the gateway's, on the other
    # cores; 0: on the gateway's threads. Unset: the usable cores minus one on a host with
    # more than 2 of them, else 0 (on 2 cores they cost CPU and gained no throughput).
    open_workers: int | None = Field(default=None, ge=0, le=64)

    @property
    def opening_workers(self) -> int:
        """``open_workers``, or the number for the cores this process may use."""
        if self.open_workers is not None:
            return self.open_workers
        cores = len(os.sched_getaffinity(0))
        return min(cores - 1, 8) if cores > 2 else 0


class DeviceSettings(BaseModel):
    """What `room-gateway device add` tells a room device: where to reach the gateway."""

    model_config = ConfigDict(extra="forbid")

    gateway_url: str = Field(
        default="",
        pattern=r"^(https?://[^\s/?#]+(/[^\s?#]*)?)?$",
        description="an http:// or https:// URL, or empty",
    )
    broker_url: str = Field(
        default="",
        pattern=r"^(mqtts?://[^\s/?#:@]+(:\d{1,5})?/?)?$",
        description="mqtt://host[:port] or mqtts://host[:port], or empty",
    )
    # A path on the device, not on this host: kept as text.
    install_dir: str = Field(
        default="/etc/room-audio/credentials", pattern=r"^/\S*$", description="an absolute path"
    )
    broker_ca_file: Path | None = None
    allow_plaintext: bool = False
    enrollment_ttl_s: float = Field(default=1800.0, ge=60, le=7 * 86_400)


class BrokerSettings(BaseModel):
    """The mosquitto configuration `room-gateway broker-config` writes."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="0.0.0.0", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    require_certificate: bool = False
    persistence: bool = True
    user: str = Field(default="mosquitto", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    reload_command: list[str] = Field(default_factory=list)
    replicas: list[Annotated[str, Field(pattern=REPLICA_PATTERN)]] = Field(
        default_factory=list, max_length=64
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.require_certificate and self.tls_cert_file is None:
            raise ValueError("require_certificate needs tls_cert_file and tls_key_file")
        return self


class StoreSettings(BaseModel):
    """Where the gateway keeps its state: SQLite on this host (default) or PostgreSQL, which
    several gateway replicas share.

    The PostgreSQL password is never part of ``url`` (it would be logged): it comes from
    ``password_file``, the systemd credential ``gateway-database-password``, or libpq's
    ``~/.pgpass``.
    """

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        default="",
        pattern=r"^((sqlite|postgres|postgresql)://\S*)?$",
        description="empty, sqlite:///PATH or postgresql://USER@HOST[:PORT]/DATABASE",
    )
    password: SecretStr | None = None
    password_file: Path | None = None
    pool_size: int = Field(default=4, ge=1, le=64)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    unavailable_s: float = Field(default=2.0, ge=0, le=120)

    @model_validator(mode="after")
    def _check_url(self) -> Self:
        if self.url:
            try:
                parse_url(self.url)
            except UrlError as exc:
                raise ValueError(f"url: {exc}") from None
        self.password = resolve_secret(
            self.password,
            "password" in self.model_fields_set,
            self.password_file,
            DATABASE_PASSWORD_CREDENTIAL,
            "password",
        )
        return self


class GatewaySettings(FileSettings):
    model_config = SettingsConfigDict(
        env_prefix="ROOM_GATEWAY_", env_nested_delimiter="__", extra="forbid"
    )

    state_dir: Path = Field(default_factory=lambda: default_state_dir("room-gateway"))
    # This gateway among its replicas: the owner of the jobs it runs and, when set, its MQTT
    # user and client id gateway-<replica> (broker.replicas gives each its broker entry).
    # Empty: this host's name for jobs, the plain gateway user for MQTT (one gateway).
    replica: str = Field(
        default="",
        pattern=f"({REPLICA_PATTERN})|^$",
        description="lowercase letters, digits, - and _ (max 32), or empty",
    )
    database_file: Path | None = None
    sealing_key_file: Path | None = None
    audio_key_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    http: HttpSettings = Field(default_factory=HttpSettings)
    blueprint: BlueprintSettings = Field(default_factory=BlueprintSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    partner: PartnerSettings = Field(default_factory=PartnerSettings)
    testing: TestingSettings = Field(default_factory=TestingSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    devices: DeviceSettings = Field(default_factory=DeviceSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)

    @model_validator(mode="after")
    def _one_database(self) -> Self:
        if self.store.url and self.database_file is not None:
            raise ValueError("set store.url or database_file, not both")
        return self

    @property
    def database_path(self) -> Path:
        """The SQLite file (when the store is SQLite)."""
        location = self.store_location
        if isinstance(location, SqliteLocation):
            return location.path
        return self.database_file or self.state_dir / "gateway.db"

    @property
    def store_location(self) -> Location:
        """The store as configured: SQLite at database_file (default state_dir/gateway.db),
        or store.url; PostgreSQL with its password and pool settings."""
        if not self.store.url:
            return SqliteLocation(self.database_file or self.state_dir / "gateway.db")
        location = parse_url(self.store.url)
        if isinstance(location, PostgresLocation):
            store = self.store
            return dataclasses.replace(
                location,
                password=store.password,
                pool_size=store.pool_size,
                connect_timeout_s=store.connect_timeout_s,
                unavailable_s=store.unavailable_s,
            )
        return location

    @property
    def replica_name(self) -> str:
        """``replica`` as configured, else this host's name (stable across restarts, so a
        restarted replica resumes its own MQTT session and leases)."""
        return self.replica or host_replica_name()

    @property
    def mqtt_username(self) -> str:
        """The relay's MQTT user: as configured; else gateway-<replica> when this gateway is
        a named replica (broker-config's broker makes the user the client id, so replicas
        need a user each: broker.replicas); else gateway."""
        if "username" in self.mqtt.model_fields_set or not self.replica:
            return self.mqtt.username
        return f"gateway-{self.replica}"

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or self.mqtt_username

    @property
    def shared_subscription(self) -> bool:
        """Subscribe through $share/gateway/...: by default when replicas share PostgreSQL."""
        if self.mqtt.shared_subscription is not None:
            return self.mqtt.shared_subscription
        return isinstance(self.store_location, PostgresLocation)

    @property
    def sealing_key_path(self) -> Path:
        return self.sealing_key_file or self.state_dir / "sealing-key.pem"

    @property
    def audio_key_path(self) -> Path:
        return self.audio_key_file or self.state_dir / "audio-key"

    @property
    def audio_dir(self) -> Path:
        return self.state_dir / "audio"

    @property
    def chunk_dir(self) -> Path:
        return self.state_dir / "chunks"

    @property
    def mqtt_password_path(self) -> Path:
        return self.state_dir / MQTT_PASSWORD_FILE

    @property
    def mqtt_password(self) -> SecretStr | None:
        """The relay's password: as configured, else the file broker-config wrote."""
        if self.mqtt.password is not None:
            return self.mqtt.password
        if self.mqtt_password_path.is_file():
            return read_secret_file(self.mqtt_password_path)
        return None

    @property
    def device_ca_cert_path(self) -> Path:
        return self.state_dir / "device-ca.crt"

    @property
    def device_ca_key_path(self) -> Path:
        return self.state_dir / "device-ca.key"

    @property
    def device_broker_url(self) -> str:
        return self.devices.broker_url or self.mqtt.broker_url


def host_replica_name() -> str:
    """This host's short name as a replica name (only the characters a replica may use)."""
    short = socket.gethostname().split(".")[0].lower()
    name = re.sub(r"[^a-z0-9_-]", "-", short).strip("-_")[:32]
    return name or "gateway"


def load_gateway_settings(path: Path | None = None) -> GatewaySettings:
    """``--config`` wins over ``ROOM_GATEWAY_CONFIG``; with neither, defaults and env only."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    return load_settings(GatewaySettings, "gateway", path)
