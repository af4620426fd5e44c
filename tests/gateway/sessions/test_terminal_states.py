"""Terminal states stay terminal, and a revoked room records nothing (issue 10, rows 15-16).

Real processes: mosquitto from broker-config's files, `room-gateway serve` with its relay
and a partner callback, the simulator as Blueprint over HTTP, the room device played by an
MQTT client with the device's own credentials. Webhooks are signed as Blueprint signs them.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.blueprint import signature
from gateway.blueprint.defaults import DEFAULT_CLIENT_SECRET
from runtime.codec import encode
from tests.gateway.callback_receiver import CallbackReceiver
from tests.gateway.conftest import SimulatorProcess, StoreEnv, steps
from tests.gateway.deployment import Deployment, tone
from tests.gateway.problems import assert_problem
from tests.gateway.relay.fake_device import FakeDevice, command, notified
from tests.support.mqtt_probe import Probe
from tests.support.postgres import ON_BOTH_ENGINES

pytestmark = [ON_BOTH_ENGINES, pytest.mark.timeout(180), pytest.mark.slow]
ROOMS = ("room-1", "room-2", "room-3")
CALLBACK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@pytest.fixture(scope="module")
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory,
    blueprint_sim: SimulatorProcess,
    store_env: StoreEnv,
    receiver: CallbackReceiver,
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("terminal")
    env = {
        **store_env(root / "gateway"),
        "ROOM_GATEWAY_PARTNER__CALLBACK_URL": receiver.url,
        "ROOM_GATEWAY_PARTNER__CALLBACK_SECRET": CALLBACK_SECRET,
    }
    deployment = Deployment(root, blueprint_sim.url, ROOMS, None, None, (), **env).start()
    yield deployment
    deployment.stop()


@pytest.fixture
def linked(
    deployed: Deployment, sim: SimulatorProcess, request: pytest.FixtureRequest
) -> Deployment:
    return deployed.with_people(sim, request.node.originalname)


def deliver(deployed: Deployment, event_type: str, payload: dict) -> httpx.Response:
    body = json.dumps({"eventType": event_type, "payload": payload}).encode()
    headers = {
        "Content-Type": "application/json",
        signature.HEADER: signature.sign(body, DEFAULT_CLIENT_SECRET),
    }
    return httpx.post(deployed.gateway.webhook_url, content=body, headers=headers, timeout=10)


def to_notes_ready(deployed: Deployment, device: FakeDevice) -> dict:
    """A session in the device's room, recorded, stopped, uploaded, its note fetched."""
    gateway = deployed.gateway
    session_id = gateway.start_session(device.device_id, *deployed.people)
    device.wait_for(lambda m: command("start")(m) and m["session_id"] == session_id)
    assert gateway.http.post(f"/v1/sessions/{session_id}/stop").status_code == 200
    audio = deployed.root / f"audio-{time.monotonic_ns()}.flac"
    audio.write_bytes(encode(tone(1.0), "flac"))
    assert gateway.attach_audio(session_id, audio).status_code == 202
    return gateway.wait_for_state(session_id, "notes_ready", timeout=40)


def partner_events(receiver: CallbackReceiver, session_id: str) -> list[str]:
    return [
        json.loads(r.body)["event"]
        for r in receiver.delivered()
        if json.loads(r.body)["session_id"] == session_id
    ]


def test_a_transcript_error_after_the_note_is_recorded_not_obeyed(
    linked: Deployment, receiver: CallbackReceiver
) -> None:
    gateway = linked.gateway
    device = FakeDevice(linked, "room-1").connect()
    device.answer = lambda body: (True, None)
    try:
        done = to_notes_ready(linked, device)
        session_id = done["session_id"]
        device.wait_for(notified("notes_ready", session_id))
        assert receiver.wait_for(lambda r: json.loads(r.body)["session_id"] == session_id)

        late = {"sessionId": done["blueprint"]["session_id"], "error": "audio too short"}
        answer = deliver(linked, "session_transcript_error", late)
        assert answer.status_code == 200 and answer.json() == {"status": "ignored"}
        after = gateway.session(session_id)
        assert after["state"] == "notes_ready" and after["error"] is None
        ignored = [e for e in after["timeline"] if e["step"] == "webhook_ignored"]
        assert len(ignored) == 1 and "notes_ready" in ignored[0]["detail"]
        assert "audio too short" in ignored[0]["detail"]
        artifacts = gateway.http.get(f"/v1/sessions/{session_id}/artifacts").json()
        assert artifacts["progress_note"] is not None, "the note stays"

        # Sentinel: a second session in the same room reaches the device and the partner
        # after the late error would have; neither was ever told the first one failed.
        second = to_notes_ready(linked, device)["session_id"]
        device.wait_for(notified("notes_ready", second))
        assert receiver.wait_for(
            lambda r: json.loads(r.body) == {"event": "notes_ready", "session_id": second}
        )
        told = [m for m in device.received if m["_topic"] == "notify"]
        assert not [m for m in told if m["session_id"] == session_id and m["type"] == "failed"]
        assert partner_events(receiver, session_id) == ["notes_ready"]
        assert gateway.session(session_id)["state"] == "notes_ready"
    finally:
        device.disconnect()


def test_a_transcript_error_before_the_audio_went_to_blueprint_is_ignored(
    linked: Deployment,
) -> None:
    """Out of order: the session is still recording; it records on."""
    gateway = linked.gateway
    session_id = gateway.start_session("room-3", *linked.people)
    started = gateway.wait_for_session(session_id, lambda s: s["blueprint"]["session_id"])
    early = {"sessionId": started["blueprint"]["session_id"], "error": "no audio"}
    answer = deliver(linked, "session_transcript_error", early)
    assert answer.status_code == 200 and answer.json() == {"status": "ignored"}
    now = gateway.session(session_id)
    assert now["state"] in ("starting", "recording") and "webhook_ignored" in steps(now)
    assert gateway.http.post(f"/v1/sessions/{session_id}/cancel").status_code == 200


def test_a_session_cannot_start_in_a_revoked_room(
    linked: Deployment, sim: SimulatorProcess
) -> None:
    gateway = linked.gateway
    room = "room-2"
    with Probe(linked.broker, linked.observer, linked.gateway_password) as probe:
        gateway.cli("device", "revoke", room)
        answer = gateway.http.post(
            "/v1/sessions",
            json={
                "room": room,
                "clinician_external_id": linked.people[0],
                "client_external_id": linked.people[1],
            },
        )
        problem = assert_problem(answer, 422, "room_revoked")
        assert room in problem["detail"] and "--rotate" in problem["detail"]
        listed = gateway.http.get("/v1/sessions", params={"room": room}).json()
        assert listed["items"] == []

        # Sentinel: a start in another room reaches the broker; none went to the revoked one.
        other = gateway.start_session("room-3", *linked.people)
        probe.wait_for(probe.on("rooms/room-3/cmd", type="start", session_id=other))
        assert not [m for m in probe.messages if m.topic == f"rooms/{room}/cmd"]
        assert gateway.http.post(f"/v1/sessions/{other}/cancel").status_code == 200

    # Re-admitted (new credentials), the room records again.
    linked.add_device(room, "--rotate")
    again = gateway.start_session(room, *linked.people)
    assert gateway.session(again)["state"] in ("starting", "recording")
    assert gateway.http.post(f"/v1/sessions/{again}/cancel").status_code == 200
