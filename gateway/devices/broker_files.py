"""The broker's files: a mosquitto config, its password file and its ACL, from the store.

``room-gateway broker-config --out DIR`` writes all three and records DIR; from then on
``device add`` and ``device revoke`` rewrite the password file and the ACL there (each
atomically: a broker never reads half a file) and reload the broker. The ACL names each
device: it may write only ``rooms/<its id>/state`` and ``.../events`` and read only ``.../cmd``
and ``.../notify`` (nothing else under its prefix: no retained junk); the gateway user may
use all of ``rooms/#``.
A revoked device is simply absent from both files.

Every client's MQTT client id is its user name (``use_username_as_clientid``): a device's
credentials can never take over another client's id (its persistent session, its queued
commands, its connection: the broker drops the older connection of an id). The gateway's
user is a name no device may have (gateway/devices/reserved.py), and a device row that
collides with it anyway is left out of both files rather than allowed to replace it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.devices import registry
from gateway.devices.reserved import is_reserved
from gateway.settings import BrokerSettings
from gateway.store import Connection
from protocol import topics
from runtime.files import write_atomically

CONFIG_NAME = "mosquitto.conf"
PASSWD_NAME = "passwd"
ACL_NAME = "acl"
PID_NAME = "mosquitto.pid"
MAX_PACKET_BYTES = 64 * 1024  # ids and states only: nothing on MQTT is larger
MAX_QUEUED_MESSAGES = 1000  # per offline client with a persistent session


@dataclass(frozen=True)
class BrokerFiles:
    """Where the broker's files are, and the gateway's own MQTT user."""

    directory: Path
    gateway_user: str
    gateway_password_hash: str | None
    # broker.replicas: more users with the gateway's password and ACL (not recorded: the
    # settings name them each time the files are written)
    replicas: tuple[str, ...] = ()

    @property
    def gateway_users(self) -> list[str]:
        """The gateway's own users: its own and one per replica (``<user>-<replica>``)."""
        return [self.gateway_user, *(f"{self.gateway_user}-{name}" for name in self.replicas)]

    @property
    def config(self) -> Path:
        return self.directory / CONFIG_NAME

    @property
    def passwd(self) -> Path:
        return self.directory / PASSWD_NAME

    @property
    def acl(self) -> Path:
        return self.directory / ACL_NAME

    @property
    def pid_file(self) -> Path:
        return self.directory / PID_NAME


def record(conn: Connection, files: BrokerFiles) -> None:
    conn.execute(
        "INSERT INTO broker_files (id, directory, gateway_user, gateway_password_hash,"
        " written_at) VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
        " directory = excluded.directory, gateway_user = excluded.gateway_user,"
        " gateway_password_hash = excluded.gateway_password_hash,"
        " written_at = excluded.written_at",
        (str(files.directory), files.gateway_user, files.gateway_password_hash, time.time()),
    )


def recorded(conn: Connection) -> BrokerFiles | None:
    row = conn.execute(
        "SELECT directory, gateway_user, gateway_password_hash FROM broker_files WHERE id = 1"
    ).fetchone()
    if row is None:
        return None
    return BrokerFiles(Path(row["directory"]), row["gateway_user"], row["gateway_password_hash"])


