"""One bad chunk never sinks a session (issue 10), on a real `room-gateway serve` with its
broker: audio the gateway cannot use is refused at ingest with a stable code, a chunk that
becomes unusable later is left out of assembly (and named in the timeline) while the rest
is uploaded, manifests are validated against the chunks held, and a seq has one spelling.
The device is played by this test: chunks sealed as the agent seals them.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json

import httpx
import numpy as np
import pytest
import soundfile

from protocol.envelope import ChunkHeader, seal_chunk
from protocol.ingest import SEALED_CHUNK_CONTENT_TYPE, close_path
from runtime.codec import encode
from tests.gateway.conftest import SimulatorProcess, steps
from tests.gateway.deployment import RATE, Deployment, SealedChunk, tone
from tests.gateway.problems import assert_problem

pytestmark = pytest.mark.timeout(120)
ROOM = "room-1"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, blueprint_sim: SimulatorProcess):
    root = tmp_path_factory.mktemp("hostile")
    # Chunks opened in a worker process (the default on hosts of more than 2 cores): each
    # refusal's code comes back from it.
    deployment = Deployment(
        root, blueprint_sim.url, (ROOM, "room-2"), ROOM_GATEWAY_INGEST__OPEN_WORKERS="1"
    ).start()
    yield deployment
    deployment.stop()


@pytest.fixture
def linked(
    deployed: Deployment, sim: SimulatorProcess, request: pytest.FixtureRequest
) -> Deployment:
    sim.set_callback(deployed.gateway.webhook_url)
    name = request.node.originalname
    deployed.people = (f"clin-{name}", f"client-{name}")
    deployed.gateway.put_people(*deployed.people)
    return deployed


def sealed(
    deployed: Deployment, session_id: str, seq: int, audio: bytes, duration_s: float
) -> SealedChunk:
    """A properly sealed chunk around any audio bytes, with the header's duration given."""
    header = ChunkHeader(
        device_id=ROOM,
        session_id=session_id,
        seq=seq,
        codec="flac",
        start_s=float(seq),
        duration_s=duration_s,
        sha256=hashlib.sha256(audio).hexdigest(),
    )
    blob = seal_chunk(header, audio, deployed.key.public_key())
    return SealedChunk(seq, blob, np.zeros(int(duration_s * RATE), np.int16), float(seq))


def flac_at(rate: int, seconds: float) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    out = io.BytesIO()
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    soundfile.write(out, wave, rate, format="FLAC")
    return out.getvalue()


def started(deployed: Deployment) -> str:
    return deployed.gateway.start_session(ROOM, *deployed.people)


def stop(deployed: Deployment, session_id: str) -> None:
    assert deployed.gateway.http.post(f"/v1/sessions/{session_id}/stop").status_code == 200


def at_blueprint(sim: SimulatorProcess, session_id: str) -> dict:
    return next(
        s for s in sim.state()["session_details"].values()
        if s["session_external_id"] == session_id
    )  # fmt: skip


def test_audio_the_gateway_cannot_use_is_refused_at_ingest(
    linked: Deployment, sim: SimulatorProcess
) -> None:
    session_id = started(linked)
    good = [linked.seal(ROOM, session_id, seq, tone(1.0, seed=seq), seq) for seq in (0, 4)]
    assert linked.put_chunk(ROOM, session_id, good[0]).status_code == 200
    refusals = {
        "undecodable_audio": sealed(linked, session_id, 1, b"not audio at all" * 64, 1.0),
        "wrong_sample_rate": sealed(linked, session_id, 2, flac_at(8_000, 1.0), 1.0),
        "duration_mismatch": sealed(linked, session_id, 3, encode(tone(1.0), "flac"), 5.0),
    }
    for code, chunk in refusals.items():
        answer = linked.put_chunk(ROOM, session_id, chunk)
        problem = assert_problem(answer, 422, code)
        assert f"chunk {chunk.seq}" in problem["detail"], problem
    assert linked.put_chunk(ROOM, session_id, good[1]).status_code == 200

    # The device leaves the refused chunks out of its manifest (it sets them aside); the
    # session goes through with the rest.
    stop(linked, session_id)
    assert linked.close(ROOM, session_id, good).status_code == 200
    done = linked.gateway.wait_for_state(session_id, "notes_ready")
    assert done["audio"]["manifest_chunks"] == 2
    assert at_blueprint(sim, session_id)["audio_duration_s"] == pytest.approx(2.0, abs=1e-3)


