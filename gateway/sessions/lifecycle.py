"""Which job follows which: each method is one transaction that changes a session's state
and queues the work that state calls for, so a crash can never leave one without the other.

Partner actions (start, stop, attach audio) and job outcomes (session created in
Blueprint, upload started/finished, artifact fetched, failed) all come through here.
Notifiers are told about ``notes_ready``, ``note_updated``, ``failed`` and
``audio_uploaded`` inside the same transaction, so the jobs they queue (a partner callback,
a device notification over MQTT, deleting the audio after its retention) are as durable as
the state change itself.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from gateway import rooms
from gateway.devices import registry
from gateway.errors import Conflict, InvalidReference, NotFound
from gateway.jobs import queue as jobs
from gateway.sessions import artifacts, desired, records
from gateway.sessions import states as sessions
from gateway.sessions.artifacts import ArtifactKind
from gateway.sessions.states import RoomBusy, Session
from gateway.settings import JobSettings
from gateway.store import Connection

# The states a move starts from (typed: a bare one-element tuple is inferred as tuple[str]).
_PAUSABLE: tuple[sessions.SessionState, ...] = ("recording",)
_RESUMABLE: tuple[sessions.SessionState, ...] = ("paused",)
_STARTING: tuple[sessions.SessionState, ...] = ("starting",)
_UPLOADING: tuple[sessions.SessionState, ...] = ("uploading",)


class JobKind(StrEnum):
    ENSURE_CLINICIAN = "ensure_clinician"
    ENSURE_CLIENT = "ensure_client"
    CREATE_SESSION = "create_session"
    UPLOAD_AUDIO = "upload_audio"
    FETCH_ARTIFACT = "fetch_artifact"
    NOTIFY_PARTNER = "notify_partner"
    # The device link: the room device's audio and its MQTT control plane.
    ASSEMBLE_AUDIO = "assemble_audio"
    PURGE_AUDIO = "purge_audio"
    DEVICE_COMMAND = "device_command"
    COMMAND_EXPIRY = "command_expiry"
    NOTIFY_DEVICE = "notify_device"
    POLL_ARTIFACTS = "poll_artifacts"  # the note's webhook did not come: ask Blueprint


class SessionEvent(StrEnum):
    """What notifiers hear about."""

    NOTES_READY = "notes_ready"
    NOTE_UPDATED = "note_updated"
    FAILED = "failed"
    AUDIO_UPLOADED = "audio_uploaded"  # Blueprint accepted the audio (retention starts)


Notifier = Callable[[Connection, Session, SessionEvent], None]
"""Called inside the transaction of a session event; may enqueue jobs on ``conn``."""

# The room may close a session by itself (a button, a full spool) before the gateway saw
# it stopped, or before its start was confirmed: its audio is taken all the same.
UPLOADABLE_FROM: tuple[sessions.SessionState, ...] = ("starting", "recording", "paused", "stopping")
STOPPABLE_FROM: tuple[sessions.SessionState, ...] = ("starting", "recording", "paused")
AFTER_UPLOAD: tuple[sessions.SessionState, ...] = ("audio_ready", "uploading", "processing")


def poll_key(session_id: str) -> str:
    """The one poll_artifacts job of a session."""
    return f"{JobKind.POLL_ARTIFACTS}:{session_id}"


class JobTaker(Protocol):
    """The worker that runs this process's jobs (gateway.jobs.worker.Worker): it takes a
    job due now as it is queued, or is woken to claim it, once the transaction commits."""

    def lease(self) -> jobs.Lease | None: ...

    def take(self, job: jobs.Job) -> None: ...

    def queued(self) -> None: ...


class SessionLifecycle:
    def __init__(self, job_settings: JobSettings, environment: str) -> None:
        self._max_attempts = job_settings.max_attempts
        self.environment = environment  # the Blueprint environment cached ids must be of
        self._notifiers: list[Notifier] = []
        self._taker: JobTaker | None = None

    def hand_jobs_to(self, taker: JobTaker) -> None:
        """Jobs queued from now on go to ``taker`` as their transaction commits: the next
        step of a session starts at once, rather than after a claim or a poll."""
        self._taker = taker

    def add_notifier(self, notifier: Notifier) -> None:
        self._notifiers.append(notifier)

    def enqueue(
        self,
        conn: Connection,
        kind: JobKind,
        payload: dict[str, Any],
        *,
        session_id: str | None = None,
        key: str | None = None,
        delay_s: float = 0.0,
        max_attempts: int | None = None,
    ) -> int:
        taker = self._taker
        job_id, taken = jobs.enqueue_leased(
            conn,
            kind,
            payload,
            max_attempts=max_attempts or self._max_attempts,
            session_id=session_id,
            key=key,
            delay_s=delay_s,
            lease=taker.lease() if taker is not None and delay_s <= 0 else None,
        )
        if taker is not None and taken is not None:
            conn.after_commit(lambda: taker.take(taken))
        elif taker is not None and delay_s <= 0:
            conn.after_commit(taker.queued)
        return job_id

    # --- people ---------------------------------------------------------------------------

    def ensure_clinician(self, conn: Connection, external_id: str) -> int | None:
        """Queue ensuring the clinician in Blueprint (created, or its changed details sent);
        None when Blueprint has it as it is."""
        clinician = records.get_clinician(conn, external_id)
        if clinician is None:
            raise NotFound(f"clinician {external_id} not found", code="clinician_not_found")
        if clinician.blueprint_id_in(self.environment) and not clinician.needs_update:
            return None
        return self.enqueue(
            conn,
            JobKind.ENSURE_CLINICIAN,
            {"external_id": external_id},
            key=f"{JobKind.ENSURE_CLINICIAN}:{external_id}",
        )

    def ensure_client(self, conn: Connection, external_id: str) -> int | None:
        client = records.get_client(conn, external_id)
        if client is None:
            raise NotFound(f"client {external_id} not found", code="client_not_found")
        if client.blueprint_id_in(self.environment) and not client.needs_update:
            return None
        return self.enqueue(
            conn,
            JobKind.ENSURE_CLIENT,
            {"external_id": external_id},
            key=f"{JobKind.ENSURE_CLIENT}:{external_id}",
        )

    # --- partner actions ------------------------------------------------------------------

    def start(
        self,
        conn: Connection,
        room_id: str,
        clinician_external_id: str,
        client_external_id: str,
        session_setting: str,
        note_type: str | None,
        *,
        waits_for_room: bool = False,
    ) -> Session:
        """A new session in ``room_id``: ``starting`` until the room's device confirms
        (``waits_for_room``: there is a device link), else ``recording``. Its Blueprint
        session is created now, so the upload at the end does not wait for it."""
        if not rooms.exists(conn, room_id):
            raise InvalidReference(
                f"room {room_id} is not provisioned", code="room_not_provisioned"
            )
        device = registry.get(conn, room_id)
        if device is not None and device.revoked_at is not None:
            raise InvalidReference(
                f"room {room_id}'s device is revoked: nothing can record there until"
                f" `room-gateway device add {room_id} --rotate` admits it again",
                code="room_revoked",
            )
        if records.get_clinician(conn, clinician_external_id) is None:
            raise InvalidReference(
                f"clinician {clinician_external_id} not found; PUT it first",
                code="unknown_clinician",
            )
        client = records.get_client(conn, client_external_id)
        if client is None:
            raise InvalidReference(
                f"client {client_external_id} not found; PUT it first", code="unknown_client"
            )
        try:
            session = sessions.insert(
                conn,
                room_id,
                clinician_external_id,
                client_external_id,
                session_setting,
                note_type,
                state="starting" if waits_for_room else "recording",
            )
        except RoomBusy as exc:
            active = sessions.active_in_room(conn, room_id)
            raise Conflict(
                f"{exc} ({active.id if active else 'unknown'})", code="room_busy"
            ) from None
        self.enqueue(
            conn,
            JobKind.CREATE_SESSION,
            {"session_id": session.id},
            session_id=session.id,
            key=f"{JobKind.CREATE_SESSION}:{session.id}",
        )
        return session

    def stop(self, conn: Connection, session_id: str) -> Session:
        """Stop recording; repeating it, or stopping a session already past, is harmless."""
        session = self.get(conn, session_id)
        stopped = sessions.transition(conn, session_id, "stopping", STOPPABLE_FROM, step="stopped")
        return stopped or session

    def pause(self, conn: Connection, session_id: str, *, pause: bool) -> Session:
        """The partner pauses (or resumes) a session: ``recording`` <-> ``paused``. A
        session still ``starting`` stays so (its room begins as asked). Repeating it is
        harmless; a session past recording cannot be paused (``session_not_recording``)."""
        session = self.get(conn, session_id)
        if session.state not in ("starting", "recording", "paused"):
            raise Conflict(
                f"session {session_id} is {session.state}; only a starting, recording or"
                " paused session can be paused or resumed",
                code="session_not_recording",
            )
        if session.state == "starting":
            sessions.add_event(conn, session_id, "paused" if pause else "resumed", "partner")
            return session
        moved = sessions.transition(
            conn,
            session_id,
            "paused" if pause else "recording",
            _PAUSABLE if pause else _RESUMABLE,
            step="paused" if pause else "resumed",
            detail="partner",
        )
        return moved or session

    def room_paused(
        self, conn: Connection, session_id: str, *, pause: bool, source: str, at: float
    ) -> Session | None:
        """The room paused (or resumed) by itself: a button, its "do not record" switch,
        or its refusal of the partner's resume. ``at``: the device's time."""
        return sessions.transition(
            conn,
            session_id,
            "paused" if pause else "recording",
            _PAUSABLE if pause else _RESUMABLE,
            step="paused" if pause else "resumed",
            detail=source,
            at=at,
        )

    def recording_started(self, conn: Connection, session_id: str, how: str) -> Session | None:
        """The room records the session (its start confirmed, its state or its audio say
        so): ``starting`` becomes ``recording``. A session failed at its start's deadline
        whose audio turns up after all is taken back: audio is never dropped because a
        confirmation was missed."""
        session = sessions.get(conn, session_id)
        if session is None:
            return None
        if (
            session.state == "failed"
            and session.resume_state == "starting"
            and sessions.active_in_room(conn, session.room_id) is None
        ):
            sessions.resume(conn, session_id)
        want = desired.get(conn, session.room_id)
        paused = want is not None and want.session_id == session_id and want.state == "paused"
        return sessions.transition(
            conn,
            session_id,
            "paused" if paused else "recording",
            _STARTING,
            step="recording_started",
            detail=f"{how}, paused" if paused else how,
        )

    def cancel(self, conn: Connection, session_id: str) -> Session:
        """Cancel before the audio leaves for Blueprint: the session ends ``cancelled``, its
        audio (chunks and assembled file) is deleted now and never uploaded. Repeating it is
        harmless; a session whose audio is at Blueprint already cannot be cancelled."""
        session = self.get(conn, session_id)
        if session.state == "cancelled":
            return session
        was = session.resume_state if session.state == "failed" else session.state
        if was not in sessions.CANCELLABLE_STATES:
            raise Conflict(
                f"session {session_id} is {session.state}"
                + (f" (was {was})" if session.state == "failed" else "")
                + "; its audio is at Blueprint already, so it cannot be cancelled",
                code="session_not_cancellable",
            )
        cancelled = sessions.transition(
            conn,
            session_id,
            "cancelled",
            (session.state,),
            step="cancelled",
            detail=f"was {session.state}; audio discarded, not uploaded",
        )
        assert cancelled is not None
        for job in jobs.for_session(conn, session_id):
            if job.state == "failed":  # nothing left to retry: the session is over
                jobs.complete(conn, job.id)
        self.discard_audio(conn, session_id)
        return cancelled

    def discard_audio(self, conn: Connection, session_id: str) -> None:
        """Delete the session's audio now (chunks, assembled file), e.g. after a cancel."""
        self.enqueue(
            conn,
            JobKind.PURGE_AUDIO,
            {"session_id": session_id},
            key=f"{JobKind.PURGE_AUDIO}:{session_id}",
        )

    def attach_audio(
        self, conn: Connection, session_id: str, audio_path: str, content_type: str
    ) -> Session:
        """The session's complete audio is at ``audio_path``: queue its upload.

        The device link calls this once a session is assembled; tests and demos call it
        through ``POST /v1/sessions/{id}/audio`` or ``room-gateway session attach-audio``.
        """
        session = self.get(conn, session_id)
        if session.state not in UPLOADABLE_FROM:
            raise Conflict(
                f"session {session_id} is {session.state}; audio is already attached",
                code="audio_already_attached",
            )
        sessions.set_audio(conn, session_id, audio_path, content_type)
        ready = sessions.transition(
            conn, session_id, "audio_ready", UPLOADABLE_FROM, step="audio_ready"
        )
        assert ready is not None
        self.enqueue(
            conn,
            JobKind.UPLOAD_AUDIO,
            {"session_id": session_id},
            session_id=session_id,
            key=f"{JobKind.UPLOAD_AUDIO}:{session_id}",
        )
        return ready

    def get(self, conn: Connection, session_id: str) -> Session:
        session = sessions.get(conn, session_id)
        if session is None:
            raise NotFound(f"session {session_id} not found", code="session_not_found")
        return session

    # --- job outcomes ---------------------------------------------------------------------

    def blueprint_session_created(
        self, conn: Connection, session_id: str, blueprint_session_id: str
    ) -> None:
        sessions.set_blueprint_session_id(conn, session_id, blueprint_session_id, self.environment)
        sessions.add_event(conn, session_id, "blueprint_session_created", blueprint_session_id)

    def upload_started(self, conn: Connection, session_id: str) -> Session | None:
        """Move to uploading; None if the session is no longer waiting for its upload."""
        return sessions.transition(
            conn, session_id, "uploading", ("audio_ready", "uploading"), step="upload_started"
        )

    def upload_finished(self, conn: Connection, session_id: str) -> None:
        moved = sessions.transition(
            conn, session_id, "processing", _UPLOADING, step="audio_uploaded"
        )
        if moved is None:  # a webhook overtook us; keep the later state, record the step
            sessions.add_event(conn, session_id, "audio_uploaded")
        session = moved or sessions.get(conn, session_id)
        if session is not None:
            self._notify(conn, session, SessionEvent.AUDIO_UPLOADED)

    def artifact_fetched(
        self,
        conn: Connection,
        session_id: str,
        kind: ArtifactKind,
        event_type: str,
        body: dict[str, Any],
    ) -> None:
        """Store an artifact; the first progress note makes the session notes_ready."""
        artifacts.save(conn, session_id, kind, event_type, body)
        sessions.add_event(conn, session_id, f"{kind}_fetched", event_type)
        if kind != "progress_note":
            return
        ready = sessions.transition(
            conn, session_id, "notes_ready", AFTER_UPLOAD, step="notes_ready"
        )
        if ready is not None:
            jobs.settle(conn, poll_key(session_id))  # the note is here: no need to ask
            self._notify(conn, ready, SessionEvent.NOTES_READY)
            return
        session = sessions.get(conn, session_id)
        if session is not None and session.state == "notes_ready":
            self._notify(conn, session, SessionEvent.NOTE_UPDATED)

    def artifact_fetch_failed(self, conn: Connection, session_id: str, reason: str) -> None:
        """An artifact could not be fetched: the session fails, unless its note is already
        here (a lost transcript does not take back a ready note; the timeline says so)."""
        session = sessions.get(conn, session_id)
        if session is not None and session.state == "notes_ready":
            sessions.add_event(conn, session_id, "fetch_failed", reason)
        else:
            self.failed(conn, session_id, reason)

    def failed(self, conn: Connection, session_id: str, reason: str) -> bool:
        """Fail the session and tell its notifiers; False (the timeline records the reason
        as ``failure_ignored``) when it has ended already: a finished session's note is
        never taken back by a late failure, and nobody is told "failed" for it."""
        session = sessions.mark_failed(conn, session_id, reason)
        if session is not None:
            self._notify(conn, session, SessionEvent.FAILED)
            return True
        current = sessions.get(conn, session_id)
        if current is not None and current.state == "notes_ready":
            sessions.add_event(conn, session_id, "failure_ignored", reason)
        return False

    def resumed(self, conn: Connection, session_id: str) -> None:
        """A failed job of this session was retried: take the session back where it was."""
        session = sessions.get(conn, session_id)
        if session is None:
            return
        active = sessions.active_in_room(conn, session.room_id)
        if session.resume_state in sessions.ACTIVE_STATES and active is not None:
            # its room has started another session since
            sessions.add_event(conn, session_id, "not_resumed", "room has a newer session")
            return
        sessions.resume(conn, session_id)

    def _notify(self, conn: Connection, session: Session, event: SessionEvent) -> None:
        for notifier in self._notifiers:
            notifier(conn, session, event)
