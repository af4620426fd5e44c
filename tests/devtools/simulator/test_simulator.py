"""The simulator as Blueprint: its HTTP contract, webhooks, fault knobs and control API."""

from __future__ import annotations

import itertools
import json
import re
import time

import httpx
import pytest
from click.testing import CliRunner

from devtools.simulator.app import DEFAULT_CLINIC_ID, DEFAULT_ORGANIZATION_ID, DEFAULT_PARTNER_ID
from gateway.blueprint import signature
from gateway.blueprint.defaults import DEFAULT_API_KEY, DEFAULT_CLIENT_SECRET, DEFAULT_PORT
from gateway.blueprint.models import ProgressNotePayload, TranscriptReadyPayload
from gateway.cli import cli
from tests.support.eventually import eventually
from tests.support.processes import free_port

pytestmark = pytest.mark.anyio

PROGRESS_NOTE_FIELDS = {
    "progressNoteId",
    "sessionId",
    "sessionExternalId",
    "clientId",
    "clinicianId",
    "clinicId",
    "organizationId",
    "progressNoteUrl",
}


async def uploaded_session(
    sim, make_audio, seconds: float = 2.0, external_id: str = "sess-1", **session_options
) -> str:
    async with sim.client() as client:
        clinician = await client.ensure_clinician("clin-1", "Ada", "Byron", None)
        person = await client.ensure_client("cli-1", "Grace", "Hopper", clinician)
        session_id = await client.ensure_session(external_id, clinician, person, **session_options)
        await client.upload_audio(session_id, make_audio(seconds), "audio/flac")
    return session_id


def events(deliveries) -> list[str]:
    return [json.loads(d.body)["eventType"] for d in deliveries]


# --- authentication and the API key ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/partners/authenticate"), ("GET", "/clinicians"), ("GET", "/no/such/path")],
)
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_403_forbidden_without_the_api_key(sim, method: str, path: str, key: str | None) -> None:
    headers = {"X-API-Key": key} if key else {}
    response = httpx.request(method, sim.url + path, headers=headers)
    assert response.status_code == 403
    assert response.json() == {"message": "Forbidden"}


def test_401_without_a_valid_access_token(sim) -> None:
    for token in (None, "made-up-token"):
        headers = {"X-API-Key": DEFAULT_API_KEY} | ({"Access-Token": token} if token else {})
        response = httpx.get(f"{sim.url}/clinicians", headers=headers)
        assert response.status_code == 401
        assert "message" in response.json()


def test_authenticate_rejects_wrong_secret_and_expires_tokens(sim) -> None:
    response = httpx.post(
        f"{sim.url}/partners/authenticate",
        headers={"X-API-Key": DEFAULT_API_KEY},
        json={"clientId": "sim-client", "clientSecret": "guess"},
    )
    assert response.status_code == 401
    # Long enough to be valid on a loaded machine, short enough to see it expire.
    sim.faults(token_lifetime_s=2.0)
    headers = sim.headers()
    assert httpx.get(f"{sim.url}/clinicians", headers=headers).status_code == 200
    eventually(
        lambda: httpx.get(f"{sim.url}/clinicians", headers=headers).status_code == 401,
        timeout=10,
        what="the token to expire",
    )


# --- malformed requests get a 4xx with a reason, never a 500 -------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"externalId": "x", "firstName": ["Zelda"]},  # wrong type, lastName missing
        {"externalId": "", "firstName": "Zelda", "lastName": "Quixote"},
        "not json at all",
        None,
    ],
)
def test_malformed_bodies_are_422_without_echoing_values(sim, body) -> None:
    headers = sim.headers()
    if isinstance(body, str) or body is None:
        response = httpx.post(f"{sim.url}/clinicians", headers=headers, content=body or b"")
    else:
        response = httpx.post(f"{sim.url}/clinicians", headers=headers, json=body)
    assert response.status_code == 422
    assert response.json()["message"]
    assert "Zelda" not in response.text and "Quixote" not in response.text


