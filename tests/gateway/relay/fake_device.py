"""A room device played by an MQTT client with the device's own credentials, as the agent
connects: client id and user = the device id, a persistent session, its cmd and notify
subscribed; it answers commands as the test says."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.messages import DeviceState
from tests.gateway.conftest import steps
from tests.gateway.deployment import Deployment


class FakeDevice:
    """An MQTT client as the agent is one: client id and user = the device id, clean start
    off with a session expiry (commands sent while away are kept), subscribed to its cmd
    and notify. It answers each command with ``answer(command)`` -> (ok, reason)."""

    def __init__(self, deployment: Deployment, device_id: str) -> None:
        self.device_id = device_id
        self.port = deployment.broker_port
        self.received: list[dict[str, Any]] = []
        self.answer: Callable[[dict[str, Any]], tuple[bool, str | None]] | None = None
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self.client.username_pw_set(device_id, deployment.devices[device_id].password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._ready.set()
        self.client.on_message = self._on_message

    def connect(self) -> FakeDevice:
        self._ready.clear()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self.client.connect(
            "127.0.0.1", self.port, keepalive=10, clean_start=False, properties=properties
        )
        self.client.loop_start()
        assert self._ready.wait(10), "device not subscribed"
        return self

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, kind: str, payload: str, retain: bool = False) -> None:
        info = self.client.publish(f"rooms/{self.device_id}/{kind}", payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def state(self, **fields: Any) -> None:
        state = DeviceState(device_id=self.device_id, online=True, **fields)
        self.publish("state", state.model_dump_json(), retain=True)

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.received:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"device never got it; got {self.received}"
                self._changed.wait(remaining)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        assert not reason_code.is_failure, reason_code
        topics = [(f"rooms/{self.device_id}/{kind}", 1) for kind in ("cmd", "notify")]
        client.subscribe(topics)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        body["_topic"] = message.topic.rsplit("/", 1)[1]
        with self._changed:
            self.received.append(body)
            self._changed.notify_all()
        if body["_topic"] == "cmd" and self.answer is not None:
            ok, reason = self.answer(body)
            result = {"type": "command_result", "command_id": body["command_id"], "ok": ok}
            if reason is not None:
                result["reason"] = reason
            client.publish(f"rooms/{self.device_id}/events", json.dumps(result), qos=1)


def command(kind: str) -> Callable[[dict], bool]:
    return lambda message: message["_topic"] == "cmd" and message["type"] == kind


def notified(kind: str, session_id: str) -> Callable[[dict], bool]:
    return lambda m: m["_topic"] == "notify" and m["type"] == kind and m["session_id"] == session_id


def wait_for_step(deployed: Deployment, session_id: str, step: str, timeout: float = 10) -> dict:
    return deployed.gateway.wait_for_session(session_id, lambda s: step in steps(s), timeout)
