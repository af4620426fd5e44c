"""A real mosquitto per test: its own port, password file and ACL; really restarted or killed.

Two ways to get one:

- ``Broker(directory, users={...})`` writes a config as the deployment uses it: no anonymous
  access, users from ``mosquitto_passwd``, the ACL ``pattern readwrite rooms/%u/#`` (a device
  may use only its own topics) plus ``gateway`` with ``topic readwrite rooms/#``; optionally
  a TLS listener (``tls=`` a ``Pki``), with client certificates required (mTLS: the
  certificate's CN becomes the user name the ACL sees).
- ``Broker.from_config(path)`` runs mosquitto from exactly a config someone else wrote
  (``room-gateway broker-config --out DIR``), reading its first listener for the port.

``restart()`` comes back on the same port (clients reconnect to the same URL); ``kill()`` is
SIGKILL, as a crash. Retained messages and sessions survive a restart only with
``persistence=True`` (mosquitto writes its database at a clean stop).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tests.support.certs import Pki
from tests.support.processes import Service, free_port, wait_for_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
GATEWAY_USER = "gateway"
HOST = "127.0.0.1"
_LISTENER = re.compile(r"^\s*listener\s+(\d+)(?:\s+(\S+))?", re.MULTILINE)
_TLS = re.compile(r"^\s*certfile\s+\S", re.MULTILINE)


class Broker:
    def __init__(
        self,
        directory: Path,
        *,
        users: Mapping[str, str] | None = None,
        port: int | None = None,
        persistence: bool = False,
        tls: Pki | None = None,
        require_certificate: bool = False,
    ) -> None:
        """``users``: name -> password (device ids and ``gateway``)."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = HOST
        self.tls = tls is not None
        self.config = self.directory / "mosquitto.conf"
        _write_passwords(self.directory / "passwd", users or {})
        (self.directory / "acl").write_text(
            f"pattern readwrite rooms/%u/#\n\nuser {GATEWAY_USER}\ntopic readwrite rooms/#\n"
        )
        self.config.write_text(
            _config(self.directory, self.port, persistence, tls, require_certificate)
        )
        self._service: Service | None = None

    @classmethod
    def from_config(cls, config: Path, log_dir: Path | None = None) -> Broker:
        """A broker run from an existing config file, unchanged."""
        broker = cls.__new__(cls)
        text = Path(config).read_text()
        match = _LISTENER.search(text)
        if match is None:
            raise ValueError(f"{config}: no 'listener PORT' line")
        broker.directory = Path(log_dir or Path(config).parent)
        broker.port = int(match.group(1))
        broker.host = match.group(2) or HOST
        broker.tls = bool(_TLS.search(text))
        broker.config = Path(config)
        broker._service = None
        return broker

    @property
    def url(self) -> str:
        """What the agent's ``mqtt.broker_url`` is set to."""
        if self.tls:
            return f"mqtts://127.0.0.1:{self.port}"
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> Broker:
        log = self.directory / "mosquitto.log"
        self._service = Service([MOSQUITTO, "-c", str(self.config)], log).start()
        try:
            wait_for_port(self.port, self.host, timeout=10)
        except TimeoutError:
            self._service.kill()
            raise RuntimeError(f"mosquitto did not start:\n{self.log()}") from None
        return self

    def stop(self) -> None:
        """A clean stop (SIGTERM): mosquitto saves its database when persistent."""
        if self._service is not None:
            self._service.stop()

    def kill(self) -> None:
        """SIGKILL: what a crashed or powered-off broker does (nothing saved)."""
        if self._service is not None:
            self._service.kill()

    def set_password(self, user: str, password: str) -> None:
        """Add or change a user in the password file; effective at the next (re)start."""
        _write_passwords(self.directory / "passwd", {user: password}, create=False)

    def restart(self) -> Broker:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return self._service is not None and self._service.alive()

    @property
    def pid(self) -> int | None:
        """The running broker's process id (benchmarks read its CPU time)."""
        return self._service.pid if self.alive() and self._service is not None else None

    def log(self) -> str:
        return self._service.log() if self._service is not None else ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def _write_passwords(path: Path, users: Mapping[str, str], create: bool = True) -> None:
    if create:
        path.write_text("")
        path.chmod(0o600)
    for name, password in users.items():
        subprocess.run(
            ["mosquitto_passwd", "-b", str(path), name, password],
            check=True,
            capture_output=True,
        )


def _config(
    directory: Path, port: int, persistence: bool, tls: Pki | None, require_certificate: bool
) -> str:
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {directory / 'passwd'}",
        f"acl_file {directory / 'acl'}",
        f"persistence {'true' if persistence else 'false'}",
    ]
    if persistence:
        lines.append(f"persistence_location {directory}/")
    if os.geteuid() == 0:
        # Otherwise mosquitto drops to the 'mosquitto' user and cannot read 0600 files.
        lines.append("user root")
    lines.append(f"listener {port} {HOST}")
    if tls is not None:
        lines += [
            f"cafile {tls.ca_cert}",
            f"certfile {tls.server_cert}",
            f"keyfile {tls.server_key}",
        ]
        if require_certificate:
            lines += ["require_certificate true", "use_identity_as_username true"]
    return "\n".join(lines) + "\n"