def render_config(files: BrokerFiles, settings: BrokerSettings, client_ca: Path | None) -> str:
    directory = files.directory
    lines = [
        "# Written by `room-gateway broker-config`. `room-gateway device add` and",
        "# `device revoke` rewrite passwd and acl here and reload the broker (SIGHUP).",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {files.passwd}",
        f"acl_file {files.acl}",
        f"pid_file {files.pid_file}",
        f"persistence {'true' if settings.persistence else 'false'}",
    ]
    if settings.persistence:
        lines += [f"persistence_location {directory / 'data'}/", "autosave_interval 60"]
    lines += [
        f"user {settings.user}",
        f"max_packet_size {MAX_PACKET_BYTES}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "",
        f"listener {settings.port} {settings.host}",
        # A client is the user it authenticated as, whatever client id it sends. (A
        # listener option: before any listener line it would open a default one on 1883.)
        "use_username_as_clientid true",
    ]
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        lines += [f"certfile {settings.tls_cert_file}", f"keyfile {settings.tls_key_file}"]
    if settings.require_certificate and client_ca is not None:
        # The certificate's CN is the MQTT user name, so the same ACL confines it.
        lines += [
            f"cafile {client_ca}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
    return "\n".join(lines) + "\n"


def _devices_apart_from_gateway(
    files: BrokerFiles, devices: list[registry.Device]
) -> list[registry.Device]:
    """A device never shares the gateway's broker entry (refused at `device add`; this
    also keeps out a row from before that check)."""
    return [device for device in devices if not is_reserved(device.id, files.gateway_users)]


def render_passwd(files: BrokerFiles, devices: list[registry.Device]) -> str:
    devices = _devices_apart_from_gateway(files, devices)
    entries = []
    if files.gateway_password_hash is not None:
        entries += [f"{user}:{files.gateway_password_hash}" for user in files.gateway_users]
    entries += [
        f"{device.id}:{device.mqtt_password_hash}"
        for device in devices
        if device.mqtt_password_hash is not None
    ]
    return "".join(f"{entry}\n" for entry in entries)


# What a device may do on each of its topics (protocol/topics.py): nothing else, and
# nothing under its prefix but these, or it could fill the broker with retained junk.
DEVICE_ACCESS: dict[topics.TopicKind, str] = {
    "state": "write",
    "events": "write",
    "cmd": "read",
    "notify": "read",
}


def render_acl(files: BrokerFiles, devices: list[registry.Device]) -> str:
    lines = [
        "# Each device exactly its own four topics (it writes state and events, reads cmd and",
        "# notify), so it can keep at most two retained messages here; the gateway (and its",
        "# replicas) all of rooms/#.",
    ]
    for user in files.gateway_users:
        lines += [f"user {user}", f"topic readwrite {topics.ROOT}/#", ""]
    for device in _devices_apart_from_gateway(files, devices):
        lines += [f"user {device.id}"]
        lines += [
            f"topic {DEVICE_ACCESS[kind]} {topics.topic(device.id, kind)}" for kind in topics.KINDS
        ]
        lines += [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_config(files: BrokerFiles, settings: BrokerSettings, client_ca: Path | None) -> None:
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = [
        write_atomically(
            files.config, render_config(files, settings, client_ca).encode(), parents=True
        )
    ]
    if settings.persistence:
        (files.directory / "data").mkdir(exist_ok=True, mode=0o700)
        written.append(files.directory / "data")
    _match_directory_owner(files.directory, written)


def write_credentials(files: BrokerFiles, devices: list[registry.Device]) -> None:
    """Rewrite passwd and acl for the active ``devices``; each file is replaced whole."""
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = [
        write_atomically(files.passwd, render_passwd(files, devices).encode(), parents=True),
        write_atomically(files.acl, render_acl(files, devices).encode(), parents=True),
    ]
    _match_directory_owner(files.directory, written)


def _match_directory_owner(directory: Path, paths: list[Path]) -> None:
    """Files an admin rewrites as root stay owned by whoever owns the broker directory.

    The broker runs as the gateway's user (systemd/mosquitto-room-audio.conf) and rereads
    passwd and acl on SIGHUP with that user's rights: root-owned 0600 files would lock it
    out of its own credentials after a `sudo room-gateway device add`.
    """
    if os.geteuid() != 0:
        return
    owner = directory.stat()
    for path in paths:
        os.chown(path, owner.st_uid, owner.st_gid)


def broker_pid(files: BrokerFiles) -> int | None:
    """The pid mosquitto wrote, if that process is still there."""
    try:
        pid = int(files.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid
