"""No device may act as another, against a real mosquitto run from broker-config's files and
a real `room-gateway serve` relaying through it (issue 10, "Identity").

- A device's credentials with another client's id (another room's, the gateway's) must not
  take over that client's persistent session nor knock it off the broker.
- `device add` refuses every id that is one of the gateway's own MQTT identities, so no
  device can get the gateway's broker entry and ``rooms/#`` ACL.
"""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.devices.broker_files import BrokerFiles, render_acl, render_passwd
from gateway.devices.registry import Device
from tests.gateway.conftest import SimulatorProcess
from tests.gateway.deployment import Deployment
from tests.support.mqtt_probe import Probe

pytestmark = pytest.mark.timeout(120)


class Session:
    """One MQTT 5 connection with a chosen client id and a persistent session; records its
    CONNACK and whether the broker dropped it. Never reconnects by itself."""

    def __init__(self, deployment: Deployment, user: str, password: str, client_id: str):
        self.session_present: bool | None = None
        self.refused: bool | None = None
        self.dropped = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self._connack = threading.Event()
        self._changed = threading.Condition()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self.dropped.set()
        self.client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self.client.connect(
            "127.0.0.1",
            deployment.broker_port,
            keepalive=10,
            clean_start=False,
            properties=properties,
        )
        self.client.loop_start()
        assert self._connack.wait(10), "no CONNACK"

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10), "no SUBACK"

    def round_trip(self, topic: str) -> bool:
        """A QoS 1 publish answered by the broker: this connection is still the live one."""
        acked = threading.Event()
        self.client.on_publish = lambda *args: acked.set()
        self.client.publish(topic, b"{}", qos=1)
        return acked.wait(5) and not self.dropped.is_set()

    def wait_for(self, topic: str, needle: bytes, timeout: float = 15.0) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: any(t == topic and needle in p for t, p in self.messages), timeout
            )

    def close(self, forget: bool = False) -> None:
        """``forget``: end the session too (MQTT 5 session expiry 0 at DISCONNECT)."""
        properties = None
        if forget:
            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = 0
        self.client.disconnect(properties=properties)
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.session_present = bool(flags.session_present)
        self.refused = reason_code.is_failure
        self._connack.set()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, bytes(message.payload)))
            self._changed.notify_all()


@pytest.fixture
def deployed(tmp_path: Path, sim: SimulatorProcess):
    deployment = Deployment(tmp_path, sim.url, ("room-1", "room-2")).start()
    yield deployment
    deployment.stop()


def test_a_device_cannot_take_over_another_clients_id(deployed: Deployment) -> None:
    room1 = deployed.devices["room-1"].password
    victim = Session(deployed, "room-2", deployed.devices["room-2"].password, "room-2")
    victim.subscribe("rooms/room-2/cmd")
    assert not victim.refused

    # room-1's credentials, claiming room-2's client id, then the gateway's (old and new).
    for stolen in ("room-2", "room-gateway", "gateway"):
        attacker = Session(deployed, "room-1", room1, stolen)
        assert not attacker.refused, stolen
        assert not attacker.session_present, f"{stolen}: the broker handed over its session"
        assert victim.round_trip("rooms/room-2/state"), f"{stolen}: room-2 was knocked off"
        attacker.close(forget=True)  # room-1's own session must not answer the next one

    # The gateway was never knocked off either: a start still reaches room-2 at once.
    deployed.gateway.put_people(*deployed.people)
    session_id = deployed.gateway.start_session("room-2", *deployed.people)
    assert victim.wait_for("rooms/room-2/cmd", session_id.encode()), deployed.gateway.log()
    assert not victim.dropped.is_set()
    victim.close()


@pytest.mark.parametrize("reserved", ["gateway", "gateway-2", "GATEWAY", "room-gateway"])
def test_device_add_refuses_the_gateways_identities(deployed: Deployment, reserved: str) -> None:
    passwd = (deployed.broker_dir / "passwd").read_text()
    result = deployed.gateway.cli("device", "add", reserved, check=False)
    assert result.returncode == 2, result.stdout
    assert "is reserved" in result.stderr and "Traceback" not in result.stderr
    assert (deployed.broker_dir / "passwd").read_text() == passwd
    # The real gateway still authenticates and is still the only one with rooms/#.
    gateway = Session(deployed, "gateway", deployed.gateway_password, "gateway")
    assert not gateway.refused
    gateway.close()
    listed = deployed.gateway.cli("device", "list").stdout
    assert reserved not in listed.split()


def test_a_device_row_named_like_the_gateway_never_reaches_the_brokers_files() -> None:
    """A row from before the check (or written by hand) cannot replace the gateway's entry."""
    files = BrokerFiles(Path("/nonexistent"), "gateway", "$7$gateway-hash")
    rows = [
        Device("gateway", None, 0.0, 1.0, None, True, "$7$device-hash", None),
        Device("room-1", None, 0.0, 1.0, None, True, "$7$room-hash", None),
    ]
    assert render_passwd(files, rows) == "gateway:$7$gateway-hash\nroom-1:$7$room-hash\n"
    acl = render_acl(files, rows)
    assert acl.count("user gateway") == 1 and "user room-1" in acl


def test_a_device_cannot_keep_more_than_its_own_retained_topics(deployed: Deployment) -> None:
    """Issue 10 (quotas): a device's ACL names exactly its four topics, writing state and
    events, reading cmd and notify; a retained message anywhere else under its prefix, or
    on the topics the gateway writes, is refused (PUBACK 0x87) and never kept, so a device
    holds at most two retained messages on the broker, however many it sends."""
    room = "room-1"
    device = Probe(deployed.broker, room, deployed.devices[room].password, (f"rooms/{room}/cmd",))
    try:
        junk = [f"rooms/{room}/junk/{n}" for n in range(200)]
        for topic in [*junk, f"rooms/{room}/cmd", f"rooms/{room}/notify", f"rooms/{room}"]:
            code = device.publish(topic, b"x" * 1000, retain=True)
            assert code is not None and code.value == 0x87, (topic, code)
        for kind in ("state", "events"):
            code = device.publish(f"rooms/{room}/{kind}", b'{"junk": 1}', retain=True)
            assert code is not None and not code.is_failure, (kind, code)
    finally:
        device.close()

    # What the broker keeps: a new subscriber to rooms/# gets every retained message at
    # once; its own publish after them is the sentinel that all have arrived.
    with Probe(deployed.broker, deployed.observer, deployed.gateway_password) as watcher:
        assert not watcher.publish("rooms/zz-sentinel/events", b"sentinel").is_failure
        watcher.wait_for(lambda m: m.topic == "rooms/zz-sentinel/events")
        kept = sorted({m.topic for m in watcher.messages if m.retain and f"/{room}/" in m.topic})
    assert kept == [f"rooms/{room}/events", f"rooms/{room}/state"], kept
