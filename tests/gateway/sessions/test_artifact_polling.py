"""Webhooks that never come (issue 10, row 18): after ``blueprint.poll_after_s`` the gateway
asks Blueprint for the session's note itself (paths.SESSION_PROGRESS_NOTE, which the
simulator serves), every ``poll_interval_s``, ``poll_attempts`` times, then fails the
session with the reason; a note that came by webhook settles the poll; with replicas on
PostgreSQL a replica killed after the upload leaves the polling to the other.

Real `room-gateway serve` processes, the simulator as Blueprint over HTTP with its
webhooks switched off (Blueprint gave up delivering them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.conftest import GatewayFactory, GatewayProcess, SimulatorProcess, steps
from tests.support.eventually import eventually
from tests.support.postgres import ON_BOTH_ENGINES

pytestmark = [ON_BOTH_ENGINES, pytest.mark.timeout(120)]
POLLS = 4
POLL_ENV = {
    "ROOM_GATEWAY_BLUEPRINT__POLL_AFTER_S": "0.5",
    "ROOM_GATEWAY_BLUEPRINT__POLL_INTERVAL_S": "0.3",
    "ROOM_GATEWAY_BLUEPRINT__POLL_ATTEMPTS": str(POLLS),
}


@pytest.fixture(scope="module")
def gateway(gateway_factory: GatewayFactory) -> GatewayProcess:
    gateway = gateway_factory(**POLL_ENV)
    gateway.cli("room", "add", "room-1", "room-2", "room-3")
    return gateway


def uploaded(gateway: GatewayProcess, room: str, people: str, audio: Path) -> str:
    gateway.put_people(f"clin-{people}", f"client-{people}")
    session_id = gateway.start_session(room, f"clin-{people}", f"client-{people}")
    assert gateway.http.post(f"/v1/sessions/{session_id}/stop").status_code == 200
    assert gateway.attach_audio(session_id, audio).status_code == 202
    return session_id


def test_a_note_whose_webhook_never_came_is_asked_for(
    sim: SimulatorProcess, gateway: GatewayProcess, flac_audio: Path
) -> None:
    sim.set_callback(None)  # Blueprint makes the note but its webhook never arrives
    session_id = uploaded(gateway, "room-1", "poll", flac_audio)
    done = gateway.wait_for_state(session_id, "notes_ready")
    fetched = [e for e in done["timeline"] if e["step"] == "progress_note_fetched"]
    assert [e["detail"] for e in fetched] == ["progress_note_polled"]
    assert steps(done).index("audio_uploaded") < steps(done).index("notes_ready")
    note = gateway.http.get(f"/v1/sessions/{session_id}/artifacts").json()["progress_note"]
    assert note["body"]["sessionId"] == done["blueprint"]["session_id"]
    # The poll job records the note, then its own completion in a later transaction: seen
    # under load with the session notes_ready and its poll job still "running".
    eventually(
        lambda: not [j for j in gateway.session(session_id)["pending"] if j["state"] != "done"],
        what="every job of the session done",
    )
    assert "Traceback" not in gateway.log()


def test_polls_that_find_nothing_fail_the_session_with_the_reason(
    sim: SimulatorProcess, gateway: GatewayProcess, flac_audio: Path
) -> None:
    sim.set_callback(None)
    sim.faults(transcript_error_next=1)  # no note will ever exist (and its webhook is lost)
    session_id = uploaded(gateway, "room-2", "nothing", flac_audio)
    failed = gateway.wait_for_state(session_id, "failed")
    assert failed["error"].startswith("poll_artifacts failed: Blueprint sent no progress note")
    assert f"{POLLS} polls of Blueprint found none" in failed["error"]
    [poll] = [job for job in failed["pending"] if job["kind"] == "poll_artifacts"]
    assert (poll["state"], poll["attempts"]) == ("failed", POLLS)


def test_a_note_that_came_by_webhook_settles_the_poll(
    sim: SimulatorProcess, gateway_factory: GatewayFactory, flac_audio: Path
) -> None:
    hooked = gateway_factory(ROOM_GATEWAY_BLUEPRINT__POLL_AFTER_S="3600")
    hooked.cli("room", "add", "room-1")
    sim.set_callback(hooked.webhook_url)
    session_id = uploaded(hooked, "room-1", "hook", flac_audio)
    # notes_ready is committed by the fetch job, which the worker marks done just after:
    # wait for nothing pending (a poll still queued would stay pending for an hour).
    done = hooked.wait_for_session(
        session_id, lambda s: s["state"] == "notes_ready" and not s["pending"], 20
    )
    fetched = [e["detail"] for e in done["timeline"] if e["step"] == "progress_note_fetched"]
    assert fetched == ["progress_note_generated"], "the poll was settled by the note's arrival"
    hooked.stop()


def test_with_replicas_the_other_one_polls(
    sim: SimulatorProcess, gateway_factory: GatewayFactory, flac_audio: Path, engine: str
) -> None:
    if engine != "postgresql":
        pytest.skip("replicas share PostgreSQL (SQLite has one serve)")
    quick = {"ROOM_GATEWAY_JOBS__LEASE_S": "1", "ROOM_GATEWAY_BLUEPRINT__POLL_AFTER_S": "2"}
    first = gateway_factory(ROOM_GATEWAY_REPLICA="pa", **quick)
    first.cli("room", "add", "room-1")
    second = first.replica("pb").start()
    try:
        sim.set_callback(None)
        session_id = uploaded(first, "room-1", "replicas", flac_audio)
        first.wait_for_session(session_id, lambda s: "audio_uploaded" in steps(s))
        first.kill()  # before its poll is due: the other replica must ask
        done = second.wait_for_state(session_id, "notes_ready", timeout=40)
        fetched = [e["detail"] for e in done["timeline"] if e["step"] == "progress_note_fetched"]
        assert fetched == ["progress_note_polled"]
        assert "poll_artifacts done" in second.log()
    finally:
        second.stop()
