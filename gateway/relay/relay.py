"""The relay, as the service runs it: one MQTT link, what comes in, what goes out.

Subscribes to every room's ``state`` and ``events`` (a shared subscription when several
gateways share the broker), keeps room status, sends commands, notifies devices. When the
broker comes back (and when the gateway starts), commands and notifications that waited
for it are made due at once, and each room's desired state is asked for again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import SecretStr

from gateway.jobs.worker import Handler
from gateway.relay.commands import Commands
from gateway.relay.diagnosis import RoomDiagnosis
from gateway.relay.inbound import DeviceMessages
from gateway.relay.link import MqttLink
from gateway.relay.notify import DeviceNotifier
from gateway.sessions.lifecycle import JobKind, SessionLifecycle
from gateway.settings import MqttSettings
from gateway.store import Connection, Database
from protocol import topics

logger = logging.getLogger(__name__)

BROKER_JOBS = (JobKind.DEVICE_COMMAND, JobKind.NOTIFY_DEVICE)


class Relay:
    def __init__(
        self,
        settings: MqttSettings,
        password: SecretStr | None,
        db: Database,
        lifecycle: SessionLifecycle,
        wake: Callable[[], None],
        *,
        client_id: str,
        shared: bool,
        username: str | None = None,
    ) -> None:
        self._db = db
        self._wake = wake
        subscriptions = [topics.all_devices(kind, shared=shared) for kind in ("state", "events")]
        # Shared subscriptions get no retained messages: the room states come this way.
        recover = [topics.all_devices("state")] if shared else []
        self.link = MqttLink(
            settings,
            password,
            subscriptions,
            self._inbound,
            connected=self._reconnected,
            client_id=client_id,
            username=username,
            shared=shared,
            recover=recover,
        )
        self.commands = Commands(db, self.link, lifecycle, settings.command_expiry_s)
        self.notifier = DeviceNotifier(self.link, lifecycle)
        self.messages = DeviceMessages(db, self.commands, settings.command_expiry_s, wake)
        self.diagnosis = RoomDiagnosis(db, self.link)

    def handlers(self) -> dict[str, Handler]:
        return {
            JobKind.DEVICE_COMMAND: self.commands.send,
            JobKind.COMMAND_EXPIRY: self.commands.expire,
            JobKind.NOTIFY_DEVICE: self.notifier.handle,
        }

    @property
    def connected(self) -> bool:
        return self.link.connected

    def start(self) -> None:
        self.link.start()

    async def stop(self) -> None:
        await self.link.stop()

    async def _inbound(self, topic: str, payload: bytes) -> None:
        await self.messages.handle(topic, payload)

    async def _reconnected(self) -> None:
        """The broker is (back) there: what waited for it is due, and every room whose
        desired state is not confirmed is asked again (a restarted broker may have lost
        the commands it held; a restarted gateway may have died before sending them)."""
        due = await self._db.run(_make_due, BROKER_JOBS)
        reissued = await self._db.run(self.commands.reissue_all)
        if due or reissued:
            logger.info(
                "relay: %d command(s)/notification(s) waiting for the broker are due,"
                " %d room(s) asked again",
                due,
                reissued,
            )
            self._wake()


def _make_due(conn: Connection, kinds: tuple[str, ...]) -> int:
    placeholders = ", ".join("?" for _ in kinds)
    cursor = conn.execute(
        f"UPDATE jobs SET next_run_at = ? WHERE state = 'queued' AND kind IN ({placeholders})"
        " AND next_run_at > ?",
        (time.time(), *kinds, time.time()),
    )
    return cursor.rowcount
