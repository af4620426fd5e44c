"""A gateway deployed the way a technician does it, for tests: ``keygen``, ``broker-config``,
``device add`` for each room, mosquitto run from exactly the files broker-config wrote,
and ``room-gateway serve`` with its relay on that broker, all real processes.

Also what a room device holds: its credentials (read from the files ``device add`` wrote)
and a way to seal chunks to the gateway's key as the agent does, for tests that play the
device themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from gateway.keys import load_key
from protocol.envelope import ChunkHeader, seal_chunk
from protocol.ingest import SEALED_CHUNK_CONTENT_TYPE, chunk_path, close_path
from protocol.manifest import ManifestChunk, SessionManifest
from runtime.codec import encode
from tests.gateway.conftest import GatewayProcess, SimulatorProcess
from tests.support.certs import ClientCert, Pki
from tests.support.mosquitto import Broker
from tests.support.processes import free_port

RATE = 16_000
# Replica users (gateway-<name>) tests watch rooms/# as, one per simultaneous watcher.
OBSERVERS = ["probe", "bench", "sub"]


@dataclass(frozen=True)
class DeviceFiles:
    """What ``device add`` wrote for one device."""

    device_id: str
    directory: Path

    @property
    def config(self) -> dict:
        return tomllib.loads((self.directory / "agent.toml").read_text())["agent"]

    @property
    def token(self) -> str:
        return (self.directory / "ingest-token").read_text().strip()

    @property
    def password(self) -> str:
        return (self.directory / "mqtt-password").read_text().strip()

    @property
    def certificate(self) -> ClientCert:
        return ClientCert(self.directory / "device.crt", self.directory / "device.key")


@dataclass(frozen=True)
class SealedChunk:
    seq: int
    blob: bytes
    pcm: np.ndarray
    start_s: float

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.blob).hexdigest()

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / RATE

    def listed(self) -> ManifestChunk:
        return ManifestChunk(
            seq=self.seq,
            sha256=self.sha256,
            bytes=len(self.blob),
            start_s=self.start_s,
            duration_s=self.duration_s,
        )


class Deployment:
    def __init__(
        self,
        root: Path,
        blueprint_url: str,
        rooms: tuple[str, ...],
        tls: Pki | None = None,
        gateway_url: str | None = None,
        replicas: tuple[str, ...] = (),
        **env: str,
    ) -> None:
        """With ``tls``: the broker listens with TLS (``tls``'s server certificate) and
        requires client certificates from the gateway's device CA (mutual TLS).
        ``gateway_url``: what devices are given (a load balancer); default the gateway.
        ``replicas``: names of gateway replicas (each logs in as gateway-<name>)."""
        self.root = root
        self.broker_port = free_port()
        self.broker_dir = root / "broker"
        state_dir = root / "gateway"
        broker_url = f"mqtt://127.0.0.1:{self.broker_port}"
        tls_env = {}
        if tls is not None:
            broker_url = f"mqtts://127.0.0.1:{self.broker_port}"
            tls_env = {
                "ROOM_GATEWAY_BROKER__TLS_CERT_FILE": str(tls.server_cert),
                "ROOM_GATEWAY_BROKER__TLS_KEY_FILE": str(tls.server_key),
                "ROOM_GATEWAY_BROKER__REQUIRE_CERTIFICATE": "true",
                "ROOM_GATEWAY_DEVICES__BROKER_CA_FILE": str(tls.ca_cert),
                "ROOM_GATEWAY_MQTT__CA_FILE": str(tls.ca_cert),
                "ROOM_GATEWAY_MQTT__CLIENT_CERT_FILE": str(state_dir / "mqtt-client.crt"),
                "ROOM_GATEWAY_MQTT__CLIENT_KEY_FILE": str(state_dir / "mqtt-client.key"),
            }
        settings_env = {
            **tls_env,
            "ROOM_GATEWAY_MQTT__BROKER_URL": broker_url,
            "ROOM_GATEWAY_MQTT__RECONNECT_MIN_S": "1",
            "ROOM_GATEWAY_MQTT__RECONNECT_MAX_S": "1",
            "ROOM_GATEWAY_BROKER__HOST": "127.0.0.1",
            "ROOM_GATEWAY_BROKER__PORT": str(self.broker_port),
            "ROOM_GATEWAY_BROKER__USER": "root" if os.geteuid() == 0 else "mosquitto",
            # Tests watch rooms/# as a replica would: the broker makes the client id the user
            # name, so a probe logged in as `gateway` would knock the relay off.
            "ROOM_GATEWAY_BROKER__REPLICAS": json.dumps([*OBSERVERS, *replicas]),
            **env,
        }
        self.gateway = GatewayProcess(state_dir, blueprint_url, settings_env)
        self.gateway.env["ROOM_GATEWAY_DEVICES__GATEWAY_URL"] = gateway_url or self.gateway.url
        self.gateway.cli("keygen")
        self.gateway.cli("broker-config", "--out", str(self.broker_dir))
        self.devices = {room: self.add_device(room) for room in rooms}
        self.broker = Broker.from_config(self.broker_dir / "mosquitto.conf")
        self.key = load_key(self.gateway.state_dir / "sealing-key.pem")
        self.people = ("clinician-1", "client-1")  # external ids sessions are started for

    def add_device(self, room: str, *extra: str) -> DeviceFiles:
        directory = self.root / "devices" / room
        self.gateway.cli(
            "device", "add", room, "--out", str(directory), "--install-dir", str(directory),
            *extra,
        )  # fmt: skip
        return DeviceFiles(room, directory)

    @property
    def gateway_password(self) -> str:
        return (self.gateway.state_dir / "mqtt-password").read_text().strip()

    @property
    def observer(self) -> str:
        """The user a test watches rooms/# as (with ``gateway_password``): a replica's."""
        return self.watcher("probe")

    def watcher(self, name: str) -> str:
        """Another of those users, for a second watcher at the same time (OBSERVERS)."""
        assert name in OBSERVERS, name
        return f"gateway-{name}"

    def start(self) -> Deployment:
        self.broker.start()
        self.gateway.start()
        return self

    def stop(self) -> None:
        self.gateway.stop()
        self.broker.kill()

    def with_people(self, webhook_sink: SimulatorProcess, name: str) -> Deployment:
        """Ready for one test of a module's deployment: the (reset) simulator calls this
        gateway back, and people new to it, named after the test, are PUT."""
        webhook_sink.set_callback(self.gateway.webhook_url)
        self.people = (f"clin-{name}", f"client-{name}")
        self.gateway.put_people(*self.people)
        return self

    # --- playing a device over HTTPS ------------------------------------------------------

    def seal(
        self,
        device: str,
        session_id: str,
        seq: int,
        pcm: np.ndarray,
        start_s: float = 0.0,
        recipient: X25519PublicKey | None = None,
    ) -> SealedChunk:
        """A chunk as the agent seals it: FLAC, header with digest and timing; to the
        gateway's key unless another ``recipient`` is given."""
        audio = encode(pcm, "flac")
        header = ChunkHeader(
            device_id=device,
            session_id=session_id,
            seq=seq,
            codec="flac",
            start_s=start_s,
            duration_s=len(pcm) / RATE,
            sha256=hashlib.sha256(audio).hexdigest(),
        )
        sealed = seal_chunk(header, audio, recipient or self.key.public_key())
        return SealedChunk(seq, sealed, pcm, start_s)

    def put_chunk(
        self,
        device: str,
        session_id: str,
        chunk: SealedChunk,
        token: str | None = None,
        path_device: str | None = None,
    ) -> httpx.Response:
        """As ``device`` with its token; ``token=""`` sends none."""
        token = token if token is not None else self.devices[device].token
        headers = {"Content-Type": SEALED_CHUNK_CONTENT_TYPE}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.put(
            self.gateway.url + chunk_path(path_device or device, session_id, chunk.seq),
            content=chunk.blob,
            headers=headers,
            timeout=30,
        )

    def close(
        self, device: str, session_id: str, chunks: list[SealedChunk], reason: str = "stopped"
    ) -> httpx.Response:
        manifest = SessionManifest(
            device_id=device,
            session_id=session_id,
            reason=reason,
            chunks=[chunk.listed() for chunk in chunks],
        )
        return httpx.post(
            self.gateway.url + close_path(device, session_id),
            content=manifest.model_dump_json(),
            headers={
                "Authorization": f"Bearer {self.devices[device].token}",
                "Content-Type": "application/json",
            },
            timeout=30,
        )


def tone(seconds: float, hz: float = 220.0, seed: int = 0) -> np.ndarray:
    """Speech-like enough for the simulator (it decodes; it does not listen)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    wave = 0.3 * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(len(t))
    return (wave * 32767).astype(np.int16)
