"""Keeping one MQTT connection up, the same way in both programs.

Reconnection is ours, not paho's (runtime.mqtt.new_client never reconnects by itself):
- attempts back off exponentially with jitter (runtime/retry.py), so the rooms of a
  clinic, or a gateway's replicas, that lost the broker together do not come back in step;
- a connection that dropped within ``STABLE_S`` of being made counts as flapping (a broker
  that accepts and then kicks us, a client id taken over): the next attempt waits
  ``reconnect_min_s`` instead of hammering the broker;
- each attempt re-runs the owner's ``before_connect`` (the device refreshes its last will
  there, so the will carries the state of this connection, not of the first);
- a CONNACK refusing the credentials is reported (``not_authorized``) and told to the owner
  (``on_refused_credentials``: re-read them, a rotation may have happened) before retrying;
- a stop ends any wait at once, also in the middle of a backoff;
- an exception from the owner's ``while_connected`` (its heartbeats) is one log line and a
  new connection, never the end of the supervisor's thread.

The owner keeps its own paho callbacks and calls ``answered`` from its ``on_connect`` and
``dropped`` from its ``on_disconnect``; everything else runs on the supervisor's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
import tenacity
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from runtime.mqtt import BrokerSettings, BrokerUnavailable, broker_address
from runtime.retry import log_retry, thread_retrying, wait_backoff

CONNACK_WAIT_S = 10.0
# A connection that lasted less than this before it dropped counts as flapping.
STABLE_S = 10.0
# CONNACK reason codes that mean "these credentials are not accepted".
AUTH_REFUSALS = ("Not authorized", "Bad user name or password")
RETRY_LOG_EVERY = 10  # a line for the first failed attempt, then one every tenth


class ConnectionSupervisor:
    """Connects ``client``, holds the connection, reconnects when it drops, until stop()."""

    def __init__(
        self,
        client: mqtt.Client,
        settings: BrokerSettings,
        logger: logging.Logger,
        name: str,
        *,
        clean_start: bool,
        properties: Callable[[], Properties | None],
        before_connect: Callable[[], None] | None = None,
        while_connected: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.host, self.port, _ = broker_address(settings.broker_url)
        self._log = logger
        self._name = name
        self._clean_start = clean_start
        self._properties = properties
        self._before_connect = before_connect
        # Runs on the supervisor's thread while connected (the device's heartbeats); must
        # return once wait_lost() says the connection is gone. By default it just waits.
        self._while_connected = while_connected or self._wait_until_lost
        # Told when the broker refuses the credentials (on the supervisor's thread).
        self.on_refused_credentials: list[Callable[[], object]] = []
        self.stopping = threading.Event()
        self._lost = threading.Event()
        self._connack = threading.Event()
        self._accepted = False
        self._refusal: str | None = None
        self.not_authorized = False  # the broker refused the last attempt's credentials
        self._thread: threading.Thread | None = None

    # -- lifecycle (the owner's thread)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name=f"{self._name}-mqtt")
        self._thread.daemon = True
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop reconnecting and return once the supervisor's thread is done; a connection
        that is up stays up, for the owner's goodbye, until close()."""
        self.stopping.set()
        self._lost.set()
        self._connack.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close(self) -> None:
        """Disconnect and stop paho's network thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_lost(self, timeout_s: float | None) -> bool:
        """True once the connection is gone or stop() was called; False on time-out."""
        return self._lost.wait(timeout_s) or self.stopping.is_set()

    def _wait_until_lost(self) -> None:
        self.wait_lost(None)

    # -- from the owner's paho callbacks (paho's network thread)

    def answered(self, reason_code: ReasonCode) -> None:
        """The broker's CONNACK."""
        self._accepted = not reason_code.is_failure
        if reason_code.is_failure:
            self._refusal = str(reason_code)
            self._log.warning("%s: broker refused the connection (%s)", self._name, reason_code)
        self._connack.set()

    def dropped(self, reason_code: ReasonCode) -> None:
        """paho's on_disconnect."""
        was, self._accepted = self._accepted, False
        if was and not self.stopping.is_set():
            self._log.warning(
                "%s: disconnected from the broker (%s); reconnecting", self._name, reason_code
            )
        self._lost.set()

    # -- the supervisor's thread

    def _supervise(self) -> None:
        while not self.stopping.is_set():
            try:
                self._retrying()(self._connect)
            except BrokerUnavailable:
                return  # stopping
            connected_at = time.monotonic()
            try:
                self._while_connected()
            except Exception as exc:  # the owner's bug must not end its link for good
                self._log.error(  # the type only: an exception's text may name private paths
                    "%s: failed while connected (%s); connecting again",
                    self._name,
                    type(exc).__name__,
                )
                self.close()
                self.stopping.wait(self.settings.reconnect_min_s)
                continue
            if self.stopping.is_set():
                return  # the owner says goodbye on the running connection, then close()
            self.client.loop_stop()
            if time.monotonic() - connected_at < STABLE_S:
                self.stopping.wait(self.settings.reconnect_min_s)

    def _retrying(self) -> tenacity.Retrying:
        return thread_retrying(
            self.stopping,
            BrokerUnavailable,
            wait_backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s),
            before_sleep=log_retry(
                self._log, f"{self._name}: broker not reachable", every=RETRY_LOG_EVERY
            ),
        )

    def _connect(self) -> None:
        """One attempt: TCP (and TLS), CONNECT, and a successful CONNACK; else raises."""
        if self.stopping.is_set():
            raise BrokerUnavailable("stopping")
        self._lost.clear()
        self._connack.clear()
        self._accepted = False
        self._refusal = None
        if self._before_connect is not None:
            self._before_connect()
        try:
            self.client.connect(
                self.host,
                self.port,
                keepalive=self.settings.keepalive_s,
                clean_start=self._clean_start,
                properties=self._properties(),
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise BrokerUnavailable(type(exc).__name__) from None
        self.client.loop_start()
        self._connack.wait(CONNACK_WAIT_S)
        if not self._accepted or self.stopping.is_set():
            self.close()
            if self._refusal in AUTH_REFUSALS:
                self._refused_credentials()
            raise BrokerUnavailable(self._refusal or "no CONNACK")
        if self.not_authorized:
            self._log.info("%s: the broker accepts the credentials again", self._name)
        self.not_authorized = False
        self._log.info("%s: connected to the broker at %s:%d", self._name, self.host, self.port)

    def _refused_credentials(self) -> None:
        self.not_authorized = True
        for hook in self.on_refused_credentials:
            hook()
