"""The demo checks its own privacy promise: the clinician's and client's names, given to the
gateway's partner API only, never go over MQTT and never reach a log.

A probe subscribes to ``rooms/#`` as the gateway's MQTT user (its own client id, so the
gateway's session is untouched) from before the room device connects, and records every
message the broker carries; at the end the messages and every process's log are searched
for each name.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from pydantic import SecretStr

from protocol import topics
from runtime.mqtt import BrokerSettings, new_client
from runtime.mqtt_connection import ConnectionSupervisor

PROBE_CLIENT_ID = "room-demo-probe"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes


class MqttProbe:
    """Every message on rooms/#, recorded as the gateway user receives it."""

    def __init__(self, broker_url: str, username: str, password: str) -> None:
        settings = BrokerSettings(broker_url=broker_url)
        self._client = new_client(settings, PROBE_CLIENT_ID, username, SecretStr(password))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._connection = ConnectionSupervisor(
            self._client, settings, log, "privacy probe", clean_start=True, properties=lambda: None
        )
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self.subscribed = threading.Event()

    def start(self) -> MqttProbe:
        self._connection.start()
        return self

    def stop(self) -> None:
        self._connection.stop(timeout_s=5)
        self._connection.close()

    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def seen(self, topic: str, needle: bytes) -> bool:
        return any(m.topic == topic and needle in m.payload for m in self.messages)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags, reason_code, props) -> None:
        if not reason_code.is_failure:
            client.subscribe(f"{topics.ROOT}/#", qos=1)
            self.subscribed.set()
        self._connection.answered(reason_code)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags, reason_code, p) -> None:
        self._connection.dropped(reason_code)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append(Message(message.topic, bytes(message.payload)))


@dataclass(frozen=True)
class PrivacyReport:
    messages: int
    logs: int
    leaks: list[str]  # "<name #n> in <where>", never the name itself


def check(names: tuple[str, ...], messages: list[Message], logs: list[Path]) -> PrivacyReport:
    """Search the MQTT traffic and the logs for each name (case-insensitive)."""
    leaks = []
    carried = b"\n".join(m.topic.encode() + b" " + m.payload for m in messages).lower()
    texts = {log.name: log.read_text(errors="replace").lower() for log in logs if log.exists()}
    for number, name in enumerate(names, start=1):
        needle = name.lower()
        if needle.encode() in carried:
            leaks.append(f"name #{number} over MQTT")
        leaks += [f"name #{number} in {where}" for where, text in texts.items() if needle in text]
    return PrivacyReport(messages=len(messages), logs=len(texts), leaks=leaks)