def test_records_need_their_parents(sim) -> None:
    headers = sim.headers()
    body = {"externalId": "c1", "firstName": "A", "lastName": "B", "clinicianId": "nope"}
    response = httpx.post(f"{sim.url}/clients", headers=headers, json=body)
    assert response.status_code == 422 and "clinicianId" in response.json()["message"]


def test_duplicate_external_ids_are_409(sim) -> None:
    headers = sim.headers()
    body = {"externalId": "clin-1", "firstName": "A", "lastName": "B", "email": None}
    first = httpx.post(f"{sim.url}/clinicians", headers=headers, json=body)
    second = httpx.post(f"{sim.url}/clinicians", headers=headers, json=body)
    assert (first.status_code, second.status_code) == (201, 409)
    found = httpx.get(f"{sim.url}/clinicians", params={"externalId": "clin-1"}, headers=headers)
    assert [item["id"] for item in found.json()["items"]] == [first.json()["id"]]
    assert sim.state()["clinicians"] == 1


# --- audio uploads -----------------------------------------------------------------------


async def test_upload_rejects_empty_and_non_audio_bodies(sim, make_audio) -> None:
    async with sim.client() as client:
        clinician = await client.ensure_clinician("clin-1", "A", "B", None)
        person = await client.ensure_client("cli-1", "C", "D", clinician)
        session_id = await client.ensure_session("sess-1", clinician, person)
    url = f"{sim.url}/sessions/{session_id}/audio"
    headers = sim.headers()
    ogg = make_audio(1.0, "OGG", "OPUS").read_bytes()
    cases = [
        (b"", "audio/flac", 400),
        (b"RIFF....WAVEfmt " + bytes(200), "audio/flac", 422),
        (b"plain text, not audio", "audio/flac", 422),
        (ogg, "audio/flac", 422),  # an Ogg body labelled FLAC
        (ogg, "application/octet-stream", 415),
        (ogg, "", 415),
    ]
    for body, content_type, status in cases:
        response = httpx.put(url, headers=headers | {"Content-Type": content_type}, content=body)
        assert response.status_code == status, (content_type, response.text)
        assert response.json()["message"]
    assert sim.state()["session_details"][session_id]["status"] == "created"
    accepted = httpx.put(url, headers=headers | {"Content-Type": "audio/ogg"}, content=ogg)
    assert accepted.status_code == 202
    missing = httpx.put(
        f"{sim.url}/sessions/nope/audio", headers=headers | {"Content-Type": "audio/ogg"}
    )
    assert missing.status_code == 404


# --- webhooks ----------------------------------------------------------------------------


async def test_webhooks_are_signed_and_in_order_and_artifacts_fetchable(
    sim, receiver, make_audio
) -> None:
    headers = sim.headers()
    patched = httpx.patch(
        f"{sim.url}/partners/{DEFAULT_PARTNER_ID}",
        headers=headers,
        json={"callbackUrl": receiver.url},
    )
    assert patched.status_code == 200
    partner = httpx.get(f"{sim.url}/partners", headers=headers).json()
    assert partner == {"id": DEFAULT_PARTNER_ID, "callbackUrl": receiver.url}

    session_id = await uploaded_session(sim, make_audio, 12.0, note_options={"noteType": "dap"})
    transcript_hook, note_hook = receiver.wait_for(2)
    for hook in (transcript_hook, note_hook):
        assert hook.headers["content-type"] == "application/json"
        assert hook.headers["x-api-key"] == DEFAULT_API_KEY
        assert signature.verify(hook.body, hook.headers["x-blueprint-signature"], "sim-secret")
        assert set(json.loads(hook.body)) == {"eventType", "payload"}
    assert events([transcript_hook, note_hook]) == ["transcript_ready", "progress_note_generated"]

    transcript_payload = json.loads(transcript_hook.body)["payload"]
    assert set(transcript_payload) == {"sessionId", "transcriptUrl"}
    note_payload = json.loads(note_hook.body)["payload"]
    assert set(note_payload) == PROGRESS_NOTE_FIELDS
    note_event = ProgressNotePayload.model_validate(note_payload)
    assert note_event.session_id == session_id
    assert note_event.session_external_id == "sess-1"
    assert note_event.clinic_id == DEFAULT_CLINIC_ID
    assert note_event.organization_id == DEFAULT_ORGANIZATION_ID

    async with sim.client() as client:
        note = await client.get_artifact(note_event.progress_note_url)
        transcript_url = TranscriptReadyPayload.model_validate(transcript_payload).transcript_url
        transcript = await client.get_artifact(transcript_url)
    assert set(note) >= {"id", "sessionId", "note", "template", "preferences"}
    assert (note["id"], note["sessionId"]) == (note_event.progress_note_id, session_id)
    assert [section["key"] for section in note["note"]] == ["data", "assessment", "plan"]
    assert all(set(section) == {"key", "title", "content"} for section in note["note"])
    assert "12.0 s" in note["note"][0]["content"]
    assert len(transcript["transcriptItems"]) == 3  # one per 5 s of audio
    for text in (json.dumps(note), json.dumps(transcript)):
        assert "Ada" not in text and "Grace" not in text

    state = sim.state()
    assert state["session_details"][session_id]["status"] == "completed"
    assert (state["webhook_deliveries"], state["webhook_attempts"]) == (2, 2)


