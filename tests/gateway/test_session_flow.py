"""A session end to end against the simulator over real HTTP, and under faults: token
expiry, a 500 storm, 429 with Retry-After and a SIGKILLed gateway, after which nothing
has been created twice in Blueprint."""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.callback_receiver import CallbackReceiver, Received
from tests.gateway.conftest import (
    PHI_STRINGS,
    SECRETS,
    GatewayFactory,
    GatewayProcess,
    SimulatorProcess,
    steps,
)
from tests.support.postgres import ON_BOTH_ENGINES

pytestmark = [ON_BOTH_ENGINES, pytest.mark.timeout(180)]

CALLBACK_KEY = secrets.token_bytes(24)
CALLBACK_SECRET = "whsec_" + base64.b64encode(CALLBACK_KEY).decode()


@pytest.fixture(scope="module")
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def gateway(gateway_factory: GatewayFactory, receiver: CallbackReceiver) -> GatewayProcess:
    """This module's gateway calls the partner back (a receiver in this process)."""
    gateway = gateway_factory(
        ROOM_GATEWAY_PARTNER__CALLBACK_URL=receiver.url,
        ROOM_GATEWAY_PARTNER__CALLBACK_SECRET=CALLBACK_SECRET,
    )
    gateway.cli("room", "add", *(f"room-{n}" for n in range(1, 10)))
    return gateway


def openssl_signature(message_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks v1 signature computed by openssl, not by our code."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            f"hexkey:{CALLBACK_KEY.hex()}",
            "-binary",
        ],
        input=signed,
        capture_output=True,
        check=True,
    ).stdout
    return "v1," + base64.b64encode(digest).decode()


def callbacks_for(receiver: CallbackReceiver, session_id: str, event: str) -> list[Received]:
    return receiver.wait_for(
        lambda r: (
            200 <= r.answered < 300
            and json.loads(r.body) == {"event": event, "session_id": session_id}
        )
    )


