"""The running gateway's parts, built from settings and wired together in one place.

The HTTP routes reach them through ``request.app.state.service``; the worker (and the MQTT
relay, when ``mqtt.broker_url`` is set) are started and stopped by the app's lifespan.
The device link adds: ingest (chunks in, assembled audio to the upload job), retention
(audio deleted once Blueprint has it) and the relay (room state in; commands and device
notifications out), each as session notifiers and job handlers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from gateway.blueprint.client import BlueprintClient
from gateway.devices.enrollment import GuessLimiter
from gateway.ingest.assembly import Assembler
from gateway.ingest.files import ChunkFiles
from gateway.ingest.receiver import ChunkReceiver
from gateway.ingest.retention import Retention
from gateway.jobs.worker import Handler, Worker
from gateway.keys import SealingKeys
from gateway.metrics import GatewayMetrics
from gateway.partner.callbacks import PartnerCallbacks
from gateway.partner.tokens import TokenCheck
from gateway.readiness import BlueprintHealth
from gateway.relay.relay import Relay
from gateway.sessions.audio_vault import AudioVault, open_vault
from gateway.sessions.blueprint_records import BlueprintRecords
from gateway.sessions.lifecycle import JobKind, SessionLifecycle
from gateway.sessions.workflow import Workflow
from gateway.settings import GatewaySettings
from gateway.store import Database, SqliteLocation

logger = logging.getLogger(__name__)


@dataclass
class GatewayService:
    settings: GatewaySettings
    db: Database
    metrics: GatewayMetrics
    blueprint: BlueprintClient
    lifecycle: SessionLifecycle
    worker: Worker
    tokens: TokenCheck
    ingest: ChunkReceiver
    blueprint_health: BlueprintHealth
    vault: AudioVault
    relay: Relay | None = None
    callbacks: PartnerCallbacks | None = None
    handlers: dict[str, Handler] = field(default_factory=dict)
    enroll_guesses: GuessLimiter = field(default_factory=GuessLimiter)

    @classmethod
    def open(cls, settings: GatewaySettings) -> GatewayService:
        """Open the store (migrating it) and build every part; nothing runs yet."""
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = Database.open(settings.store_location)
        damage = db.integrity_problem()  # /readyz's database_integrity reports it
        if damage is not None:
            logger.error("database damaged: %s: restore it from a backup", damage)
        metrics = GatewayMetrics()
        blueprint = blueprint_client(settings, metrics)
        blueprint_health = BlueprintHealth(blueprint.probe)
        blueprint.on_call(blueprint_health.saw)
        lifecycle = SessionLifecycle(settings.jobs, settings.blueprint.environment)
        blueprint_records = BlueprintRecords(
            db, blueprint, lifecycle, record_updates=settings.blueprint.record_updates
        )
        vault = open_vault(db, settings.audio_key_path)
        workflow = Workflow(db, blueprint_records, lifecycle, vault, settings.blueprint)
        handlers = workflow.handlers()
        callbacks = _partner_callbacks(settings, db, lifecycle)
        if callbacks is not None:
            lifecycle.add_notifier(callbacks.notifier)
            handlers[JobKind.NOTIFY_PARTNER] = callbacks.handle
        wake = _Wake()
        key = _sealing_keys(settings)
        files = ChunkFiles(settings.chunk_dir)
        ingest = ChunkReceiver(
            db,
            key,
            lifecycle,
            wake,
            max_unclaimed=settings.ingest.max_unclaimed_sessions,
            stages=metrics.stages,
            open_workers=settings.ingest.opening_workers,
        )
        assembler = Assembler(
            db, files, key, lifecycle, settings.ingest, vault, settings.http.audio_max_bytes
        )
        handlers[JobKind.ASSEMBLE_AUDIO] = assembler.handle
        retention = Retention(db, files, lifecycle, settings.ingest, settings.audio_dir)
        lifecycle.add_notifier(retention.notifier)
        handlers[JobKind.PURGE_AUDIO] = retention.handle
        relay = None
        if settings.mqtt.broker_url:
            relay = Relay(
                settings.mqtt,
                settings.mqtt_password,
                db,
                lifecycle,
                wake,
                client_id=settings.mqtt_client_id,
                username=settings.mqtt_username,
                shared=settings.shared_subscription,
            )
            lifecycle.add_notifier(relay.notifier.notifier)
            ingest.on_stored(relay.notifier.chunk_acked)
            handlers.update(relay.handlers())
        worker = Worker(
            db,
            handlers,
            settings.jobs,
            on_failed=workflow.on_failed,
            on_outcome=metrics.job_attempt,
            replica=settings.replica_name,
            sole=isinstance(settings.store_location, SqliteLocation),
            stages=metrics.stages,
        )
        wake.worker = worker
        lifecycle.hand_jobs_to(worker)
        return cls(
            settings=settings,
            db=db,
            metrics=metrics,
            blueprint=blueprint,
            lifecycle=lifecycle,
            worker=worker,
            tokens=TokenCheck(settings.partner.tokens),
            ingest=ingest,
            blueprint_health=blueprint_health,
            vault=vault,
            relay=relay,
            callbacks=callbacks,
            handlers=handlers,
        )

    def start(self) -> None:
        self.worker.start()
        if self.relay is not None:
            self.relay.start()
        logger.info(
            "gateway started: database %s (schema v%d), Blueprint at %s, relay %s",
            self.db.display,
            self.db.schema_version(),
            self.settings.blueprint.base_url,
            self.settings.mqtt.broker_url or "off",
        )

    async def aclose(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
        await self.worker.stop()
        await self.blueprint.aclose()
        if self.callbacks is not None:
            await self.callbacks.aclose()
        await asyncio.to_thread(self.ingest.stop_workers)
        self.db.close()


def blueprint_client(
    settings: GatewaySettings, metrics: GatewayMetrics | None = None
) -> BlueprintClient:
    """The Blueprint client of these settings (the service's, or an admin command's)."""
    blueprint = settings.blueprint
    return BlueprintClient(
        blueprint.base_url,
        blueprint.api_key,
        blueprint.client_id,
        blueprint.client_secret,
        timeout_s=blueprint.timeout_s,
        max_attempts=blueprint.max_attempts,
        backoff_base_s=blueprint.backoff_base_s,
        backoff_max_s=blueprint.backoff_max_s,
        on_call=metrics.blueprint_call if metrics is not None else None,
        artifact_origins=blueprint.artifact_origins,
    )


def _partner_callbacks(
    settings: GatewaySettings, db: Database, lifecycle: SessionLifecycle
) -> PartnerCallbacks | None:
    partner = settings.partner
    if partner.callback_url is None or partner.callback_secret is None:
        return None
    return PartnerCallbacks(
        db, lifecycle, partner.callback_url, partner.callback_secret, partner.callback_timeout_s
    )


class _Wake:
    """Wakes the worker (made after the parts that need to wake it); loop thread only."""

    worker: Worker | None = None

    def __call__(self) -> None:
        if self.worker is not None:
            self.worker.wake()


def _sealing_keys(settings: GatewaySettings) -> SealingKeys:
    """The sealing key and the retired ones, read again whenever the files change (a
    rotation needs no restart); without a key the gateway runs, but ingest answers 503."""
    keys = SealingKeys(settings.sealing_key_path)
    if keys.current() is None and keys.error is None:
        logger.warning(
            "no sealing key at %s: room devices' audio is refused until `room-gateway keygen`",
            settings.sealing_key_path,
        )
    if keys.error is not None:
        logger.error("sealing key not usable: %s", keys.error)
    return keys
