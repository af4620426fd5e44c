"""The room's desired state against what its device reports (the device shadow), on a real
`room-gateway serve` and a real mosquitto run without persistence, so a broker restart
forgets every queued command and every device session, as a fresh broker does.

A start is answered 202 ``starting``; it is sent again, same command id, whenever the
device's state shows it not done, until the device confirms it (by its answer, its state,
or audio of the session) or its deadline passes, and then the session fails naming what
was waited for. Audio that reached the gateway is never dropped for a lost confirmation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.gateway.conftest import SimulatorProcess, steps
from tests.gateway.deployment import Deployment, tone
from tests.gateway.relay.fake_device import FakeDevice, command, wait_for_step
from tests.support.eventually import eventually

pytestmark = pytest.mark.timeout(120)
EXPIRY_S = 8
ROOMS = tuple(f"shadow-{n}" for n in range(1, 12))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, blueprint_sim: SimulatorProcess):
    root = tmp_path_factory.mktemp("shadow")
    deployment = Deployment(
        root,
        blueprint_sim.url,
        ROOMS,
        ROOM_GATEWAY_MQTT__COMMAND_EXPIRY_S=str(EXPIRY_S),
        ROOM_GATEWAY_BROKER__PERSISTENCE="false",
    ).start()
    yield deployment
    deployment.stop()


_rooms = iter(ROOMS)


@pytest.fixture
def linked(
    deployed: Deployment, sim: SimulatorProcess, request: pytest.FixtureRequest
) -> Deployment:
    return deployed.with_people(sim, request.node.originalname)


@pytest.fixture
def device(linked: Deployment) -> Iterator[FakeDevice]:
    fake = FakeDevice(linked, next(_rooms))
    fake.answer = lambda body: (True, None)
    yield fake
    fake.disconnect()


def start(deployed: Deployment, room: str) -> dict:
    """POST /v1/sessions: always 202 ``starting`` here, whether the room is online or not."""
    body = {
        "room": room,
        "clinician_external_id": deployed.people[0],
        "client_external_id": deployed.people[1],
    }
    answer = deployed.gateway.http.post("/v1/sessions", json=body)
    assert (answer.status_code, answer.json()["state"]) == (202, "starting"), answer.text
    return answer.json()


def starts(device: FakeDevice) -> list[dict]:
    return [m for m in device.received if command("start")(m)]


def test_a_start_the_restarted_broker_forgot_is_sent_again_when_the_room_is_back(
    linked: Deployment, device: FakeDevice
) -> None:
    device.connect().disconnect()  # known to the broker, away: its session is kept...
    body = start(linked, device.device_id)  # the truth: it waits for the room
    session_id = body["session_id"]
    wait_for_step(linked, session_id, "start_sent")
    linked.broker.stop()  # ...until the broker restarts without persistence
    linked.broker.start()
    device.connect()
    device.state(recorder="idle")  # what the agent publishes at every connection
    order = device.wait_for(command("start"), timeout=15)
    assert order["session_id"] == session_id
    recording = linked.gateway.wait_for_state(session_id, "recording")
    assert "start_resent" in steps(recording) and "start_confirmed" in steps(recording)
    # Confirmed: the device's later states ask for nothing more.
    device.state(recorder="recording", session_id=session_id, last_command_id=order["command_id"])
    device.state(recorder="recording", session_id=session_id, last_command_id=order["command_id"])
    # The stop is the sentinel: a start re-sent for those states would have come first.
    linked.gateway.http.post(f"/v1/sessions/{session_id}/stop")
    device.wait_for(command("stop"))
    assert len(starts(device)) == 1


def test_a_room_offline_at_the_start_begins_when_it_comes_online(
    linked: Deployment, device: FakeDevice
) -> None:
    body = start(linked, device.device_id)  # never connected: no session to queue it in
    session_id = body["session_id"]
    time.sleep(EXPIRY_S / 2)
    assert linked.gateway.session(session_id)["state"] == "starting"
    device.connect()
    device.state(recorder="idle")
    assert device.wait_for(command("start"))["session_id"] == session_id
    linked.gateway.wait_for_state(session_id, "recording")
    linked.gateway.http.post(f"/v1/sessions/{session_id}/stop")
    device.wait_for(command("stop"))


@pytest.mark.slow
def test_a_start_never_confirmed_fails_naming_what_it_waited_for(
    linked: Deployment, device: FakeDevice
) -> None:
    body = start(linked, device.device_id)
    failed = linked.gateway.wait_for_state(body["session_id"], "failed", timeout=EXPIRY_S + 5)
    assert failed["error"] == (
        f"the room device was offline and did not come online within {EXPIRY_S} s"
    )
    # Online but silent: the start is asked for on each state, then fails as unanswered.
    device.answer = None
    device.connect()
    device.state(recorder="idle")
    body = start(linked, device.device_id)
    session_id = body["session_id"]
    device.wait_for(command("start"))
    device.state(recorder="idle")
    failed = linked.gateway.wait_for_state(session_id, "failed", timeout=EXPIRY_S + 5)
    assert failed["error"] == f"the room device did not confirm the start within {EXPIRY_S} s"
    ids = {m["command_id"] for m in starts(device) if m["session_id"] == session_id}
    assert len(ids) == 1, "every re-send carries the same command id"


@pytest.mark.slow
def test_the_devices_state_confirms_a_start_whose_answer_was_lost(
    linked: Deployment, device: FakeDevice
) -> None:
    device.answer = None  # its command_result never arrives
    device.connect()
    body = start(linked, device.device_id)
    session_id = body["session_id"]
    order = device.wait_for(command("start"))
    device.state(recorder="recording", session_id=session_id, last_command_id=order["command_id"])
    recording = linked.gateway.wait_for_state(session_id, "recording")
    assert "start_confirmed" in steps(recording)
    time.sleep(EXPIRY_S + 1.5)  # past the deadline: confirmed, so nothing fails
    assert linked.gateway.session(session_id)["state"] == "recording"
    linked.gateway.http.post(f"/v1/sessions/{session_id}/stop")
    device.wait_for(command("stop"))


@pytest.mark.slow
def test_audio_is_kept_when_the_start_was_never_confirmed(
    linked: Deployment, device: FakeDevice
) -> None:
    device.answer = None  # the agent died before its answer went out, and says nothing
    device.connect()
    room = device.device_id
    body = start(linked, room)
    session_id = body["session_id"]
    device.wait_for(command("start"))
    chunk = linked.seal(room, session_id, 0, tone(1.0))
    assert linked.put_chunk(room, session_id, chunk).status_code == 200
    recording = linked.gateway.wait_for_state(session_id, "recording")
    assert "recording_started" in steps(recording)
    time.sleep(EXPIRY_S + 1.5)  # the start's deadline passes unconfirmed
    assert linked.gateway.session(session_id)["state"] == "recording"
    linked.gateway.http.post(f"/v1/sessions/{session_id}/stop")
    assert linked.close(room, session_id, [chunk]).status_code == 200
    done = linked.gateway.wait_for_state(session_id, "notes_ready", timeout=20)
    assert done["audio"]["chunks_received"] == 1


@pytest.mark.slow
def test_audio_after_the_deadline_takes_the_failed_session_back(
    linked: Deployment, device: FakeDevice
) -> None:
    room = device.device_id
    body = start(linked, room)
    session_id = body["session_id"]
    linked.gateway.wait_for_state(session_id, "failed", timeout=EXPIRY_S + 5)
    chunk = linked.seal(room, session_id, 0, tone(1.0))  # it did record after all
    assert linked.put_chunk(room, session_id, chunk).status_code == 200
    back = linked.gateway.wait_for_state(session_id, "recording")
    assert back["error"] is None
    linked.gateway.http.post(f"/v1/sessions/{session_id}/stop")
    assert linked.close(room, session_id, [chunk]).status_code == 200
    linked.gateway.wait_for_state(session_id, "notes_ready", timeout=20)


def test_a_repeated_start_is_one_command_and_the_device_answers_it_again(
    linked: Deployment, device: FakeDevice
) -> None:
    device.connect()
    body = start(linked, device.device_id)
    session_id = body["session_id"]
    device.answer = None
    first = device.wait_for(command("start"))
    time.sleep(2.1)  # past RESEND_AFTER_S
    device.state(recorder="idle")  # not done yet: the same start again
    device.wait_for(lambda m: command("start")(m) and m is not first)
    again = [m["command_id"] for m in starts(device)]
    assert again == [first["command_id"]] * 2
    device.publish(
        "events",
        json.dumps({"type": "command_result", "command_id": first["command_id"], "ok": True}),
    )
    device.publish(
        "events",
        json.dumps({"type": "command_result", "command_id": first["command_id"], "ok": True}),
    )
    done = linked.gateway.wait_for_state(session_id, "recording")
    assert steps(done).count("start_confirmed") == 1
    assert steps(done).count("recording_started") == 1


def answered(device: FakeDevice, kind: str, session_id: str, **fields) -> dict:
    return device.wait_for(
        lambda m: (
            command(kind)(m)
            and m["session_id"] == session_id
            and all(m.get(k) == v for k, v in fields.items())
        )
    )


def test_pause_and_resume_from_the_partner_reach_the_room(
    linked: Deployment, device: FakeDevice
) -> None:
    device.connect()
    session_id = start(linked, device.device_id)["session_id"]
    linked.gateway.wait_for_state(session_id, "recording")
    http = linked.gateway.http
    paused = http.post(f"/v1/sessions/{session_id}/pause")
    assert (paused.status_code, paused.json()["state"]) == (200, "paused")
    order = answered(device, "pause", session_id)
    ids_only = {"at", "type", "command_id", "session_id", "generation"}
    assert set(order) - {"_topic"} == ids_only, "ids only"
    wait_for_step(linked, session_id, "pause_confirmed")
    assert http.post(f"/v1/sessions/{session_id}/pause").json()["state"] == "paused"
    resumed = http.post(f"/v1/sessions/{session_id}/resume")
    assert (resumed.status_code, resumed.json()["state"]) == (200, "recording")
    answered(device, "resume", session_id)
    # The room refuses a resume while its "do not record" switch is on: back to paused.
    http.post(f"/v1/sessions/{session_id}/pause")
    answered(device, "pause", session_id)
    device.answer = lambda body: (body["type"] != "resume", "do_not_record")
    http.post(f"/v1/sessions/{session_id}/resume")
    answered(device, "resume", session_id)
    back = wait_for_step(linked, session_id, "resume_refused")
    linked.gateway.wait_for_state(session_id, "paused")
    assert "resume_refused:do_not_record" in [e["detail"] for e in back["timeline"]] + [
        e["detail"] for e in linked.gateway.session(session_id)["timeline"]
    ]
    http.post(f"/v1/sessions/{session_id}/stop")
    answered(device, "stop", session_id)
    late = http.post(f"/v1/sessions/{session_id}/pause")
    assert (late.status_code, late.json()["code"]) == (409, "session_not_recording")
    assert http.post("/v1/sessions/ses_nope/pause").status_code == 404


def test_a_session_paused_before_the_room_started_begins_paused(
    linked: Deployment, device: FakeDevice
) -> None:
    session_id = start(linked, device.device_id)["session_id"]  # the room is offline
    paused = linked.gateway.http.post(f"/v1/sessions/{session_id}/pause")
    assert paused.json()["state"] == "starting", "it stays starting, to begin paused"
    device.connect()
    device.state(recorder="idle")
    order = answered(device, "start", session_id, paused=True)
    assert len(starts(device)) == 1, "the first start, overtaken, is never sent"
    device.state(recorder="recording", session_id=session_id, paused=True,
                 last_command_id=order["command_id"])  # fmt: skip
    linked.gateway.wait_for_state(session_id, "paused")
    linked.gateway.http.post(f"/v1/sessions/{session_id}/stop")
    answered(device, "stop", session_id)


def test_the_room_pausing_by_itself_and_its_do_not_record_switch(
    linked: Deployment, device: FakeDevice
) -> None:
    device.connect()
    room = device.device_id
    session_id = start(linked, room)["session_id"]
    linked.gateway.wait_for_state(session_id, "recording")
    event = {"type": "session_paused", "session_id": session_id, "source": "button",
             "offset_s": 3.5}  # fmt: skip
    device.publish("events", json.dumps(event))
    paused = linked.gateway.wait_for_state(session_id, "paused")
    assert ("paused", "button") in [(e["step"], e["detail"]) for e in paused["timeline"]]
    device.publish("events", json.dumps({"type": "session_resumed", "session_id": session_id,
                                         "source": "button"}))  # fmt: skip
    linked.gateway.wait_for_state(session_id, "recording")
    # A long press on the button stops it in the room: the session follows, nothing sent.
    closed = {"type": "session_closed", "session_id": session_id, "reason": "stopped",
              "chunks": 0, "speech_s": 0.0}  # fmt: skip
    device.publish("events", json.dumps(closed))
    stopping = linked.gateway.wait_for_state(session_id, "stopping")
    assert ("stopped", "in the room (stopped)") in [
        (e["step"], e["detail"]) for e in stopping["timeline"]
    ]
    device.state(recorder="closed", session_id=session_id, do_not_record=True)
    eventually(
        lambda: linked.gateway.http.get(f"/v1/rooms/{room}").json()["do_not_record"],
        timeout=10,
        what="the room's do_not_record",
    )
    body = {"room": room, "clinician_external_id": linked.people[0],
            "client_external_id": linked.people[1]}  # fmt: skip
    refused = linked.gateway.http.post("/v1/sessions", json=body)
    assert (refused.status_code, refused.json()["code"]) == (409, "room_do_not_record")
