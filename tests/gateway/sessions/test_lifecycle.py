"""The session state machine on a real store: which job follows which, late and repeated
events, and what notifiers hear (the hook the device link will use)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway import rooms
from gateway.errors import Conflict, InvalidReference, NotFound
from gateway.jobs import queue as jobs
from gateway.sessions import records
from gateway.sessions import states as sessions
from gateway.sessions.lifecycle import SessionEvent, SessionLifecycle
from gateway.sessions.states import Session
from gateway.settings import JobSettings
from gateway.store import Connection, Database, Location

NOTE = {"id": "note-1", "note": []}


@pytest.fixture
def conn(store_location: Location) -> Iterator[Connection]:
    db = Database.open(store_location)
    with db.transaction() as connection:
        rooms.add(connection, "room-1")
        records.put_clinician(connection, "clin-1", "Adelaide", "Quintrell", None)
        records.put_client(connection, "client-1", "Bartholomew", "Zanzibarre", "clin-1")
        yield connection
    db.close()


@pytest.fixture
def heard() -> list[tuple[str, SessionEvent]]:
    return []


@pytest.fixture
def lifecycle(heard: list[tuple[str, SessionEvent]]) -> SessionLifecycle:
    flow = SessionLifecycle(JobSettings(), "bpenv_test")

    def notifier(conn: Connection, session: Session, event: SessionEvent) -> None:
        heard.append((session.id, event))

    flow.add_notifier(notifier)
    return flow


def started(conn: Connection, lifecycle: SessionLifecycle) -> Session:
    return lifecycle.start(conn, "room-1", "clin-1", "client-1", "in-person", None)


def kinds(conn: Connection, session_id: str) -> list[str]:
    return [job.kind for job in jobs.for_session(conn, session_id)]


def test_start_queues_the_blueprint_session_and_busies_the_room(
    conn: Connection, lifecycle: SessionLifecycle
) -> None:
    session = started(conn, lifecycle)
    assert session.state == "recording" and session.id.startswith("ses_")
    assert kinds(conn, session.id) == ["create_session"]
    with pytest.raises(Conflict, match=session.id):
        started(conn, lifecycle)
    with pytest.raises(InvalidReference, match="room room-2 is not provisioned"):
        lifecycle.start(conn, "room-2", "clin-1", "client-1", "in-person", None)
    with pytest.raises(InvalidReference, match="client nobody not found"):
        lifecycle.start(conn, "room-1", "clin-1", "nobody", "in-person", None)


def test_stop_and_attach_audio_queue_one_upload(
    conn: Connection, lifecycle: SessionLifecycle
) -> None:
    session = started(conn, lifecycle)
    assert lifecycle.stop(conn, session.id).state == "stopping"
    assert lifecycle.stop(conn, session.id).state == "stopping"  # harmless to repeat
    ready = lifecycle.attach_audio(conn, session.id, "/audio/x.flac", "audio/flac")
    assert ready.state == "audio_ready" and ready.audio_path == "/audio/x.flac"
    assert kinds(conn, session.id) == ["create_session", "upload_audio"]
    with pytest.raises(Conflict, match="audio_ready"):
        lifecycle.attach_audio(conn, session.id, "/audio/y.flac", "audio/flac")
    assert lifecycle.stop(conn, session.id).state == "audio_ready"  # past recording: unchanged
    started(conn, lifecycle)  # the room is free again
    with pytest.raises(NotFound):
        lifecycle.stop(conn, "ses_nope")


def test_notes_ready_then_updated_and_a_webhook_overtaking_the_upload(
    conn: Connection, lifecycle: SessionLifecycle, heard: list
) -> None:
    session = started(conn, lifecycle)
    lifecycle.attach_audio(conn, session.id, "/audio/x.flac", "audio/flac")
    assert lifecycle.upload_started(conn, session.id).state == "uploading"
    # Blueprint's webhook arrives before our upload call has returned.
    lifecycle.artifact_fetched(conn, session.id, "progress_note", "progress_note_generated", NOTE)
    lifecycle.upload_finished(conn, session.id)
    assert sessions.get(conn, session.id).state == "notes_ready"
    lifecycle.artifact_fetched(conn, session.id, "transcript", "transcript_ready", {"t": []})
    lifecycle.artifact_fetched(conn, session.id, "progress_note", "progress_note_finalized", NOTE)
    assert heard == [
        (session.id, SessionEvent.NOTES_READY),
        (session.id, SessionEvent.AUDIO_UPLOADED),
        (session.id, SessionEvent.NOTE_UPDATED),
    ]
    steps = [entry.step for entry in sessions.timeline(conn, session.id)]
    assert steps == [
        "created", "audio_ready", "upload_started", "progress_note_fetched", "notes_ready",
        "audio_uploaded", "transcript_fetched", "progress_note_fetched",
    ]  # fmt: skip


def test_a_lost_transcript_does_not_take_back_a_ready_note(
    conn: Connection, lifecycle: SessionLifecycle, heard: list
) -> None:
    session = started(conn, lifecycle)
    lifecycle.attach_audio(conn, session.id, "/audio/x.flac", "audio/flac")
    lifecycle.artifact_fetched(conn, session.id, "progress_note", "progress_note_generated", NOTE)
    lifecycle.artifact_fetch_failed(conn, session.id, "fetch_artifact failed: HTTP 404")
    assert sessions.get(conn, session.id).state == "notes_ready"
    assert sessions.timeline(conn, session.id)[-1].step == "fetch_failed"
    assert SessionEvent.FAILED not in [event for _, event in heard]


def test_failure_and_resumption(conn: Connection, lifecycle: SessionLifecycle, heard: list) -> None:
    session = started(conn, lifecycle)
    lifecycle.attach_audio(conn, session.id, "/audio/x.flac", "audio/flac")
    lifecycle.failed(conn, session.id, "upload_audio failed: HTTP 503")
    lifecycle.failed(conn, session.id, "a second reason is not recorded")
    failed = sessions.get(conn, session.id)
    assert (failed.state, failed.error) == ("failed", "upload_audio failed: HTTP 503")
    assert heard == [(session.id, SessionEvent.FAILED)]
    lifecycle.resumed(conn, session.id)
    resumed = sessions.get(conn, session.id)
    assert (resumed.state, resumed.error) == ("audio_ready", None)


def test_the_timeline_reads_in_the_order_of_its_times(
    conn: Connection, lifecycle: SessionLifecycle
) -> None:
    """Events are written by concurrent transactions (two artifact fetches, a device's
    report) whose rows may land in another order than their times, and a device's pause
    carries the device's time: the timeline is in time order all the same (rows of one
    time in the order they were written)."""
    session = started(conn, lifecycle)
    first_at = sessions.timeline(conn, session.id)[0].at
    sessions.add_event(conn, session.id, "transcript_fetched", at=first_at + 2.0)
    sessions.add_event(conn, session.id, "progress_note_fetched", at=first_at + 1.0)
    sessions.add_event(conn, session.id, "same_time_a", at=first_at + 3.0)
    sessions.add_event(conn, session.id, "same_time_b", at=first_at + 3.0)
    timeline = sessions.timeline(conn, session.id)
    assert [entry.step for entry in timeline] == [
        "created", "progress_note_fetched", "transcript_fetched", "same_time_a", "same_time_b",
    ]  # fmt: skip
