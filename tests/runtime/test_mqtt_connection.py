"""The one way both programs stay connected to the broker, against a real mosquitto."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from pydantic import SecretStr

from runtime.mqtt import BrokerSettings, new_client
from runtime.mqtt_connection import ConnectionSupervisor
from tests.support.eventually import eventually
from tests.support.mosquitto import Broker

USER, PASSWORD = "room-1", "room-1-secret"
log = logging.getLogger("test.mqtt_connection")


class Owner:
    """What the device's control link and the gateway's relay do with the supervisor."""

    def __init__(
        self,
        broker: Broker,
        password: str = PASSWORD,
        hold: Callable[[ConnectionSupervisor], None] | None = None,
        **settings: float,
    ) -> None:
        self.settings = BrokerSettings(broker_url=broker.url, **settings)
        self.client = new_client(self.settings, USER, USER, SecretStr(password))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.connections = 0
        self.attempts = 0
        self.refusals = 0
        self.connection = ConnectionSupervisor(
            self.client,
            self.settings,
            log,
            "test",
            clean_start=True,
            properties=lambda: None,
            before_connect=self._before_connect,
            while_connected=(lambda: hold(self.connection)) if hold is not None else None,
        )
        self.connection.on_refused_credentials.append(self._refused)

    @contextmanager
    def running(self) -> Iterator[ConnectionSupervisor]:
        """Started, then stopped and closed however the block ends."""
        self.connection.start()
        try:
            yield self.connection
        finally:
            self.connection.stop(5)
            self.connection.close()

    def _before_connect(self) -> None:
        self.attempts += 1

    def _refused(self) -> None:
        self.refusals += 1

    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, props) -> None:
        if not reason_code.is_failure:
            self.connections += 1
        self.connection.answered(reason_code)

    def _on_disconnect(self, client: mqtt.Client, userdata, flags, reason_code, props) -> None:
        self.connection.dropped(reason_code)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker", users={USER: PASSWORD}) as running:
        yield running


def test_it_connects_and_comes_back_after_the_broker_restarts(broker, caplog) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    owner = Owner(broker, reconnect_min_s=0.2, reconnect_max_s=1)
    with owner.running():
        eventually(lambda: owner.connections == 1, what="connected")
        broker.restart()
        eventually(lambda: owner.connections == 2, timeout=20, what="connected again")
        assert owner.attempts >= 2, "the owner's before_connect runs at each attempt"
    assert not owner.connection.alive()
    said = caplog.text
    assert f"test: connected to the broker at 127.0.0.1:{broker.port}" in said
    assert "test: disconnected from the broker" in said and "reconnecting" in said


def test_a_stop_ends_a_long_backoff_at_once(broker) -> None:
    broker.stop()
    owner = Owner(broker, reconnect_min_s=30, reconnect_max_s=60)
    owner.connection.start()
    eventually(lambda: owner.attempts >= 1, what="a first attempt")
    began = time.monotonic()
    owner.connection.stop(10)
    took = time.monotonic() - began
    assert not owner.connection.alive()
    assert took < 5, f"stop took {took:.1f} s inside a 30 s backoff"
    assert owner.connections == 0


def test_refused_credentials_are_reported_and_retried_until_accepted(broker) -> None:
    owner = Owner(broker, password="wrong", reconnect_min_s=0.1, reconnect_max_s=0.3)
    with owner.running() as connection:
        eventually(lambda: owner.refusals >= 2, timeout=15, what="two refusals")
        assert connection.not_authorized
        assert owner.connections == 0
        owner.client.username_pw_set(USER, PASSWORD)  # what a credential re-read does
        eventually(lambda: owner.connections == 1, timeout=15, what="accepted")
        # The owner hears of the CONNACK on paho's thread; the supervisor's thread clears
        # the flag once its wait for that CONNACK returns, a moment later.
        eventually(lambda: not connection.not_authorized, timeout=5, what="the flag cleared")


def test_the_owner_holds_the_connection_on_the_supervisors_thread(broker) -> None:
    beats: list[str] = []

    def hold(connection: ConnectionSupervisor) -> None:
        while not connection.wait_lost(0.05):
            beats.append(threading.current_thread().name)

    owner = Owner(broker, hold=hold, reconnect_min_s=0.1, reconnect_max_s=0.5)
    with owner.running():
        eventually(lambda: len(beats) >= 3, what="three beats while connected")
    assert set(beats) == {"test-mqtt"}
    assert not owner.connection.alive()


def test_a_failure_while_holding_the_connection_is_one_line_and_it_connects_again(
    broker, caplog
) -> None:
    """A heartbeat that raised once (the spool vanished under its free-space look) ended the
    device's control thread for good: no more state, no more commands."""
    caplog.set_level(logging.INFO, logger=log.name)
    holds: list[int] = []

    def hold(connection: ConnectionSupervisor) -> None:
        holds.append(1)
        if len(holds) == 1:
            raise FileNotFoundError("/private/path/of/the/spool")
        connection.wait_lost(None)

    owner = Owner(broker, hold=hold, reconnect_min_s=0.1, reconnect_max_s=0.5)
    with owner.running() as connection:
        eventually(lambda: len(holds) >= 2, timeout=15, what="held again after the failure")
        assert connection.alive()
    failed = [r for r in caplog.records if "FileNotFoundError" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is None, caplog.text
    assert "/private/path" not in caplog.text, "the exception's text may name private paths"
