"""No note reaches the wrong patient: a validly signed webhook for one session that names
another session's artifact is refused, visibly (issue 10). Real gateway, the simulator as
Blueprint over real HTTP; the webhooks are signed as Blueprint signs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from gateway.blueprint import paths, signature
from gateway.blueprint.defaults import DEFAULT_CLIENT_SECRET
from tests.gateway.conftest import GatewayProcess, SimulatorProcess, steps

pytestmark = pytest.mark.timeout(120)


def deliver(gateway: GatewayProcess, event_type: str, payload: dict) -> httpx.Response:
    body = json.dumps({"eventType": event_type, "payload": payload}).encode()
    headers = {
        "Content-Type": "application/json",
        signature.HEADER: signature.sign(body, DEFAULT_CLIENT_SECRET),
    }
    return httpx.post(gateway.webhook_url, content=body, headers=headers, timeout=10)


def recorded_session(gateway: GatewayProcess, room: str, people: str, audio: Path) -> dict:
    """A session whose audio Blueprint has: started, stopped, its audio attached."""
    gateway.put_people(f"clin-{people}", f"client-{people}")
    session_id = gateway.start_session(room, f"clin-{people}", f"client-{people}")
    assert gateway.http.post(f"/v1/sessions/{session_id}/stop").status_code == 200
    assert gateway.attach_audio(session_id, audio).status_code == 202
    return gateway.wait_for_session(session_id, lambda s: "audio_uploaded" in steps(s))


def note_payload(session: dict, note_id: str, url: str, external_id: str | None = None) -> dict:
    blueprint = session["blueprint"]
    return {
        "progressNoteId": note_id,
        "sessionId": blueprint["session_id"],
        "sessionExternalId": external_id or session["session_id"],
        "clientId": blueprint["client_id"],
        "clinicianId": blueprint["clinician_id"],
        "clinicId": "clinic",
        "organizationId": "org",
        "progressNoteUrl": url,
    }


def test_a_webhook_naming_another_sessions_note_is_refused(
    linked: GatewayProcess, sim: SimulatorProcess, flac_audio: Path
) -> None:
    gateway = linked
    other = recorded_session(gateway, "room-1", "b", flac_audio)
    gateway.wait_for_state(other["session_id"], "notes_ready")
    theirs = gateway.http.get(f"/v1/sessions/{other['session_id']}/artifacts").json()
    their_note = theirs["progress_note"]["body"]
    their_url = sim.url + paths.progress_note(their_note["id"])

    sim.faults(webhook_max_attempts=500)  # (every 0.2 s: until the callback is back)
    sim.set_callback(None)  # session A's own webhooks do not come yet
    mine = recorded_session(gateway, "room-2", "a", flac_audio)
    mine = gateway.wait_for_state(mine["session_id"], "processing")

    # A's Blueprint session id, B's note (its id and URL).
    answer = deliver(
        gateway, "progress_note_generated", note_payload(mine, their_note["id"], their_url)
    )
    assert answer.status_code == 200 and answer.json() == {"status": "queued"}
    refused = gateway.wait_for_session(
        mine["session_id"], lambda s: "progress_note_refused" in steps(s)
    )
    assert refused["state"] == "processing", "the session waits for its own note"
    detail = next(e for e in refused["timeline"] if e["step"] == "progress_note_refused")
    assert other["blueprint"]["session_id"] in detail["detail"]
    assert their_note["note"][0]["content"] not in json.dumps(refused)
    kept = gateway.http.get(f"/v1/sessions/{mine['session_id']}/artifacts").json()
    assert kept["progress_note"] is None
    assert "progress_note refused" in gateway.log() and "Traceback" not in gateway.log()

    # A's Blueprint session id but B as the session external id: refused on arrival.
    crossed = note_payload(mine, "note-x", their_url, external_id=other["session_id"])
    answer = deliver(gateway, "progress_note_generated", crossed)
    assert answer.status_code == 200 and answer.json() == {"status": "refused"}
    assert "webhook_refused" in steps(gateway.session(mine["session_id"]))

    # The B session's own note is untouched, and A still takes its real note.
    assert gateway.session(other["session_id"])["state"] == "notes_ready"
    sim.set_callback(gateway.webhook_url)
    own = gateway.wait_for_state(mine["session_id"], "notes_ready", timeout=40)
    note = gateway.http.get(f"/v1/sessions/{own['session_id']}/artifacts").json()
    assert note["progress_note"]["body"]["sessionId"] == mine["blueprint"]["session_id"]