def test_a_chunk_unusable_at_assembly_is_left_out_and_the_rest_uploaded(
    linked: Deployment, sim: SimulatorProcess
) -> None:
    session_id = started(linked)
    chunks = [linked.seal(ROOM, session_id, seq, tone(1.0, seed=seq), seq) for seq in range(3)]
    for chunk in chunks:
        assert linked.put_chunk(ROOM, session_id, chunk).status_code == 200
    # The store loses chunk 1's bytes after its 200 (and another's become garbage).
    gateway = linked.gateway
    where = "WHERE session_id = ? AND seq = ?"
    gateway.execute(f"UPDATE chunks SET sealed = NULL {where}", session_id, 1)
    gateway.execute(f"UPDATE chunks SET sealed = ? {where}", chunks[2].blob[:40], session_id, 2)
    stop(linked, session_id)
    assert linked.close(ROOM, session_id, chunks).status_code == 200

    done = linked.gateway.wait_for_state(session_id, "notes_ready")
    left_out = [e["detail"] for e in done["timeline"] if e["step"] == "chunk_left_out"]
    assert len(left_out) == 2 and left_out[0].startswith("chunk 1: is not in the store"), left_out
    assert left_out[1].startswith("chunk 2: cannot be opened"), left_out
    assert at_blueprint(sim, session_id)["audio_duration_s"] == pytest.approx(1.0, abs=1e-3)
    assert "Traceback" not in linked.gateway.log()


def test_a_session_with_no_usable_chunk_fails_with_the_reason(linked: Deployment) -> None:
    session_id = started(linked)
    chunk = linked.seal(ROOM, session_id, 0, tone(1.0))
    assert linked.put_chunk(ROOM, session_id, chunk).status_code == 200
    linked.gateway.execute("UPDATE chunks SET sealed = NULL WHERE session_id = ?", session_id)
    stop(linked, session_id)
    assert linked.close(ROOM, session_id, [chunk]).status_code == 200
    failed = linked.gateway.wait_for_state(session_id, "failed")
    assert failed["error"] == "none of the session's 1 chunks could be used"
    assert "chunk_left_out" in steps(failed)


def post_manifest(deployed: Deployment, session_id: str, chunks: list[dict]) -> httpx.Response:
    body = {"device_id": ROOM, "session_id": session_id, "reason": "stopped", "chunks": chunks}
    return httpx.post(
        deployed.gateway.url + close_path(ROOM, session_id),
        content=json.dumps(body),  # allows Infinity and NaN, as a hostile client would
        headers={
            "Authorization": f"Bearer {deployed.devices[ROOM].token}",
            "Content-Type": "application/json",
        },
        timeout=30,
    )


def test_manifests_are_validated_against_the_chunks_held(
    linked: Deployment, sim: SimulatorProcess
) -> None:
    session_id = started(linked)
    chunks = [linked.seal(ROOM, session_id, seq, tone(1.0, seed=seq), seq) for seq in range(2)]
    for chunk in chunks:
        assert linked.put_chunk(ROOM, session_id, chunk).status_code == 200
    stop(linked, session_id)
    one, two = (chunk.listed().model_dump() for chunk in chunks)
    bad = {
        "a seq listed three times": [one, one, one, two],
        "seqs out of order": [two, one],
        "a duration of 1e308": [one, {**two, "duration_s": 1e308}],
        "an infinite offset": [one, {**two, "start_s": float("inf")}],
        "a NaN duration": [one, {**two, "duration_s": float("nan")}],
        "a negative seq": [{**one, "seq": -1}, two],
    }
    for case, listed in bad.items():
        answer = post_manifest(linked, session_id, listed)
        assert answer.status_code == 422, (case, answer.status_code, answer.text)
        assert answer.json()["code"] == "invalid_request", case
    differs = {
        "a duration unlike the header's": [one, {**two, "duration_s": 4.0}],
        "an offset unlike the header's": [one, {**two, "start_s": 9.0}],
        "a size unlike the chunk's": [one, {**two, "bytes": two["bytes"] + 1}],
    }
    for case, listed in differs.items():
        answer = post_manifest(linked, session_id, listed)
        assert answer.json().get("code") == "manifest_mismatch", (case, answer.text)
    # Nothing was assembled from any of them: the honest manifest still works, once.
    assert post_manifest(linked, session_id, [one, two]).status_code == 200
    linked.gateway.wait_for_state(session_id, "notes_ready")
    assert at_blueprint(sim, session_id)["audio_duration_s"] == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize(
    "seq", ["+0", "%200", "0_0", "00", "%D9%A0", "-0", "0x0", "1e3", "%2B0", "0%20", "99999999"]
)
def test_only_the_canonical_decimal_seq_is_a_chunk_path(linked: Deployment, seq: str) -> None:
    """Sent raw (no client-side normalisation): every other spelling of a seq is a 422."""
    session_id = started(linked)
    chunk = linked.seal(ROOM, session_id, 0, tone(0.5))
    connection = http.client.HTTPConnection("127.0.0.1", linked.gateway.port, timeout=30)
    connection.request(
        "PUT",
        f"/v1/devices/{ROOM}/sessions/{session_id}/chunks/{seq}",
        body=chunk.blob,
        headers={
            "Authorization": f"Bearer {linked.devices[ROOM].token}",
            "Content-Type": SEALED_CHUNK_CONTENT_TYPE,
        },
    )
    answer = connection.getresponse()
    body = json.loads(answer.read())
    connection.close()
    assert answer.status == 422, (seq, answer.status, body)
    assert body["code"] == "invalid_request"
    stored = linked.gateway.query("SELECT COUNT(*) FROM chunks WHERE session_id = ?", session_id)
    assert stored[0][0] == 0
    assert linked.gateway.http.post(f"/v1/sessions/{session_id}/cancel").status_code == 200