async def test_failed_deliveries_are_retried_on_the_interval(sim, receiver, make_audio) -> None:
    receiver.script = [503, 500, 429]
    sim.set_callback(receiver.url)
    await uploaded_session(sim, make_audio)
    hooks = receiver.wait_for(5)
    assert events(hooks) == ["transcript_ready"] * 4 + ["progress_note_generated"]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(hooks[:4])]
    assert all(gap >= 0.18 for gap in gaps)  # --webhook-retry-interval 0.2
    assert len({hook.body for hook in hooks[:4]}) == 1  # the same bytes, same signature
    state = sim.wait_for(lambda s: s["webhook_deliveries"] == 2)
    assert [(w["attempts"], w["outcome"]) for w in state["webhooks"]] == [
        (4, "delivered"),
        (1, "delivered"),
    ]


async def test_other_failures_are_dropped_not_retried(sim, receiver, make_audio) -> None:
    receiver.script = [400]
    sim.set_callback(receiver.url)
    await uploaded_session(sim, make_audio)
    hooks = receiver.wait_for(2)
    # Not "sleep, then see nothing more": the simulator's own record says it gave up at
    # once (a final outcome after one attempt), and only then are the deliveries counted.
    state = sim.wait_for(lambda s: all(w["outcome"] != "pending" for w in s["webhooks"]))
    assert [(w["outcome"], w["attempts"]) for w in state["webhooks"]] == [
        ("dropped", 1),
        ("delivered", 1),
    ]
    assert (
        events(receiver.deliveries)
        == events(hooks)
        == [
            "transcript_ready",
            "progress_note_generated",
        ]
    )
    outcomes = [(w["outcome"], w["last_status"]) for w in sim.state()["webhooks"]]
    assert outcomes == [("dropped", 400), ("delivered", 200)]


async def test_delivery_waits_for_a_receiver_that_is_down(sim, receiver, make_audio) -> None:
    sim.set_callback(f"http://127.0.0.1:{free_port()}/nobody-listens")
    await uploaded_session(sim, make_audio)
    sim.wait_for(lambda s: s["webhooks"] and s["webhooks"][0]["attempts"] >= 2)
    sim.set_callback(receiver.url)
    assert events(receiver.wait_for(2)) == ["transcript_ready", "progress_note_generated"]
    assert sim.state()["webhooks"][0]["last_status"] == 200


async def test_duplicate_webhooks(sim, receiver, make_audio) -> None:
    sim.set_callback(receiver.url)
    sim.faults(duplicate_webhooks=True)
    await uploaded_session(sim, make_audio)
    hooks = receiver.wait_for(4)
    assert events(hooks) == ["transcript_ready"] * 2 + ["progress_note_generated"] * 2
    assert hooks[0].body == hooks[1].body and hooks[2].body == hooks[3].body


