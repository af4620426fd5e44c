"""The technician's operations on devices, each complete: the store, the broker's files and
a reload of the broker, so that a device added or revoked is admitted or refused at the
broker and at ingest without restarting either.

Used by ``room-gateway device add|list|revoke`` and ``room-gateway broker-config``; the
running service needs none of it (ingest reads the store on every request).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from gateway.devices import broker_files, credentials, enrollment, registry
from gateway.devices.addresses import device_address_problems
from gateway.devices.broker_files import BrokerFiles
from gateway.devices.ca import CaError, DeviceCa
from gateway.devices.enrollment import Enrollment
from gateway.devices.reload import ReloadError, reload_broker
from gateway.devices.reserved import is_reserved
from gateway.devices.snippet import DeviceBundle, bundle_files
from gateway.keys import KeyFileError, load_key, public_text
from gateway.settings import GatewaySettings
from gateway.store.database import Database
from protocol.enrollment import DeviceFiles
from runtime.files import write_atomically

logger = logging.getLogger(__name__)
GATEWAY_CERT = "mqtt-client.crt"
GATEWAY_KEY = "mqtt-client.key"


class ProvisioningError(Exception):
    """Something a technician must fix; phrased for a person, never with a secret."""


@dataclass(frozen=True)
class Added:
    device: registry.Device
    bundle: DeviceBundle
    broker: str | None
    warnings: list[str]
    enrollment: Enrollment


@dataclass(frozen=True)
class BrokerWritten:
    files: BrokerFiles
    password_file: Path | None
    client_cert: Path | None
    broker: str


class Provisioning:
    def __init__(self, settings: GatewaySettings, db: Database) -> None:
        self.settings = settings
        self.db = db

    # --- devices ----------------------------------------------------------------------------

    def add(self, room_id: str, name: str | None, rotate: bool = False) -> Added:
        """Issue a device's credentials; refuses to replace active ones unless ``rotate``,
        and any id that is one of the gateway's own identities."""
        mqtt = self.settings.mqtt
        replicas = BrokerFiles(Path(), mqtt.username, None, self._replicas).gateway_users
        if is_reserved(room_id, [mqtt.client_id, *replicas]):
            raise ProvisioningError(
                f"{room_id!r} is reserved: the gateway's MQTT identities ('gateway',"
                " 'gateway-<replica>', gateway.mqtt.username and client_id) belong to no"
                " device; choose another id"
            )
        with self.db.transaction(write=False) as conn:
            existing = registry.get(conn, room_id)
        if existing is not None and existing.active and not rotate:
            raise ProvisioningError(
                f"device {room_id} exists already (--rotate issues new credentials)"
            )
        addresses = device_address_problems(self.settings)
        errors = [f"gateway.{p.key}: {p.text}" for p in addresses if p.severity == "error"]
        if errors:
            raise ProvisioningError("\n".join(errors))
        public_key = self._public_key()
        token = credentials.new_token()
        password: str | None = None
        cert_pem = key_pem = None
        fingerprint = None
        if self.settings.broker.require_certificate:
            issued = self._ca().issue_client(room_id)
            cert_pem, key_pem, fingerprint = issued.cert_pem, issued.key_pem, issued.fingerprint
        else:
            password = credentials.new_password()
        with self.db.transaction() as conn:
            device = registry.issue(
                conn,
                room_id,
                name,
                credentials.token_digest(token),
                credentials.mosquitto_hash(password) if password else None,
                fingerprint,
            )
        bundle = DeviceBundle(
            device_id=room_id,
            gateway_url=self.settings.devices.gateway_url,
            broker_url=self.settings.device_broker_url,
            public_key=public_key,
            token=token,
            password=password,
            cert_pem=cert_pem,
            key_pem=key_pem,
            broker_ca_pem=self._broker_ca(),
        )
        warnings = [f"gateway.{p.key}: {p.text}" for p in addresses if p.severity == "warning"]
        code = self._enrollment(bundle)
        return Added(device, bundle, self.sync_broker(), warnings, code)

    def _enrollment(self, bundle: DeviceBundle) -> Enrollment:
        """A one-time code for `room-agent enroll`, replacing the room's unused ones."""
        install_dir = self.settings.devices.install_dir
        files = bundle_files(bundle, Path(install_dir))
        sealed = DeviceFiles(
            device_id=bundle.device_id,
            install_dir=install_dir,
            files={name: data.decode() for name, data in files.items() if data is not None},
        )
        with self.db.transaction() as conn:
            return enrollment.create(conn, sealed, self.settings.devices.enrollment_ttl_s)

    def revoke(self, room_id: str) -> str | None:
        """Refuse the device from now on; returns what was done at the broker."""
        with self.db.transaction() as conn:
            if not registry.revoke(conn, room_id):
                raise ProvisioningError(
                    f"no active device {room_id} (see: room-gateway device list)"
                )
        return self.sync_broker()

    def list(self) -> list[registry.Device]:
        with self.db.transaction(write=False) as conn:
            return registry.list_devices(conn)

    # --- the broker ---------------------------------------------------------------------------

    def write_broker_config(self, out: Path) -> BrokerWritten:
        """The broker's config, password file and ACL in ``out``, remembered for later
        device changes; the gateway's own MQTT password is made on first use."""
        settings = self.settings
        password, password_file = self._gateway_password()
        client_ca = client_cert = None
        if settings.broker.require_certificate:
            ca = self._ca()
            client_ca = settings.device_ca_cert_path
            client_cert = self._gateway_certificate(ca)
        files = BrokerFiles(
            directory=out.resolve(),
            gateway_user=settings.mqtt.username,
            gateway_password_hash=credentials.mosquitto_hash(password.get_secret_value()),
            replicas=self._replicas,
        )
        try:
            broker_files.write_config(files, settings.broker, client_ca)
        except OSError as exc:
            raise ProvisioningError(f"{out}: cannot write ({exc.strerror})") from None
        with self.db.transaction() as conn:
            broker_files.record(conn, files)
        return BrokerWritten(files, password_file, client_cert, self.sync_broker() or "")

    def sync_broker(self) -> str | None:
        """Rewrite the recorded broker's passwd and acl from the store and reload it;
        None when ``broker-config`` was never run (the broker is managed elsewhere)."""
        with self.db.transaction(write=False) as conn:
            files = broker_files.recorded(conn)
            devices = registry.active(conn)
        if files is None:
            return None
        files = dataclasses.replace(files, replicas=self._replicas)
        try:
            broker_files.write_credentials(files, devices)
            return reload_broker(files, self.settings.broker.reload_command)
        except OSError as exc:
            raise ProvisioningError(f"{files.directory}: cannot write ({exc.strerror})") from None
        except ReloadError as exc:
            raise ProvisioningError(str(exc)) from None

    # --- helpers ------------------------------------------------------------------------------

    @property
    def _replicas(self) -> tuple[str, ...]:
        return tuple(self.settings.broker.replicas)

    def _public_key(self) -> str:
        try:
            return public_text(load_key(self.settings.sealing_key_path))
        except KeyFileError as exc:
            raise ProvisioningError(str(exc)) from None

    def _ca(self) -> DeviceCa:
        try:
            return DeviceCa.load_or_create(
                self.settings.device_ca_cert_path, self.settings.device_ca_key_path
            )
        except CaError as exc:
            raise ProvisioningError(str(exc)) from None

    def _broker_ca(self) -> bytes | None:
        path = self.settings.devices.broker_ca_file
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ProvisioningError(f"{path}: cannot read ({exc.strerror})") from None

    def _gateway_password(self) -> tuple[SecretStr, Path | None]:
        """The configured password, else the one in state_dir, else a new one written there."""
        existing = self.settings.mqtt_password
        if existing is not None:
            return existing, None
        path = self.settings.mqtt_password_path
        password = SecretStr(credentials.new_password())
        write_atomically(path, (password.get_secret_value() + "\n").encode(), 0o600, parents=True)
        return password, path

    def _gateway_certificate(self, ca: DeviceCa) -> Path:
        cert = self.settings.state_dir / GATEWAY_CERT
        if not cert.exists():
            issued = ca.issue_client(self.settings.mqtt.username)
            write_atomically(
                self.settings.state_dir / GATEWAY_KEY, issued.key_pem, 0o600, parents=True
            )
            write_atomically(cert, issued.cert_pem, 0o644, parents=True)
        return cert