def test_whole_session(
    sim: SimulatorProcess, linked: GatewayProcess, flac_audio: Path, receiver: CallbackReceiver
) -> None:
    gateway = linked
    receiver.fail_first = 1  # the partner is briefly down: the callback must be retried
    answer = gateway.http.put(
        "/v1/clinicians/clin-1",
        json=dict(first_name="Adelaide", last_name="Quintrell", email="aq@clinic.example"),
    )
    assert answer.status_code == 200, answer.text
    clinician = answer.json()
    assert clinician["state"] == "ensured" and clinician["blueprint_id"]
    answer = gateway.http.put(
        "/v1/clients/client-1",
        json=dict(first_name="Bartholomew", last_name="Zanzibarre", clinician_external_id="clin-1"),
    )
    assert answer.status_code == 200, answer.text
    client = answer.json()

    answer = gateway.http.post(
        "/v1/sessions",
        json={
            "room": "room-1",
            "clinician_external_id": "clin-1",
            "client_external_id": "client-1",
            "note_type": "dap",
        },
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["state"] == "recording"
    session_id = answer.json()["session_id"]

    stopped = gateway.http.post(f"/v1/sessions/{session_id}/stop")
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopping"
    attached = gateway.attach_audio(session_id, flac_audio)
    assert attached.status_code == 202, attached.text
    assert attached.json()["state"] == "audio_ready"

    done = gateway.wait_for_session(
        session_id, lambda s: s["state"] == "notes_ready" and "transcript_fetched" in steps(s)
    )
    order = steps(done)
    for earlier, later in [
        ("created", "blueprint_session_created"),
        ("blueprint_session_created", "upload_started"),
        ("stopped", "audio_ready"),
        ("audio_ready", "upload_started"),
        ("upload_started", "audio_uploaded"),
        ("audio_uploaded", "notes_ready"),
        ("progress_note_generated", "progress_note_fetched"),
    ]:
        assert order.index(earlier) < order.index(later), order
    stamps = [entry["at"] for entry in done["timeline"]]
    assert stamps == sorted(stamps)
    assert done["blueprint"] == {
        "session_id": done["blueprint"]["session_id"],
        "clinician_id": clinician["blueprint_id"],
        "client_id": client["blueprint_id"],
    }

    state = sim.state()
    simulated = state["session_details"][done["blueprint"]["session_id"]]
    assert simulated["session_external_id"] == session_id
    assert simulated["status"] == "completed"
    artifacts = gateway.http.get(f"/v1/sessions/{session_id}/artifacts").json()
    assert artifacts["state"] == "notes_ready"
    note = artifacts["progress_note"]["body"]
    assert note["id"] == simulated["progress_note_id"]
    assert [section["key"] for section in note["note"]] == ["data", "assessment", "plan"]
    assert artifacts["transcript"]["body"]["transcriptItems"]
    assert (state["clinicians"], state["clients"], state["sessions"]) == (1, 1, 1)
    assert state["audio_uploads"] == 1

    # The partner was called back, signed as Standard Webhooks says, after one retry.
    delivered = callbacks_for(receiver, session_id, "notes_ready")
    assert len(delivered) == 1
    attempts = [
        r
        for r in receiver.received
        if r.headers["webhook-id"] == delivered[0].headers["webhook-id"]
    ]
    assert [r.answered for r in attempts] == [500, 204]
    headers = delivered[0].headers
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["webhook-signature"] == openssl_signature(
        headers["webhook-id"], headers["webhook-timestamp"], delivered[0].body
    )
    gateway.wait_for_session(session_id, lambda s: "partner_notified" in steps(s))

    # Names went in; none comes out, in answers or in the log, and no secret either.
    session_text = json.dumps(gateway.session(session_id))
    log = gateway.log()
    assert "notes_ready" in log or "done" in log  # the log is really being captured
    for text in (*PHI_STRINGS, *SECRETS):
        assert text not in session_text
        assert text not in log, f"{text!r} found in the gateway log"


def test_faults_token_expiry_500_storm_429_and_sigkill(
    sim: SimulatorProcess, linked: GatewayProcess, flac_audio: Path
) -> None:
    gateway = linked
    answer = gateway.http.put(
        "/v1/clinicians/clin-2", json=dict(first_name="Adelaide", last_name="Quintrell")
    )
    assert answer.status_code == 200, answer.text

    # Every token Blueprint issued becomes invalid: the next call gets 401, re-authenticates.
    sim.faults(expire_tokens=True)
    answer = gateway.http.put(
        "/v1/clients/client-2",
        json=dict(first_name="Bartholomew", last_name="Zanzibarre", clinician_external_id="clin-2"),
    )
    assert answer.status_code == 200, answer.text
    assert sim.state()["tokens_issued"] >= 2

    # A 500 storm longer than the client's own retries: the job is rescheduled, then works.
    sim.faults(fail_next=8, fail_status=500)
    session_id = gateway.start_session("room-2", "clin-2", "client-2")
    created = gateway.wait_for_session(session_id, lambda s: s["blueprint"]["session_id"])
    assert sim.state()["faults"]["fail_next"] == 0

    # SIGKILL between "session created" and "audio uploaded": the upload is in flight.
    sim.faults(latency_ms=1500)
    assert gateway.attach_audio(session_id, flac_audio).status_code == 202
    uploading = gateway.wait_for_session(session_id, lambda s: s["state"] == "uploading")
    assert "audio_uploaded" not in steps(uploading)
    gateway.kill()
    sim.faults(latency_ms=0, throttle_next=2, retry_after_s=1)  # 429s greet the restart
    gateway.start()

    done = gateway.wait_for_state(session_id, "notes_ready", timeout=30)
    assert done["blueprint"]["session_id"] == created["blueprint"]["session_id"]
    state = sim.state()
    assert (state["clinicians"], state["clients"], state["sessions"]) == (1, 1, 1)
    assert state["calls"]["POST /sessions"].get("201") == 1
    assert state["calls"]["POST /clinicians"] == {"201": 1}
    assert state["calls"]["POST /clients"].get("201") == 1
    statuses: dict[str, int] = {}
    for per_route in state["calls"].values():
        for status, count in per_route.items():
            statuses[status] = statuses.get(status, 0) + count
    assert statuses.get("500", 0) == 8 and statuses.get("429", 0) == 2
    assert statuses.get("401", 0) >= 1
    log = gateway.log()
    assert re.search(r"HTTP 429; attempt \d failed, retrying in 1\.0+ s", log)  # Retry-After
    assert "resuming 1 jobs interrupted" in log
    for text in (*PHI_STRINGS, *SECRETS):
        assert text not in log


def test_transcript_error_fails_the_session_with_its_reason(
    sim: SimulatorProcess, linked: GatewayProcess, flac_audio: Path, receiver: CallbackReceiver
) -> None:
    gateway = linked
    gateway.put_people("clin-3", "client-3")
    sim.faults(transcript_error_next=1)
    session_id = gateway.start_session("room-3", "clin-3", "client-3")
    assert gateway.attach_audio(session_id, flac_audio).status_code == 202
    failed = gateway.wait_for_state(session_id, "failed")
    assert failed["error"].startswith("Blueprint could not transcribe the session")
    assert "failed" in steps(failed)
    assert callbacks_for(receiver, session_id, "session_failed")
    artifacts = gateway.http.get(f"/v1/sessions/{session_id}/artifacts").json()
    assert artifacts["progress_note"] is None


def test_failed_job_is_visible_and_retried_by_command(
    sim: SimulatorProcess, gateway_factory: GatewayFactory, flac_audio: Path
) -> None:
    gateway = gateway_factory(
        ROOM_GATEWAY_JOBS__MAX_ATTEMPTS="2", ROOM_GATEWAY_BLUEPRINT__MAX_ATTEMPTS="1"
    )
    gateway.cli("room", "add", "room-1")
    sim.set_callback(gateway.webhook_url)
    gateway.put_people("clin-4", "client-4")
    sim.faults(fail_next=1000, fail_status=503)
    session_id = gateway.start_session("room-1", "clin-4", "client-4")
    failed = gateway.wait_for_state(session_id, "failed")
    assert failed["error"].startswith("create_session failed: ")
    assert "503" in failed["error"]
    [pending] = failed["pending"]
    assert (pending["kind"], pending["state"], pending["attempts"]) == (
        "create_session",
        "failed",
        2,
    )
    assert pending["last_error"] in failed["error"]

    listed = gateway.cli("jobs", "list", "--state", "failed", "--json").stdout.splitlines()
    jobs = [json.loads(line) for line in listed]
    assert [(job["kind"], job["session_id"], job["attempts"]) for job in jobs] == [
        ("create_session", session_id, 2)
    ]
    assert "503" in jobs[0]["last_error"] and "gave up after 2 attempts" in jobs[0]["last_error"]
    human = gateway.cli("jobs", "list").stdout
    assert f"{jobs[0]['id']}" in human and "failed" in human

    sim.faults(fail_next=0)
    retried = gateway.cli("jobs", "retry", str(jobs[0]["id"]))
    assert "queued again" in retried.stdout
    resumed = gateway.wait_for_session(
        session_id, lambda s: s["blueprint"]["session_id"] and not s["pending"]
    )
    assert resumed["state"] == "recording" and resumed["error"] is None
    assert gateway.attach_audio(session_id, flac_audio).status_code == 202
    gateway.wait_for_state(session_id, "notes_ready")
    again = gateway.cli("jobs", "retry", str(jobs[0]["id"]), check=False)
    assert again.returncode == 2 and "no failed job" in again.stderr
