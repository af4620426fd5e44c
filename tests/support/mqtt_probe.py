"""An MQTT client on the other side of the broker, for tests: what a subscriber really sees.

It plays the gateway (user ``gateway``, allowed everywhere under rooms/) or any other user:
it records every message on its subscriptions with the retain flag, waits for the one a
test expects, and publishes with QoS 1 waiting for the broker's PUBACK (MQTT 5, so an ACL
denial comes back as reason code 0x87 instead of silence).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel

from tests.support.certs import ClientCert
from tests.support.mosquitto import Broker


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.payload)


class Probe:
    def __init__(
        self,
        broker: Broker,
        user: str = "gateway",
        password: str = "gateway-secret",
        topics: Sequence[str] = ("rooms/#",),
        ca_file: str | None = None,
        cert: ClientCert | None = None,
    ) -> None:
        """With ``cert`` (mutual TLS) the certificate's CN is the user the broker sees."""
        self.topics = list(topics)
        self.messages: list[Received] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"probe-{user}-{id(self):x}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(user, password)
        if ca_file is not None:
            self.client.tls_set(
                ca_certs=ca_file,
                certfile=str(cert.cert) if cert else None,
                keyfile=str(cert.key) if cert else None,
            )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("probe: not subscribed within 10 s")

    def wait_for(
        self, predicate: Callable[[Received], bool], timeout: float = 10.0, after: int = 0
    ) -> Received:
        """The first message (from index ``after`` on) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages[after:]:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(m.topic, m.payload[:200]) for m in self.messages[after:]]
                    raise AssertionError(f"no matching message within {timeout} s; saw {seen}")
                self._changed.wait(remaining)

    def on(self, topic: str, after: int = 0, **fields: object) -> Callable[[Received], bool]:
        """A predicate: ``topic`` with a JSON payload whose ``fields`` have these values."""

        def matches(message: Received) -> bool:
            if message.topic != topic:
                return False
            body = message.json()
            return all(body.get(name) == value for name, value in fields.items())

        return matches

    def publish(
        self, topic: str, payload: BaseModel | dict | bytes | str, retain: bool = False
    ) -> ReasonCode | None:
        """QoS 1; returns the PUBACK reason code (None when the broker sent none)."""
        if isinstance(payload, BaseModel):
            payload = payload.model_dump_json()
        elif isinstance(payload, dict):
            payload = json.dumps(payload)
        acked = threading.Event()
        codes: dict[int, ReasonCode] = {}

        def on_publish(client, userdata, mid, reason_code, properties) -> None:
            codes[mid] = reason_code
            acked.set()

        self.client.on_publish = on_publish
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if not acked.wait(10):
            raise TimeoutError(f"no PUBACK for {topic} within 10 s")
        return codes.get(info.mid)

    def count(self) -> int:
        with self._changed:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subscribed.set()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(
                Received(message.topic, bytes(message.payload), bool(message.retain))
            )
            self._changed.notify_all()
