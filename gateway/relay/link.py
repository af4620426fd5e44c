"""The gateway's MQTT connection (paho-mqtt, MQTT 5, QoS 1), bridged to asyncio.

paho runs its network loop on its own thread; runtime/mqtt_connection.py keeps the
connection up as it does the device's (backoff with jitter between ``reconnect_min_s`` and
``reconnect_max_s``, a refusal of the credentials reported). Messages arrive on that thread and
are handed to the event loop with ``call_soon_threadsafe``, into one queue consumed in
order. Publishing is done from the event loop (paho's publish is thread-safe) and awaited
until the broker's PUBACK, whose MQTT 5 reason code tells an ACL refusal from success.

One gateway (plain subscriptions): the session is persistent (clean start off, a session
expiry), so device events sent while the gateway is away are delivered when it is back,
and retained room states arrive at every subscription.

Replicas (``shared``: ``$share/gateway/rooms/+/...``): the broker hands each message to one
replica of the group. Their sessions are not persistent (clean start, expiry 0): a broker
keeps queueing a share of the group's messages for a disconnected member's session
(measured on mosquitto 2.0.11: a killed replica's session kept half of them), so a dead
replica would hoard messages the living ones should handle. MQTT 5 does not send retained
messages to shared subscriptions, so each replica also subscribes to the retained room
states without sharing (``recover``) and handles only the retained ones from it: live
messages there are the shared subscription's to handle (told apart by subscription
identifier). What this costs: events sent while every replica is away are not kept
(room state is retained and reconciled; commands are re-sent until confirmed or expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import SecretStr

from gateway.settings import MqttSettings
from runtime.mqtt import BrokerUnavailable, new_client, persistent_session
from runtime.mqtt_connection import ConnectionSupervisor

logger = logging.getLogger(__name__)

Inbound = Callable[[str, bytes], Awaitable[None]]
Connected = Callable[[], Coroutine[Any, Any, None]]
INBOX_MAX = 10_000
STOP_WAIT_S = 10.0
MAIN_SUBSCRIPTION = 1  # subscription identifiers (MQTT 5)
RECOVERY_SUBSCRIPTION = 2


class PublishRefused(Exception):
    """The broker acknowledged with a failure reason code (e.g. 0x87 not authorized)."""


class MqttLink:
    def __init__(
        self,
        settings: MqttSettings,
        password: SecretStr | None,
        subscriptions: list[str],
        inbound: Inbound,
        connected: Connected | None = None,
        *,
        client_id: str,
        username: str | None = None,
        shared: bool = False,
        recover: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self._subscriptions = subscriptions
        self._shared = shared
        self._recover = recover or []
        self._inbound = inbound
        self._on_connected = connected
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(INBOX_MAX)
        self._consumer: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._connected = threading.Event()
        # What the broker refused of our subscriptions at the last connection (e.g. 0x9E:
        # no shared subscriptions): /readyz and `room-gateway doctor` report it.
        self.refused_subscriptions: list[str] = []
        self.client = new_client(settings, client_id, username or settings.username, password)
        self._connection = ConnectionSupervisor(
            self.client,
            settings,
            logger,
            "relay",
            clean_start=shared,
            properties=self._connect_properties,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background (retried until it works); call from the event loop."""
        self._loop = asyncio.get_running_loop()
        self._consumer = asyncio.create_task(self._consume(), name="mqtt-inbound")
        self._connection.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self._connection.stop, STOP_WAIT_S)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._connection.close)
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        self._fail_pending()

    async def publish(self, topic: str, payload: str, expiry_s: int | None = None) -> None:
        """QoS 1; returns once the broker has acknowledged it, else raises."""
        if not self.connected:
            raise BrokerUnavailable("not connected to the broker")
        properties = None
        if expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, int(expiry_s))
        assert self._loop is not None
        # Registered before the next await, and the PUBACK is settled on this loop too:
        # no lock (paho calls on_publish holding its own lock, which publish() takes).
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"publish not queued ({mqtt.error_string(info.rc)})")
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[info.mid] = future
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                await future
        except TimeoutError:
            raise BrokerUnavailable("no acknowledgement from the broker") from None
        finally:
            self._pending.pop(info.mid, None)

    def publish_nowait(self, topic: str, payload: str) -> None:
        """QoS 1 without waiting (best effort: dropped while disconnected)."""
        if self.connected:
            self.client.publish(topic, payload, qos=1)

    def _connect_properties(self) -> Properties:
        if not self._shared:
            return persistent_session(self.settings)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        return properties

    # --- paho callbacks (network thread) --------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._connection.answered(reason_code)
            return
        options = SubscribeOptions(qos=1)
        self.refused_subscriptions = []
        client.subscribe(
            [(topic, options) for topic in self._subscriptions],
            properties=_subscription_id(MAIN_SUBSCRIPTION),
        )
        if self._recover:
            client.subscribe(
                [(topic, options) for topic in self._recover],
                properties=_subscription_id(RECOVERY_SUBSCRIPTION),
            )
        self._connected.set()
        self._connection.answered(reason_code)
        if self._on_connected is not None:
            self._call(self._spawn, self._on_connected)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._connection.dropped(reason_code)
        self._call(self._fail_pending)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            self.refused_subscriptions = refused
            logger.error("relay: subscription refused by the broker (%s)", ", ".join(refused))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if self._recover and not message.retain:
            ids = getattr(message.properties, "SubscriptionIdentifier", None) or []
            if RECOVERY_SUBSCRIPTION in ids and MAIN_SUBSCRIPTION not in ids:
                return  # a live message: the shared subscription gives it to one replica
        self._call(self._enqueue, message.topic, bytes(message.payload))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._call(self._settle, mid, reason_code)

    # --- on the event loop ------------------------------------------------------------------

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(fn, *args)

    def _spawn(self, make: Connected) -> None:
        task = asyncio.create_task(make())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _enqueue(self, topic: str, payload: bytes) -> None:
        try:
            self._inbox.put_nowait((topic, payload))
        except asyncio.QueueFull:
            logger.error("relay: inbound queue full; message on %s dropped", topic)

    async def _consume(self) -> None:
        while True:
            topic, payload = await self._inbox.get()
            try:
                await self._inbound(topic, payload)
            except Exception as exc:
                # Type and topic only: the payload came from a device and is not logged.
                logger.error("relay: message on %s not handled (%s)", topic, type(exc).__name__)

    def _settle(self, mid: int, reason_code: ReasonCode) -> None:
        future = self._pending.get(mid)
        if future is None or future.done():
            return
        if reason_code.is_failure:
            future.set_exception(PublishRefused(f"the broker refused the message ({reason_code})"))
        else:
            future.set_result(None)

    def _fail_pending(self) -> None:
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(BrokerUnavailable("disconnected before acknowledgement"))


def _subscription_id(number: int) -> Properties:
    properties = Properties(PacketTypes.SUBSCRIBE)
    properties.SubscriptionIdentifier = number
    return properties
