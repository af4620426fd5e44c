"""Provisioning as a technician does it, against a real mosquitto run from exactly the files
`room-gateway broker-config` writes: credentials work, the ACL confines each device to its
own topics (MQTT 5 reason codes and non-delivery), and `device revoke` cuts a device off at
the broker without restarting it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.settings import load_agent_settings
from gateway.devices.credentials import mosquitto_hash, mosquitto_verify
from protocol.envelope import public_key_from_text
from tests.gateway.conftest import SimulatorProcess
from tests.gateway.deployment import Deployment
from tests.support.certs import ClientCert, Pki
from tests.support.mqtt_probe import Probe

pytestmark = pytest.mark.timeout(120)
NOT_AUTHORIZED = 0x87


class Client:
    """A bare MQTT 5 client that records what the broker answers: CONNACK, SUBACK codes,
    disconnections and messages."""

    def __init__(self, deployment: Deployment, user: str, password: str) -> None:
        self.connack: ReasonCode | None = None
        self.suback: list[ReasonCode] = []
        self.disconnected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self._event = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-{user}-{id(self):x}",
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = lambda *args: self.disconnected.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", deployment.broker_port, keepalive=10)
        self.client.loop_start()
        assert self._event.wait(10), "no CONNACK"

    def subscribe(self, topic: str) -> ReasonCode:
        self._event.clear()
        self.client.subscribe(topic, qos=1)
        assert self._event.wait(10), "no SUBACK"
        return self.suback[0]

    def publish(self, topic: str, payload: str) -> ReasonCode:
        acked = threading.Event()
        codes: list[ReasonCode] = []

        def on_publish(c: object, u: object, mid: int, code: ReasonCode, p: object) -> None:
            codes.append(code)
            acked.set()

        self.client.on_publish = on_publish
        self.client.publish(topic, payload, qos=1)
        assert acked.wait(10), "no PUBACK"
        return codes[0]

    def wait_for(self, message: tuple[str, bytes], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while message not in self.messages:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack = reason_code
        self._event.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.suback = list(reason_codes)
        self._event.set()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, blueprint_sim: SimulatorProcess):
    """Two devices provisioned and the broker running from broker-config's files (the
    gateway service itself is not needed here). Tests that revoke re-add."""
    root = tmp_path_factory.mktemp("deployment")
    deployed = Deployment(root, blueprint_sim.url, ("room-1", "room-2"))
    deployed.broker.start()
    yield deployed
    deployed.broker.kill()


def test_mosquitto_hash_is_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "dev", "s3cret"], check=True)
    theirs = passwd.read_text().strip().split(":", 1)[1]
    assert mosquitto_verify("s3cret", theirs) and not mosquitto_verify("other", theirs)
    ours = mosquitto_hash("s3cret")
    _, kind, iterations, _salt, _digest = ours.split("$")
    assert (kind, iterations) == ("7", theirs.split("$")[2])
    assert mosquitto_verify("s3cret", ours)


def test_device_add_writes_an_agent_config_that_loads(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = deployment.devices["room-1"]
    for name in ("agent.toml", "ingest-token", "mqtt-password"):
        assert stat.S_IMODE((files.directory / name).stat().st_mode) == 0o600
    # As room-agent.service runs it: the secrets as systemd credentials (LoadCredential=).
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(files.directory))
    settings = load_agent_settings(files.directory / "agent.toml")
    assert settings.device_id == "room-1"
    assert settings.link.gateway_url == deployment.gateway.url
    assert settings.mqtt.broker_url == f"mqtt://127.0.0.1:{deployment.broker_port}"
    assert settings.link.ingest_token.get_secret_value() == files.token
    assert settings.mqtt.password.get_secret_value() == files.password
    assert settings.gateway_public_key is not None
    sealing = public_key_from_text(settings.gateway_public_key)
    assert sealing.public_bytes_raw() == deployment.key.public_key().public_bytes_raw()
    toml = (files.directory / "agent.toml").read_text()
    assert files.token not in toml and files.password not in toml, "secrets only in files"

    # The store keeps hashes only.
    db = (deployment.gateway.state_dir / "gateway.db").read_bytes()
    assert files.token.encode() not in db and files.password.encode() not in db

    again = deployment.gateway.cli("device", "add", "room-1", check=False)
    assert again.returncode == 2 and "exists already (--rotate" in again.stderr
    bad = deployment.gateway.cli("device", "add", "room 3", check=False)
    assert bad.returncode == 2 and "must be 1-64 letters" in bad.stderr
    listed = deployment.gateway.cli("device", "list").stdout
    assert "room-1  active" in listed and "room-2  active" in listed


def test_broker_config_admits_devices_and_the_gateway_only_with_their_passwords(
    deployment: Deployment,
) -> None:
    conf = deployment.broker.config.read_text()
    assert "allow_anonymous false" in conf and f"listener {deployment.broker_port}" in conf
    for user, password in (
        ("room-1", deployment.devices["room-1"].password),
        ("gateway", deployment.gateway_password),
    ):
        client = Client(deployment, user, password)
        assert not client.connack.is_failure, (user, client.connack)
        client.close()
    wrong = Client(deployment, "room-1", deployment.devices["room-2"].password)
    assert wrong.connack.is_failure
    wrong.close()


def test_each_device_is_confined_to_its_own_topics(deployment: Deployment) -> None:
    room1 = Client(deployment, "room-1", deployment.devices["room-1"].password)
    room2 = Client(deployment, "room-2", deployment.devices["room-2"].password)
    with Probe(deployment.broker, deployment.observer, deployment.gateway_password) as gateway:
        assert room1.subscribe("rooms/room-1/#").value == 1  # granted, QoS 1
        assert room2.subscribe("rooms/room-2/notify").value == 1
        # Out of its ACL. mosquitto 2.0 grants such subscriptions (it checks the ACL at
        # delivery), so what counts is that nothing is delivered, checked below; publishing
        # is refused with MQTT 5's "not authorized".
        room1.subscribe("rooms/room-2/#")
        room1.subscribe("rooms/#")
        assert room1.publish("rooms/room-2/cmd", '{"type":"ping"}').value == NOT_AUTHORIZED
        assert room1.publish("elsewhere", "x").value == NOT_AUTHORIZED
        assert not room1.publish("rooms/room-1/events", '{"own": 1}').is_failure
        after = gateway.count()
        assert gateway.publish("rooms/room-2/notify", '{"for": "room-2"}').value == 0
        gateway.wait_for(gateway.on("rooms/room-1/events"))
        gateway.wait_for(gateway.on("rooms/room-2/notify"), after=after)
    assert room2.wait_for(("rooms/room-2/notify", b'{"for": "room-2"}'))
    assert all(topic.startswith("rooms/room-1/") for topic, _ in room1.messages)
    seen = [m.topic for m in gateway.messages[after:]]
    assert "rooms/room-2/cmd" not in seen and "elsewhere" not in seen
    room1.close()
    room2.close()


def test_revoke_cuts_the_device_off_at_the_broker_without_a_restart(
    deployment: Deployment,
) -> None:
    pid_before = int((deployment.broker_dir / "mosquitto.pid").read_text())
    room1 = Client(deployment, "room-1", deployment.devices["room-1"].password)
    room2 = Client(deployment, "room-2", deployment.devices["room-2"].password)
    assert room1.subscribe("rooms/room-1/#").value == 1

    revoked = deployment.gateway.cli("device", "revoke", "room-1")
    assert f"SIGHUP to pid {pid_before}" in revoked.stdout
    # mosquitto re-reads its files on SIGHUP and drops the connected client at once.
    assert room1.disconnected.wait(10), "the revoked device is still connected"
    refused = Client(deployment, "room-1", deployment.devices["room-1"].password)
    assert refused.connack.value == NOT_AUTHORIZED
    assert "room-1" not in (deployment.broker_dir / "acl").read_text()
    assert "room-1:" not in (deployment.broker_dir / "passwd").read_text()
    # The broker was reloaded, not restarted: room-2's connection is untouched.
    assert deployment.broker.alive() and not room2.disconnected.is_set()
    assert int((deployment.broker_dir / "mosquitto.pid").read_text()) == pid_before
    assert not room2.publish("rooms/room-2/state", "{}").is_failure
    listed = deployment.gateway.cli("device", "list").stdout
    assert "room-1  revoked" in listed
    again = deployment.gateway.cli("device", "revoke", "room-1", check=False)
    assert again.returncode == 2 and "no active device room-1" in again.stderr

    # Re-adding issues new credentials; the broker admits the device again.
    deployment.devices["room-1"] = deployment.add_device("room-1")
    back = Client(deployment, "room-1", deployment.devices["room-1"].password)
    assert not back.connack.is_failure
    for client in (room1, room2, back, refused):
        client.close()


def test_broker_config_refuses_an_unwritable_directory(
    tmp_path: Path, deployment: Deployment
) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("")
        out = blocker / "sub"
    else:  # pragma: no cover - the suite runs as root
        out = Path("/proc/forbidden")
    result = deployment.gateway.cli("broker-config", "--out", str(out), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_mutual_tls_devices_get_certificates_confined_and_revocable(
    tmp_path: Path, blueprint_sim: SimulatorProcess, sim: SimulatorProcess
) -> None:
    """With broker.require_certificate, `device add` issues a client certificate from the
    gateway's device CA (CN = device id, the MQTT user), and no password; the gateway's
    relay connects with its own certificate. Same ACL, same revocation."""
    pki = Pki.create(tmp_path / "pki")
    deployed = Deployment(tmp_path / "site", sim.url, ("room-1", "room-2"), tls=pki)
    files = deployed.devices["room-1"]
    assert not (files.directory / "mqtt-password").exists()
    settings = load_agent_settings(files.directory / "agent.toml")
    assert settings.mqtt.broker_url.startswith("mqtts://")
    assert settings.mqtt.client_cert_file == files.directory / "device.crt"
    assert settings.mqtt.password is None
    assert (files.directory / "broker-ca.pem").read_bytes() == pki.ca_cert.read_bytes()
    cert = x509.load_pem_x509_certificate((files.directory / "device.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=room-1"
    assert "require_certificate true" in deployed.broker.config.read_text()
    deployed.start()
    try:
        sim.set_callback(deployed.gateway.webhook_url)
        device = Probe(
            deployed.broker, user="room-1", password="", topics=["rooms/room-1/#"],
            ca_file=str(files.directory / "broker-ca.pem"), cert=files.certificate,
        )  # fmt: skip
        with device:
            deployed.gateway.put_people("clin-tls", "client-tls")
            session_id = deployed.gateway.start_session("room-1", "clin-tls", "client-tls")
            start = device.wait_for(device.on("rooms/room-1/cmd", type="start"), timeout=15)
            assert start.json()["session_id"] == session_id, "the relay works over mTLS"
            assert device.publish("rooms/room-2/cmd", {"type": "x"}).value == NOT_AUTHORIZED
            assert not device.publish("rooms/room-1/events", {"type": "x"}).is_failure
            deployed.gateway.cli("device", "revoke", "room-1")
            # Its certificate still passes TLS, but without its ACL entry it can do nothing.
            time.sleep(0.3)
            assert device.publish("rooms/room-1/events", {"type": "x"}).value == NOT_AUTHORIZED

        # A certificate with the right CN from another CA is refused at the handshake;
        # the same command with room-2's own certificate goes through.
        def publish_as(cert: ClientCert) -> int:
            argv = [
                "mosquitto_pub", "-V", "mqttv5", "-h", "127.0.0.1",
                "-p", str(deployed.broker_port), "--cafile", str(pki.ca_cert),
                "--cert", str(cert.cert), "--key", str(cert.key),
                "-t", "rooms/room-2/state", "-m", "{}", "-q", "1",
            ]  # fmt: skip
            return subprocess.run(argv, capture_output=True, timeout=30).returncode

        assert publish_as(pki.client("room-2")) != 0
        assert publish_as(deployed.devices["room-2"].certificate) == 0
    finally:
        deployed.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")
def test_files_rewritten_by_root_stay_readable_by_the_broker_user(tmp_path):
    """The broker runs as the gateway's user and rereads passwd/acl on SIGHUP: a
    `sudo room-gateway device add` must not leave them root-owned (and unreadable)."""
    import pwd

    broker_user = pwd.getpwnam("nobody")
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    os.chown(broker_dir, broker_user.pw_uid, broker_user.pw_gid)
    env = {
        **os.environ,
        "ROOM_GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "ROOM_GATEWAY_DEVICES__GATEWAY_URL": "https://gateway.clinic.example",
    }
    room_gateway = str(Path(sys.executable).parent / "room-gateway")
    steps = (["keygen"], ["broker-config", "--out", str(broker_dir)], ["device", "add", "room-5"])
    for args in steps:
        result = subprocess.run([room_gateway, *args], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
    for name in ("mosquitto.conf", "passwd", "acl"):
        info = (broker_dir / name).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (broker_user.pw_uid, 0o600), name
    assert "room-5:" in (broker_dir / "passwd").read_text()