async def test_out_of_order_webhooks(sim, receiver, make_audio) -> None:
    sim.set_callback(receiver.url)
    sim.faults(out_of_order_webhooks=True)
    await uploaded_session(sim, make_audio)
    assert events(receiver.wait_for(2)) == ["progress_note_generated", "transcript_ready"]


async def test_transcript_error(sim, receiver, make_audio) -> None:
    sim.set_callback(receiver.url)
    sim.faults(transcript_error_next=1)
    session_id = await uploaded_session(sim, make_audio)
    (hook,) = receiver.wait_for(1)
    # The sentinel: a later session's two hooks. A note for the failed session would have
    # come right after its error hook, before the later session was even processed.
    await uploaded_session(sim, make_audio, external_id="sess-sentinel")
    assert events(receiver.wait_for(3)) == [
        "session_transcript_error",
        "transcript_ready",
        "progress_note_generated",
    ]
    body = json.loads(hook.body)
    assert body["eventType"] == "session_transcript_error"
    assert set(body["payload"]) == {"sessionId", "error"}
    assert body["payload"]["sessionId"] == session_id
    state = sim.state()
    assert state["session_details"][session_id]["status"] == "failed"
    assert state["faults"]["transcript_error_next"] == 0


# --- knobs and control API ---------------------------------------------------------------


def test_latency_knob(sim) -> None:
    sim.faults(latency_ms=300)
    started = time.monotonic()
    sim.token()
    assert time.monotonic() - started >= 0.3


def test_fault_counters_count_down(sim) -> None:
    sim.faults(fail_next=1, fail_status=502, throttle_next=1, retry_after_s=7)
    url = f"{sim.url}/partners/authenticate"
    headers = {"X-API-Key": DEFAULT_API_KEY}
    first = httpx.post(url, headers=headers, json={})
    second = httpx.post(url, headers=headers, json={})
    third = httpx.post(url, headers=headers, json={})
    assert (first.status_code, second.status_code) == (502, 429)
    assert second.headers["Retry-After"] == "7"
    assert third.status_code == 422  # the real handler again: {} lacks the credentials
    assert sim.calls("POST /partners/authenticate") == {"422": 1, "429": 1, "502": 1}


def test_control_api_rejects_unknown_knobs(sim) -> None:
    response = httpx.post(f"{sim.url}/_sim/faults", json={"fail_nxt": 3})
    assert response.status_code == 422
    response = httpx.put(f"{sim.url}/_sim/callback", json={"url": "not a url"})
    assert response.status_code == 422


def test_state_counts_and_reset(sim) -> None:
    headers = sim.headers()
    body = {"externalId": "clin-1", "firstName": "A", "lastName": "B"}
    httpx.post(f"{sim.url}/clinicians", headers=headers, json=body)
    state = sim.state()
    assert (state["clinicians"], state["tokens_issued"]) == (1, 1)
    assert state["calls"]["POST /clinicians"] == {"201": 1}
    sim.reset()
    state = sim.state()
    assert (state["clinicians"], state["tokens_issued"], state["calls"]) == (0, 0, {})
    assert httpx.get(f"{sim.url}/clinicians", headers=headers).status_code == 401


def test_cli_reports_bad_flags_in_one_line() -> None:
    result = CliRunner().invoke(cli, ["simulator", "--fail-next", "-1"])
    assert result.exit_code == 2
    assert "fail_next" in result.output and "Traceback" not in result.output
    help_text = CliRunner().invoke(cli, ["simulator", "--help"]).output
    assert f"default: {DEFAULT_PORT}" in help_text


async def test_simulator_log_has_no_secrets(sim, receiver, make_audio) -> None:
    """The simulator's own output (uvicorn access log, webhook lines) after a full run."""
    sim.set_callback(receiver.url)
    await uploaded_session(sim, make_audio)
    receiver.wait_for(2)
    log = sim.log()
    assert "PUT /sessions/" in log and "webhook progress_note_generated" in log
    for forbidden in (DEFAULT_API_KEY, DEFAULT_CLIENT_SECRET, "Ada", "Grace"):
        assert forbidden not in log
    assert not re.search(r"[A-Za-z0-9_-]{40,}", log)  # tokens are 43 such characters
