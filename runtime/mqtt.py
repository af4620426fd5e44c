"""How both programs reach the MQTT broker: the same settings, URL form, TLS and client.

The device and the gateway connect alike (MQTT 5, a persistent session, user name and
password or a client certificate, optional TLS); only what they do once connected differs.
Each side subclasses BrokerSettings for its own extras and credential name.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from runtime.secrets import resolve_secret
from runtime.tls import trusting

BROKER_URL_PATTERN = r"^(mqtts?://[^\s/?#:@]+(:\d{1,5})?/?)?$"


class BrokerUnavailable(Exception):
    """No usable connection to the broker; the message is a code, never a secret."""


class BrokerSettings(BaseModel):
    """The connection to the broker; an empty broker_url means no MQTT at all."""

    model_config = ConfigDict(extra="forbid")
    # The name of the systemd credential (LoadCredential=) holding the password.
    password_credential: ClassVar[str] = "mqtt-password"

    broker_url: str = Field(
        default="",
        pattern=BROKER_URL_PATTERN,
        description="mqtt://host[:port] or mqtts://host[:port], or empty",
    )
    password: SecretStr | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=3600, ge=0, le=7 * 86_400)
    reconnect_min_s: float = Field(default=1.0, gt=0, le=60)
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _resolve_password(self) -> Self:
        self.password = resolve_secret(
            self.password,
            "password" in self.model_fields_set,
            self.password_file,
            self.password_credential,
            "password",
        )
        tls_files = (self.ca_file, self.client_cert_file, self.client_key_file)
        if any(tls_files) and not self.broker_url.startswith("mqtts://"):
            raise ValueError("ca_file and client certificates need an mqtts:// broker_url")
        if self.client_key_file is not None and self.client_cert_file is None:
            raise ValueError("client_key_file needs client_cert_file")
        return self


def broker_address(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:port]`` / ``mqtts://host[:port]`` -> (host, port, tls)."""
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("broker_url must be mqtt://host[:port] or mqtts://host[:port]")
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


def tls_context(settings: BrokerSettings) -> ssl.SSLContext:
    """The broker's CA (else the system's) and, for mutual TLS, our certificate."""
    context = trusting(settings.ca_file)
    if settings.client_cert_file is not None:
        key = str(settings.client_key_file) if settings.client_key_file else None
        context.load_cert_chain(str(settings.client_cert_file), key)
    return context


def new_client(
    settings: BrokerSettings,
    client_id: str,
    username: str,
    password: SecretStr | None,
) -> mqtt.Client:
    """An MQTT 5 client with our credentials and, for mqtts://, TLS; not yet connected.
    It never reconnects by itself: runtime/mqtt_connection.py does, for everyone."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=False,
    )
    secret = password.get_secret_value() if password is not None else None
    client.username_pw_set(username, secret)
    if broker_address(settings.broker_url)[2]:
        client.tls_set_context(tls_context(settings))
    return client


def persistent_session(settings: BrokerSettings) -> Properties:
    """CONNECT properties asking the broker to keep our session (and QoS 1 messages sent
    while we are away) for session_expiry_s; used with clean_start=False."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = settings.session_expiry_s
    return properties


@dataclass
class ConnectAnswer:
    """What one CONNECT (and optionally one SUBSCRIBE) to a broker was answered."""

    connack: ReasonCode | None = None
    properties: Properties | None = None
    suback: list[ReasonCode] = field(default_factory=list)
    error: str | None = None  # the connection could not be made or timed out: why

    @property
    def shared_subscriptions(self) -> bool:
        """The broker says it has shared subscriptions (MQTT 5: absent means yes) and did
        not refuse the probe's (SUBACK 0x9E, "Shared Subscriptions not supported")."""
        offered = getattr(self.properties, "SharedSubscriptionAvailable", 1)
        return offered != 0 and not any(code.is_failure for code in self.suback)


def connect_once(
    settings: BrokerSettings,
    client_id: str,
    username: str,
    password: SecretStr | None,
    *,
    subscribe: str | None = None,
    timeout_s: float = 5.0,
) -> ConnectAnswer:
    """Connect with a clean, non-persistent session, optionally subscribe once, disconnect:
    a diagnostic's look at the broker, driven on this thread (no network thread)."""
    host, port, _ = broker_address(settings.broker_url)
    client = new_client(settings, client_id, username, password)
    client.connect_timeout = timeout_s
    answer = ConnectAnswer()
    subscribed = threading.Event()

    def on_connect(
        c: mqtt.Client, u: Any, f: mqtt.ConnectFlags, code: ReasonCode, p: Properties | None
    ) -> None:
        answer.connack, answer.properties = code, p
        if subscribe is not None and not code.is_failure:
            c.subscribe(subscribe, qos=1)
        else:
            subscribed.set()

    def on_subscribe(
        c: mqtt.Client, u: Any, m: int, codes: list[ReasonCode], p: Properties | None
    ) -> None:
        answer.suback = list(codes)
        subscribed.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    deadline = time.monotonic() + timeout_s
    try:
        client.connect(host, port, keepalive=10, clean_start=True)
        while not subscribed.is_set() and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        answer.error = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
        return answer
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        sock = client.socket()
        if sock is not None:
            sock.close()
    if answer.connack is None:
        answer.error = answer.error or f"no answer to CONNECT within {timeout_s:g} s"
    elif not subscribed.is_set():
        answer.error = f"no answer to SUBSCRIBE within {timeout_s:g} s"
    return answer
