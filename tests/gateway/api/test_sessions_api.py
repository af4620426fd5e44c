"""Listing, cancel, delete and Idempotency-Key: the partner API as integrators expect it.

Seen before: ``GET /v1/sessions`` was 405, there was no cancel and no delete, and a retried
``POST /v1/sessions`` (its answer lost) was a 409 for the room its first try made busy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.gateway.conftest import GatewayProcess, SimulatorProcess
from tests.gateway.problems import assert_problem
from tests.support.postgres import ON_BOTH_ENGINES

pytestmark = [ON_BOTH_ENGINES, pytest.mark.timeout(180)]


def body(room: str, clinician: str = "clin-s", client: str = "client-s") -> dict[str, Any]:
    return {"room": room, "clinician_external_id": clinician, "client_external_id": client}


@pytest.fixture(scope="module")
def people(blueprint_sim: SimulatorProcess, gateway: GatewayProcess) -> GatewayProcess:
    gateway.put_people("clin-s", "client-s")
    gateway.put_people("clin-t", "client-t")
    return gateway


def listing(gateway: GatewayProcess, **params: Any) -> dict[str, Any]:
    answer = gateway.http.get("/v1/sessions", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_list_sessions_filters_and_pages(people: GatewayProcess) -> None:
    started = [
        people.start_session("room-1", "clin-s", "client-s"),
        people.start_session("room-2", "clin-t", "client-t"),
        people.start_session("room-3", "clin-s", "client-s"),
    ]
    people.http.post(f"/v1/sessions/{started[0]}/stop")
    newest_first = list(reversed(started))

    seen: list[str] = []
    page = listing(people, limit=2)
    while True:
        seen += [item["session_id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        page = listing(people, limit=2, cursor=page["next_cursor"])
    assert [s for s in seen if s in started] == newest_first
    assert len(seen) == len(set(seen))

    assert [i["session_id"] for i in listing(people, room="room-2")["items"]] == [started[1]]
    by_client = listing(people, client_external_id="client-s")["items"]
    assert [i["session_id"] for i in by_client] == [started[2], started[0]]
    stopping = listing(people, state="stopping", clinician_external_id="clin-s")["items"]
    assert [i["session_id"] for i in stopping] == [started[0]]
    both = listing(people, state=["stopping", "recording"], room="room-1")["items"]
    assert [i["session_id"] for i in both] == [started[0]]
    assert listing(people, created_after="2999-01-01T00:00:00Z")["items"] == []
    assert len(listing(people, created_before="2999-01-01T00:00:00Z")["items"]) >= 3
    assert "timeline" not in by_client[0]  # a listing is a summary

    cases: list[tuple[dict[str, str | int], str]] = [
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"state": "asleep"}, "invalid_request"),
        ({"limit": 0}, "invalid_request"),
        ({"created_after": "yesterday"}, "invalid_request"),
        ({"created_after": "2026-01-01T00:00:00"}, "invalid_request"),  # no zone
    ]
    for params, code in cases:
        assert_problem(people.http.get("/v1/sessions", params=params), 422, code)
    for started_id in started:
        people.http.post(f"/v1/sessions/{started_id}/cancel")


def test_cancel_discards_and_never_uploads(
    people: GatewayProcess, blueprint_sim: SimulatorProcess, flac_audio: Path
) -> None:
    session_id = people.start_session("room-4", "clin-s", "client-s")
    cancelled = people.http.post(f"/v1/sessions/{session_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["timeline"][-1]["step"] == "cancelled"
    again = people.http.post(f"/v1/sessions/{session_id}/cancel")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"
    assert_problem(people.attach_audio(session_id, flac_audio), 409, "audio_already_attached")
    # The room is free again.
    other = people.start_session("room-4", "clin-s", "client-s")
    assert people.attach_audio(other, flac_audio).status_code == 202
    people.wait_for_state(other, "processing")
    assert_problem(people.http.post(f"/v1/sessions/{other}/cancel"), 409, "session_not_cancellable")
    details = blueprint_sim.state()["session_details"].values()
    audio = {detail["session_external_id"]: detail["audio_bytes"] for detail in details}
    assert audio[other]
    assert audio.get(session_id) is None  # created at the start (or not), never given audio
    assert not list((people.state_dir / "audio").glob(f"{session_id}*"))
    assert_problem(people.http.post("/v1/sessions/ses_nope/cancel"), 404, "session_not_found")


def test_idempotency_key_returns_the_first_answer(people: GatewayProcess) -> None:
    headers = {"Idempotency-Key": "retry-me-0001"}
    first = people.http.post("/v1/sessions", json=body("room-5"), headers=headers)
    assert first.status_code == 201, first.text
    retried = people.http.post("/v1/sessions", json=body("room-5"), headers=headers)
    assert retried.status_code == 201, retried.text
    assert retried.json()["session_id"] == first.json()["session_id"]
    assert retried.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    # Without the key the same request is a new attempt: the room is busy with the first.
    assert_problem(people.http.post("/v1/sessions", json=body("room-5")), 409, "room_busy")
    # The same key for another request is refused, whatever it asks.
    other = people.http.post("/v1/sessions", json=body("room-6"), headers=headers)
    assert_problem(other, 422, "idempotency_key_reused")
    # An error is not kept: the key can be used once the request succeeds.
    fresh = {"Idempotency-Key": "retry-me-0002"}
    assert_problem(
        people.http.post("/v1/sessions", json=body("room-5"), headers=fresh), 409, "room_busy"
    )
    stop = f"/v1/sessions/{first.json()['session_id']}/stop"
    assert people.http.post(stop, headers=fresh).json()["state"] == "stopping"
    replayed = people.http.post(stop, headers=fresh)
    assert replayed.headers["idempotent-replayed"] == "true"
    # Keys belong to one partner token: another token's same key is its own.
    token = people.cli("partner-token", "create").stdout.strip()
    theirs = people.http.post(
        "/v1/sessions",
        json=body("room-6"),
        headers={**headers, "Authorization": f"Bearer {token}"},
    )
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["session_id"] != first.json()["session_id"]
    people.http.post(f"/v1/sessions/{theirs.json()['session_id']}/cancel")
    assert_problem(
        people.http.post("/v1/sessions", json=body("room-6"), headers={"Idempotency-Key": ""}),
        422,
        "invalid_request",
    )


def test_delete_forgets_locally_and_a_later_put_finds_blueprints_record(
    people: GatewayProcess, blueprint_sim: SimulatorProcess
) -> None:
    people.put_people("clin-d", "client-d")
    client_id = people.http.get("/v1/clients/client-d").json()["blueprint_id"]
    assert_problem(people.http.delete("/v1/clinicians/clin-d"), 409, "clinician_has_clients")
    session_id = people.start_session("room-7", "clin-d", "client-d")
    assert_problem(people.http.delete("/v1/clients/client-d"), 409, "person_in_session")
    people.http.post(f"/v1/sessions/{session_id}/cancel")

    assert people.http.delete("/v1/clients/client-d").status_code == 204
    assert people.http.delete("/v1/clinicians/clin-d").status_code == 204
    assert_problem(people.http.get("/v1/clients/client-d"), 404, "client_not_found")
    assert_problem(people.http.delete("/v1/clients/client-d"), 404, "client_not_found")
    assert_problem(people.http.get("/v1/clinicians/clin-d"), 404, "clinician_not_found")
    names = people.query(
        "SELECT first_name, last_name FROM clients WHERE external_id = ?", "client-d"
    )
    assert [tuple(row) for row in names] == [("", "")]
    # The session that named them is still there, ids only.
    assert people.session(session_id)["client_external_id"] == "client-d"

    people.put_people("clin-d", "client-d")
    assert people.http.get("/v1/clients/client-d").json()["blueprint_id"] == client_id
    assert len(blueprint_sim.records("/clients", externalId="client-d")) == 1
