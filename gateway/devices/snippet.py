"""What a technician puts on a room device: its ``[agent]`` settings and credential files.

The secrets are only in files, never in the settings, so agent.toml can be shown, mailed
and versioned. The ingest token and MQTT password are named ``ingest-token`` and
``mqtt-password``: room-agent.service loads them with ``LoadCredential=`` from
``/etc/room-audio/credentials`` (root-only files; the agent's user reads systemd's copy),
so agent.toml does not name them. Certificates and the broker's CA are named by where they
will be on the device (``devices.install_dir``, or ``--install-dir``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runtime.files import write_atomically

TOKEN_FILE = "ingest-token"
PASSWORD_FILE = "mqtt-password"
CERT_FILE = "device.crt"
KEY_FILE = "device.key"
BROKER_CA_FILE = "broker-ca.pem"
CONFIG_FILE = "agent.toml"


@dataclass(frozen=True)
class DeviceBundle:
    """Everything one device gets; secrets included, so only ever written 0600."""

    device_id: str
    gateway_url: str
    broker_url: str
    public_key: str
    token: str
    password: str | None
    cert_pem: bytes | None
    key_pem: bytes | None
    broker_ca_pem: bytes | None

    def __repr__(self) -> str:  # never show the secrets
        return f"DeviceBundle(device_id={self.device_id!r})"


def render_agent_config(bundle: DeviceBundle, install_dir: Path) -> str:
    def path(name: str) -> str:
        return _quote(str(install_dir / name))

    secrets = TOKEN_FILE + (f" and {PASSWORD_FILE}" if bundle.password is not None else "")
    lines = [
        f"# room-agent settings for device {bundle.device_id} (room-gateway device add):",
        "# /etc/room-audio/agent.toml on the device. The other files go to",
        f"# {install_dir} (mode 0600); room-agent.service loads {secrets}",
        "# from there as systemd credentials (outside systemd: CREDENTIALS_DIRECTORY=that dir).",
        "[agent]",
        f"device_id = {_quote(bundle.device_id)}",
        f"gateway_public_key = {_quote(bundle.public_key)}",
        "",
        "[agent.link]",
        f"gateway_url = {_quote(bundle.gateway_url)}",
        "",
        "[agent.mqtt]",
        f"broker_url = {_quote(bundle.broker_url)}",
    ]
    if bundle.broker_ca_pem is not None:
        lines.append(f"ca_file = {path(BROKER_CA_FILE)}")
    if bundle.cert_pem is not None:
        lines += [
            "# The key must be readable by the agent's user (room-agent).",
            f"client_cert_file = {path(CERT_FILE)}",
            f"client_key_file = {path(KEY_FILE)}",
        ]
    return "\n".join(lines) + "\n"


def bundle_files(bundle: DeviceBundle, install_dir: Path) -> dict[str, bytes | None]:
    """agent.toml and the credential files, by name (None: not for this kind of device)."""
    config = render_agent_config(bundle, install_dir)
    return {
        TOKEN_FILE: (bundle.token + "\n").encode(),
        PASSWORD_FILE: (bundle.password + "\n").encode() if bundle.password else None,
        CERT_FILE: bundle.cert_pem,
        KEY_FILE: bundle.key_pem,
        BROKER_CA_FILE: bundle.broker_ca_pem,
        CONFIG_FILE: config.encode(),
    }


def write_bundle(bundle: DeviceBundle, out: Path, install_dir: Path) -> str:
    """Write agent.toml and the credential files into ``out``; returns agent.toml's text."""
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = bundle_files(bundle, install_dir)
    for name, data in files.items():
        target = out / name
        if data is None:
            target.unlink(missing_ok=True)  # left from an earlier kind of credentials
        else:
            write_atomically(target, data, 0o600, parents=True)
    return (files[CONFIG_FILE] or b"").decode()


def _quote(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text)
