"""Prometheus metrics: jobs by state, webhooks and their latency, Blueprint calls by status,
sessions by state, and each room's device (online, recording, backlog, last heartbeat,
microphone).

One registry per app (not the global default), so several apps in a test process do not
collide. Label values are ids of kinds and room ids (a clinic's rooms: bounded, and no
person's), never of sessions or people; unknown webhook event types are folded into
"other". monitoring/ has the alert rules and the Grafana dashboard that use them.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway.blueprint import models as bp
from gateway.jobs.queue import JOB_STATES
from gateway.relay.room_status import RoomStatus
from gateway.sessions.states import SESSION_STATES
from gateway.stages import Stages

KNOWN_EVENT_TYPES = frozenset(
    {
        bp.PROGRESS_NOTE_GENERATED,
        bp.PROGRESS_NOTE_REGENERATED,
        bp.PROGRESS_NOTE_FINALIZED,
        bp.TRANSCRIPT_READY,
        bp.MDM_ELEMENTS_IDENTIFIED,
        bp.SESSION_TRANSCRIPT_ERROR,
        bp.ASSESSMENT_COMPLETED,
    }
)
WEBHOOK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stages = Stages(self.registry)
        self.jobs = Gauge(
            "gateway_jobs",
            "Jobs in the store by kind and state",
            ["kind", "state"],
            registry=self.registry,
        )
        self.job_attempts = Counter(
            "gateway_job_attempts",
            "Job attempts by kind and outcome (done, retry, failed)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "gateway_webhooks",
            "Blueprint webhooks received, by event type and outcome",
            ["event_type", "outcome"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "gateway_webhook_seconds",
            "Time to answer a Blueprint webhook",
            buckets=WEBHOOK_BUCKETS_S,
            registry=self.registry,
        )
        self.blueprint_calls = Counter(
            "gateway_blueprint_calls",
            "Blueprint API calls by operation and HTTP status (0: none)",
            ["operation", "status"],
            registry=self.registry,
        )

        self.ingest = Counter(
            "gateway_ingest_requests",
            "Room devices' chunk and manifest requests by kind and HTTP status",
            ["kind", "status"],
            registry=self.registry,
        )
        self.ingest_bytes = Counter(
            "gateway_ingest_bytes", "Sealed chunk bytes stored", registry=self.registry
        )
        self.mqtt_connected = Gauge(
            "gateway_mqtt_connected",
            "1 while the relay is connected to the broker (0 also when no relay is configured)",
            registry=self.registry,
        )

        self.dependency_up = Gauge(
            "gateway_dependency_up",
            "1 while a dependency /readyz checks is ok (0 failing; not configured: absent)",
            ["dependency"],
            registry=self.registry,
        )

        self.sessions = Gauge(
            "gateway_sessions",
            "Sessions in the store by state",
            ["state"],
            registry=self.registry,
        )
        room = ["room"]
        self.room_online = Gauge(
            "gateway_room_online",
            "1 while the room's device is connected (its retained state says online)",
            room,
            registry=self.registry,
        )
        self.room_recording = Gauge(
            "gateway_room_recording",
            "1 while the room's device records a session",
            room,
            registry=self.registry,
        )
        self.room_backlog_bytes = Gauge(
            "gateway_room_backlog_bytes",
            "Sealed audio the room's device holds that the gateway has not acknowledged",
            room,
            registry=self.registry,
        )
        self.room_backlog_chunks = Gauge(
            "gateway_room_backlog_chunks",
            "Chunks the room's device holds that the gateway has not acknowledged",
            room,
            registry=self.registry,
        )
        self.room_heartbeat_age = Gauge(
            "gateway_room_heartbeat_age_seconds",
            "Seconds since the room's device last sent a heartbeat (absent: never)",
            room,
            registry=self.registry,
        )
        self.room_microphone_ok = Gauge(
            "gateway_room_microphone_ok",
            "1 when the room's device has its microphone (0 missing or not opening;"
            " absent: not reported)",
            room,
            registry=self.registry,
        )

    def set_rooms(self, rooms: dict[str, RoomStatus], now: float) -> None:
        """Refresh the per-room gauges from the store; a room gone from it disappears."""
        gauges = (
            self.room_online,
            self.room_recording,
            self.room_backlog_bytes,
            self.room_backlog_chunks,
            self.room_heartbeat_age,
            self.room_microphone_ok,
        )
        for gauge in gauges:
            gauge.clear()
        for room_id, status in rooms.items():
            self.room_online.labels(room_id).set(int(status.online))
            self.room_recording.labels(room_id).set(int(status.recorder == "recording"))
            self.room_backlog_bytes.labels(room_id).set(status.backlog_bytes)
            self.room_backlog_chunks.labels(room_id).set(status.backlog_chunks)
            if status.heartbeat_at is not None:
                self.room_heartbeat_age.labels(room_id).set(max(0.0, now - status.heartbeat_at))
            if status.microphone is not None:
                self.room_microphone_ok.labels(room_id).set(int(status.microphone == "ok"))

    def set_session_counts(self, counts: dict[str, int]) -> None:
        """Every state is exported, 0 included, so rate() and alerts see it from the start."""
        for state in SESSION_STATES:
            self.sessions.labels(state).set(counts.get(state, 0))

    def set_dependencies(self, up: dict[str, bool]) -> None:
        self.dependency_up.clear()
        for name, value in up.items():
            self.dependency_up.labels(name).set(int(value))

    def ingested(self, kind: str, status: int, size: int = 0) -> None:
        self.ingest.labels(kind, str(status)).inc()
        if size:
            self.ingest_bytes.inc(size)

    def blueprint_call(self, operation: str, status: int) -> None:
        self.blueprint_calls.labels(operation, str(status)).inc()

    def job_attempt(self, kind: str, outcome: str) -> None:
        self.job_attempts.labels(kind, outcome).inc()

    def webhook(self, event_type: str | None, outcome: str, seconds: float) -> None:
        label = event_type if event_type in KNOWN_EVENT_TYPES else "other"
        self.webhooks.labels(label, outcome).inc()
        self.webhook_seconds.observe(seconds)

    def set_job_counts(self, counts: dict[tuple[str, str], int]) -> None:
        """Refresh the gauge from the store; every known state of a kind is exported."""
        self.jobs.clear()
        for kind in {kind for kind, _ in counts}:
            for state in JOB_STATES:
                self.jobs.labels(kind, state).set(counts.get((kind, state), 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