@pytest.mark.slow
def test_a_device_keeps_only_so_many_unclaimed_sessions_here(linked: Deployment) -> None:
    """Sessions no partner started (``room-agent record``) are kept, never uploaded: one
    device could fill the gateway with them. Past ``ingest.max_unclaimed_sessions`` (20) a
    new one is refused, 429 ``unclaimed_quota`` naming the way out (the device keeps the
    audio and retries); what is already here, and partner sessions, still go through; the
    operator's ``device unclaimed ROOM --delete ID`` frees a place."""
    room = "room-2"
    chunks = {
        f"quota-{n}": linked.seal(room, f"quota-{n}", 0, tone(0.2, seed=n)) for n in range(21)
    }
    for session_id, chunk in list(chunks.items())[:20]:
        assert linked.put_chunk(room, session_id, chunk).status_code == 200, session_id
    over = linked.put_chunk(room, "quota-20", chunks["quota-20"])
    problem = assert_problem(over, 429, "unclaimed_quota")
    assert "20 unclaimed sessions" in problem["detail"], problem
    assert f"room-gateway device unclaimed {room} --delete" in problem["detail"], problem
    assert_problem(linked.close(room, "quota-20", [chunks["quota-20"]]), 429, "unclaimed_quota")
    # Nothing of the refused session was kept.
    assert (
        linked.gateway.query("SELECT session_id FROM ingest_sessions WHERE session_id = 'quota-20'")
        == []
    )
    # The sessions already here go on: a repeat, a next chunk, their manifests.
    assert linked.put_chunk(room, "quota-0", chunks["quota-0"]).json()["duplicate"] is True
    second = linked.seal(room, "quota-1", 1, tone(0.2), 0.2)
    assert linked.put_chunk(room, "quota-1", second).status_code == 200
    assert linked.close(room, "quota-1", [chunks["quota-1"], second]).status_code == 200
    # A partner's session in the room is never counted.
    claimed = linked.gateway.start_session(room, *linked.people)
    assert (
        linked.put_chunk(room, claimed, linked.seal(room, claimed, 0, tone(0.2))).status_code == 200
    )
    # Another room has its own places.
    other = linked.seal(ROOM, "quota-other", 0, tone(0.2))
    assert linked.put_chunk(ROOM, "quota-other", other).status_code == 200

    listed = linked.gateway.cli("device", "unclaimed", room).stdout
    assert len(listed.splitlines()) == 20, listed
    freed = linked.gateway.cli("device", "unclaimed", room, "--delete", "quota-0")
    assert "quota-0: deleted" in freed.stdout, freed
    assert "quota-0" not in linked.gateway.cli("device", "unclaimed", room).stdout
    assert linked.put_chunk(room, "quota-20", chunks["quota-20"]).status_code == 200
    # A claimed session, or another room's, is not the operator's to delete this way.
    refused = linked.gateway.cli("device", "unclaimed", room, "--delete", claimed, check=False)
    assert refused.returncode == 2 and "not an unclaimed session of room-2" in refused.stderr
    refused = linked.gateway.cli(
        "device", "unclaimed", room, "--delete", "quota-other", check=False
    )
    assert refused.returncode == 2, refused
    assert "unclaimed_quota" in linked.gateway.log()
