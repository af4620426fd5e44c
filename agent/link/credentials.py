"""The device's secrets, re-read while the agent runs: after `room-gateway device add
--rotate` (or a new enrollment) the agent picks up the new ingest token and MQTT password
without a restart, on SIGHUP (`systemctl reload room-agent`) and whenever the gateway or
the broker refuses the old ones.

They are read where they were found at start: the settings' value or ``*_file``, else the
systemd credential, taking whichever copy changed last of systemd's (made when the unit
started) and the installed file in /etc/room-audio/credentials (which a rotation replaces;
enrollment makes it readable by the agent's group). Never logged; a change is logged as
such ("ingest token changed"), by name only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pydantic import SecretStr

from agent.settings import (
    INGEST_TOKEN_CREDENTIAL,
    MQTT_PASSWORD_CREDENTIAL,
    AgentSettings,
)
from runtime.secrets import credential_copies
from runtime.settings import ConfigError

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 1.0  # refusals from several workers at once make one re-read


class DeviceCredentials:
    def __init__(self, settings: AgentSettings, load: Callable[[], AgentSettings]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._token = settings.link.ingest_token
        self._password = settings.mqtt.password
        self._read_at = 0.0
        self.on_token: list[Callable[[SecretStr], None]] = []
        self.on_password: list[Callable[[SecretStr], None]] = []

    @property
    def ingest_token(self) -> SecretStr | None:
        with self._lock:
            return self._token

    @property
    def mqtt_password(self) -> SecretStr | None:
        with self._lock:
            return self._password

    def reread(self, why: str, force: bool = False) -> bool:
        """Read the secrets again; True when one changed (its listeners were told).
        Refusals come in bursts (several workers): one re-read a second unless ``force``."""
        with self._lock:
            if not force and time.monotonic() - self._read_at < MIN_INTERVAL_S:
                return False
            self._read_at = time.monotonic()
        try:
            fresh = self._load()
        except ConfigError as exc:
            log.warning("credentials: not re-read (%s): %s", why, str(exc).splitlines()[0])
            return False
        token = _from_credential(fresh, "link") or fresh.link.ingest_token
        password = _from_credential(fresh, "mqtt") or fresh.mqtt.password
        with self._lock:
            token_changed = token is not None and token != self._token
            password_changed = password is not None and password != self._password
            if token_changed:
                self._token = token
            if password_changed:
                self._password = password
        if token_changed and token is not None:
            log.info("credentials: ingest token changed (%s); using the new one", why)
            for hook in self.on_token:
                hook(token)
        if password_changed and password is not None:
            log.info("credentials: MQTT password changed (%s); using the new one", why)
            for hook in self.on_password:
                hook(password)
        if not (token_changed or password_changed):
            log.info("credentials: re-read (%s): unchanged", why)
        return token_changed or password_changed


def _from_credential(settings: AgentSettings, table: str) -> SecretStr | None:
    """The newest copy of a secret the settings took from a systemd credential (or its
    installed file); None when it comes from the settings themselves (a value, a file)."""
    if table == "link":
        given, file, name = (
            settings.link.ingest_token,
            settings.link.ingest_token_file,
            INGEST_TOKEN_CREDENTIAL,
        )
    else:
        given, file, name = (
            settings.mqtt.password,
            settings.mqtt.password_file,
            MQTT_PASSWORD_CREDENTIAL,
        )
    if file is not None or given is None:
        return None
    copies = credential_copies(name)
    return copies[0] if given in copies else None
